"""Case 5: a job that kills its worker every time is tried GRPO_MAX_ATTEMPTS times, then fails with its reason;
other jobs keep running."""

import os
import textwrap

import pytest

from tests.chaos.harness import Client, figure, job_row, service

pytestmark = pytest.mark.chaos


def install_killer_reward(folder):
    """An operator reward, installed the way operators install rewards (an entry point in the group
    grpo_service.rewards), that SIGKILLs the worker: what the kernel's OOM killer does to a worker. Rewards score in
    a child process of the worker (grpo_core/reward_process.py), so the worker is the reward's parent."""
    (folder / "oom_reward.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            from grpo_core.rewards import RewardFunction, RewardParams

            def _die(completion, row, params):
                os.kill(os.getppid(), signal.SIGKILL)

            reward = RewardFunction("simulated_oom", "kills the worker process", RewardParams, _die)
            """
        )
    )
    dist_info = folder / "oom_reward-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: oom-reward\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[grpo_service.rewards]\nsimulated_oom = oom_reward:reward\n")


def test_poison_job_fails_after_max_attempts_and_others_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    install_killer_reward(plugins)
    pythonpath = os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)
    with service(tmp_path, GRPO_MAX_ATTEMPTS="3", PYTHONPATH=pythonpath) as svc:
        svc.start_api()
        svc.start_worker()
        client = Client(svc)
        dataset = client.upload_arithmetic()
        poison = client.submit(dataset, rewards=[{"name": "simulated_oom"}], max_steps=3)
        healthy = client.submit(dataset, max_steps=3)

        poisoned = client.wait(poison, timeout=240)
        done = client.wait(healthy, timeout=240)
        row = job_row(svc, poison)
        figure(
            "5 poison job",
            attempts=row["attempt"],
            status=poisoned["status"],
            reason=repr(poisoned["error"]),
            other_job=done["status"],
        )
        assert poisoned["status"] == "failed" and row["attempt"] == 3
        assert "gave up after 3 attempts" in poisoned["error"]
        assert done["status"] == "succeeded"
