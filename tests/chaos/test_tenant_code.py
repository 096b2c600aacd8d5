"""Case: hostile tenant reward code, each case uploaded over REST and run in a real job (tests/chaos/tenant_code.py).

Tenant B owns a dataset whose rows and name carry a canary string, and the workers' environment carries another;
tenant A uploads each hostile source and runs a one-step job with it while tenant B trains the same job it ran
alone before. For every case the suite prints one CHAOS line: bytes of protected data the code reached (what it
printed as REACHED, and whether a canary appears anywhere the API serves about the job), connections made (its
own report plus a listening socket's accept count), how the job ended, and whether the API and the workers kept
answering. It asserts: nothing reached, nothing connected, the job ended as the issue's failure rule says
(succeeded with the sample scored, or failed naming the reward and the error), tenant B's adapter byte-identical
to its solo run, the API answered every health probe, and no worker process was replaced.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid

import pytest

from tests.chaos.harness import Client, adapter_weights, figure, service
from tests.chaos.probes import HealthProbe, everything_served, seconds_running
from tests.chaos.tenant_code import SOURCES

pytestmark = pytest.mark.chaos

CALL_TIMEOUT = 3
START_TIMEOUT = 45  # the slow-import case sleeps 30 s while loading

# How each case ends: ("succeeded", None), or ("failed", a word the error names besides the reward id).
EXPECTED = {
    "connect": ("succeeded", None),
    "read_sqlite": ("succeeded", None),
    "read_data_folder": ("succeeded", None),
    "read_other_dataset": ("succeeded", None),
    "read_worker_environ": ("succeeded", None),
    "read_shadow": ("succeeded", None),
    "write_outside_tmp": ("succeeded", None),
    "fork_bomb": ("failed", "BlockingIOError"),
    "allocate_10gb": ("failed", "MemoryError"),
    "infinite_loop": ("failed", "timed out"),
    "print_100mb": ("succeeded", None),
    "kill_parent": ("succeeded", None),
    "subprocess": ("succeeded", None),
    "ctypes_syscall": ("succeeded", None),
    "returns_nan": ("failed", "not a finite number"),
    "returns_string": ("failed", "not a number"),
    "returns_none": ("failed", "not a number"),
    "slow_import": ("succeeded", None),
}


class Sentinel(threading.Thread):
    """A listening socket on the host's loopback that counts the connections it accepts."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.sock.accept()
                self.accepted += 1
                connection.close()
            except OSError:
                pass


def reached_figures(served: str) -> tuple[int, int]:
    """(bytes, connections) the code reported reaching: its printed REACHED lines."""
    text = served.replace("\\n", "\n")
    byte_count = sum(int(n) for n in re.findall(r"REACHED \S+ (\d+)", text))
    connections = len(re.findall(r"REACHED (?:connection|raw connect)", text))
    return byte_count, connections


