"""Case: rewards that would hang a worker for good. With GRPO_REWARD_TIMEOUT_SECONDS=5, tenant A submits a
regex_match job whose patterns backtrack catastrophically in Python's re (it must just train: RE2), jobs whose
installed reward sleeps for ever or spins in C holding the GIL (each must fail within the bound, naming its
reward), and two more of those cancelled while their reward hangs. Tenant B's job, queued behind them all, must
succeed, and the worker process must be the same one throughout."""

import os
import time

import pytest

from tests.chaos.harness import Client, figure, service
from tests.chaos.probes import seconds_running
from tests.grpo_core.hostile_rewards import install_hostile_rewards

pytestmark = pytest.mark.chaos

REWARD_TIMEOUT = 5
CANCEL_POLL = 1
# A hostile job ends within the reward limit plus the model load and the step up to its rewards; this bound is
# only "does not hang", generous for a loaded machine.
BOUND = REWARD_TIMEOUT + 90


def wait_for(path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name}: the reward was never called"
        time.sleep(0.02)


def test_hostile_rewards_end_their_jobs_in_bounded_time_and_the_next_tenant_trains(tmp_path):
    plugins = install_hostile_rewards(tmp_path / "plugins")
    markers = tmp_path / "markers"
    markers.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)
    with service(
        tmp_path,
        PYTHONPATH=pythonpath,
        GRPO_REWARD_TIMEOUT_SECONDS=str(REWARD_TIMEOUT),
        GRPO_CANCEL_POLL_SECONDS=str(CANCEL_POLL),
    ) as svc:
        svc.start_api()
        supervisor = svc.start_worker()
        worker_pid = svc.worker_pid(supervisor)
        tenant_a, tenant_b = Client(svc, tenant="tenant-a"), Client(svc, tenant="tenant-b")
        dataset_a, dataset_b = tenant_a.upload_arithmetic(), tenant_b.upload_arithmetic()

        # A pattern RE2 cannot run in linear time is refused up front, naming the param and why.
        refused = tenant_a.http.post(
            "/v1/jobs",
            json={
                "base_model": "tiny-random-llama",
                "dataset_id": dataset_a,
                "rewards": [{"name": "regex_match", "params": {"pattern": r"(\w+)\1"}}],
            },
        )
        assert refused.status_code == 422 and "param pattern" in refused.text and "RE2" in refused.text

        catastrophic = [
            {"name": "regex_match", "params": {"pattern": "(.+)+\u0000"}},
            {"name": "regex_match", "params": {"pattern": r"^(\w+\s?)+$"}},
        ]
        regex_job = tenant_a.submit(dataset_a, rewards=catastrophic, max_new_tokens=64, max_steps=2)
        timed_out = {
            name: tenant_a.submit(dataset_a, rewards=[{"name": name}], max_steps=1) for name in ("sleepy", "spinning")
        }
        cancelled = {
            name: tenant_a.submit(
                dataset_a, rewards=[{"name": name, "params": {"marker": str(markers / name)}}], max_steps=1
            )
            for name in ("sleepy", "spinning")
        }
        other_tenant = tenant_b.submit(dataset_b, max_steps=2)

        trained = tenant_a.wait(regex_job, timeout=300)
        assert trained["status"] == "succeeded", trained["error"]
        ended = {}
        for name, job_id in timed_out.items():
            job = tenant_a.wait(job_id, timeout=300)
            assert job["status"] == "failed"
            assert f"reward '{name}' did not return within {REWARD_TIMEOUT} s" in job["error"]
            ended[name] = seconds_running(job)
            assert ended[name] < BOUND
        cancel_latency = {}
        for name, job_id in cancelled.items():
            wait_for(markers / name, timeout=300)  # its reward is hanging now
            asked = time.monotonic()
            tenant_a.http.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
            job = tenant_a.wait(job_id, timeout=BOUND)
            cancel_latency[name] = time.monotonic() - asked
            assert job["status"] == "cancelled", job["error"]
        done = tenant_b.wait(other_tenant, timeout=300)
        assert done["status"] == "succeeded", done["error"]
        assert svc.worker_pid(supervisor) == worker_pid  # the same worker process throughout

        lengths = [
            m["values"]["completion_length_mean"]
            for m in tenant_a.http.get(f"/v1/jobs/{regex_job}/metrics").json()["data"]
            if m["kind"] == "train"
        ]
        figure(
            "hostile rewards",
            reward_timeout=f"{REWARD_TIMEOUT}s",
            regex_job=f"{trained['status']} in {seconds_running(trained):.1f}s",
            regex_completion_tokens=f"{sum(lengths) / len(lengths):.0f}",
            **{f"{name}_failed_in": f"{seconds:.1f}s" for name, seconds in ended.items()},
            **{f"{name}_cancel_latency": f"{seconds:.2f}s" for name, seconds in cancel_latency.items()},
            other_tenant=f"{done['status']} in {seconds_running(done):.1f}s",
            worker_pid_unchanged=True,
        )