def test_hostile_tenant_code_reaches_nothing_and_ends_as_the_failure_rule_says(tmp_path):
    canary_env, canary_data = f"env-canary-{uuid.uuid4().hex}", f"data-canary-{uuid.uuid4().hex}"
    sentinel = Sentinel()
    sentinel.start()
    with service(
        tmp_path,
        GRPO_REWARD_TIMEOUT_SECONDS=str(CALL_TIMEOUT),
        GRPO_REWARD_START_TIMEOUT_SECONDS=str(START_TIMEOUT),
        CHAOS_CANARY=canary_env,
    ) as svc:
        svc.start_api()
        supervisors = [svc.start_worker(), svc.start_worker()]
        worker_pids = [svc.worker_pid(s) for s in supervisors]
        tenant_a, tenant_b = Client(svc, tenant="tenant-a"), Client(svc, tenant="tenant-b")
        dataset_a = tenant_a.upload_arithmetic()
        rows_b = [{"prompt": f"What is {i} + 1?", "answer": i + 1, "secret": canary_data} for i in range(8)]
        content_b = "".join(json.dumps(r) + "\n" for r in rows_b).encode()
        dataset_b = (
            tenant_b.http.post("/v1/datasets", files={"file": (f"{canary_data}.jsonl", content_b)})
            .raise_for_status()
            .json()["id"]
        )
        solo_b = tenant_b.submit(dataset_b, max_steps=2)
        assert tenant_b.wait(solo_b)["status"] == "succeeded"
        solo_weights = adapter_weights(tenant_b, solo_b)

        data_dir = svc.env["GRPO_DATA_DIR"]
        params = {
            "connect": {"ports": [sentinel.port, svc.port, 6379, 5432]},
            "read_sqlite": {"database": f"{data_dir}/grpo.db"},
            "read_data_folder": {"data_dir": data_dir},
            "read_other_dataset": {"dataset_file": f"{data_dir}/artifacts/datasets/{dataset_b}.jsonl"},
            "read_worker_environ": {"worker_pid": worker_pids[0]},
            "write_outside_tmp": {"data_dir": data_dir},
        }
        probe = HealthProbe(svc.base_url)
        probe.start()
        reward_ids, upload_seconds, jobs = {}, {}, {}
        for case, source in SOURCES.items():
            started = time.monotonic()
            uploaded = tenant_a.http.post(
                "/v1/rewards", files={"file": (f"{case}.py", source.encode())}, timeout=START_TIMEOUT + 30
            )
            upload_seconds[case] = time.monotonic() - started
            assert uploaded.status_code == 201, uploaded.text
            reward_ids[case] = uploaded.json()["id"]
            jobs[case] = tenant_a.submit(
                dataset_a,
                rewards=[{"name": reward_ids[case], "params": params.get(case, {})}],
                max_steps=1,
                prompts_per_step=2,
            )
            if case == "fork_bomb":  # tenant B trains again while the hostile jobs run
                shared_b = tenant_b.submit(dataset_b, max_steps=2)

        outcomes = {case: tenant_a.wait(job_id, timeout=600) for case, job_id in jobs.items()}
        done_b = tenant_b.wait(shared_b, timeout=600)
        probe.stopped.set()
        probe.join()
        sentinel.stopped.set()
        sentinel.join()

        assert done_b["status"] == "succeeded", done_b["error"]
        b_unchanged = adapter_weights(tenant_b, shared_b) == solo_weights
        workers_kept = [svc.worker_pid(s) for s in supervisors] == worker_pids
        problems = []
        for case, job in outcomes.items():
            served = everything_served(tenant_a, jobs[case])
            reached_bytes, connections = reached_figures(served)
            leaked = canary_env in served or canary_data in served
            status, word = EXPECTED[case]
            named = job["error"] is None or reward_ids[case] in job["error"]
            figure(
                f"tenant code {case}",
                protected_bytes_reached=reached_bytes,
                canary_served=leaked,
                connections=connections,
                job=job["status"],
                error=repr((job["error"] or "")[:160]),
                upload_s=f"{upload_seconds[case]:.1f}",
                job_s=f"{seconds_running(job):.1f}",
            )
            if reached_bytes or leaked or connections:
                problems.append(f"{case}: reached {reached_bytes} bytes, {connections} connections, canary {leaked}")
            if job["status"] != status or (word and word not in (job["error"] or "")) or not named:
                problems.append(f"{case}: expected {status} {word or ''}, got {job['status']}: {job['error']}")
        figure(
            "tenant code, the rest",
            sentinel_accepts=sentinel.accepted,
            health_probes=probe.probes,
            health_failures=probe.failures,
            slowest_health_s=f"{probe.slowest:.2f}",
            other_tenant=done_b["status"],
            other_tenant_adapter_unchanged=b_unchanged,
            worker_processes_kept=workers_kept,
        )
        assert not problems, "\n".join(problems)
        assert sentinel.accepted == 0
        assert probe.failures == 0 and probe.probes > 0
        assert b_unchanged, "tenant B's adapter changed while hostile code ran"
        assert workers_kept, "a worker process was replaced"
