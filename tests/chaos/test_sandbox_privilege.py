"""Case: tenant reward code that goes after the sandbox's privilege and resource bounds (tests/chaos/privilege_code.py),
sent as a tenant would, over REST: each source uploaded by tenant A, dry-run in the API process (POST
/v1/rewards/{id}/test) and run in a one-step job on a worker, while tenant B trains a normal 2-step job, asks for
/v1/models in a loop, and a probe asks /healthz every 0.5 s.

The cases, each with its bound:
1. uid_map: the uid outside the sandbox's user namespace, as /proc/self/uid_map reads inside, is never 0; and seen
   from the host, no bubblewrap or Python process in a sandbox's cgroup ever runs as uid 0.
2. core_pattern: /proc/sys/kernel/core_pattern, vm/drop_caches, kernel/pid_max, fs/file-max, vm/overcommit_memory,
   kernel/shmmax and fs/mqueue/msg_max can never be opened for writing (the code only opens and closes them);
   the host's core_pattern is unchanged after the suite.
3. memory past GRPO_REWARD_MEMORY_MB=1024 where RLIMIT_AS does not look: 1.5 GiB of memfd, 1.5 GiB of SysV shm
   (attached, touched, detached), and nested user and mount namespaces for a tmpfs (clone and unshare: refused).
   The dry run answers 200 with the item failed naming the death, the job fails naming the reward as the failure
   rules say, and the host's Shmem is back within 50 MiB once the jobs end.
4. threads: 3,000 native threads (ctypes pthread_create, 16 KiB stacks) stop at pids.max (fewer than 64).
5. forged answers on the sandbox's socket (a 1 GiB length, a 50 MB frame, 1 MiB frames, a 401-digit number,
   100,000 nested brackets, invalid UTF-8, a truncated frame) and a batch returning 10**400: two dry runs at a time
   (the per-tenant cap) keep the API's peak RSS within 100 MB of idle and tenant B's p99 on /v1/models under
   100 ms, with no 5xx and every item an error; in a 16-completion job the worker's peak RSS stays within 100 MB
   of the same job with a plain reward, and the job ends on the malformed-answer path.
6. other ways in: the memory of any other process in the sandbox's pid namespace (/proc/1/mem of bubblewrap's init,
   unless the interpreter is pid 1 itself), ptrace, /proc/1/ns/* and setns, /dev and /sys, file descriptors
   inherited across exec, and host paths (the repo, the data folder) in /proc/1/cmdline, /proc/self/mountinfo,
   the environments and the rest: nothing.

Everything runs once, in a module fixture (under a minute on 2 cores); each test asserts one case's bounds on what
it gathered, and that tenant B went on. Each case prints a CHAOS line.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from service_core.models import TERMINAL_STATUSES
from tests.chaos.harness import Client, figure, service
from tests.chaos.privilege_code import SOURCES
from tests.chaos.probes import HealthProbe, everything_served, seconds_running

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parents[2]
REWARD_TIMEOUT = 5
MAX_RESTARTS = 3
MEMORY_MB = 1024
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
FORGE_MODES = ("header_1gib", "frame_50mb", "many_1mib_frames", "huge_int", "nested", "bad_utf8", "truncated")
MEMORY_CASES = ("memfd_1536mib", "sysv_shm_1536mib", "userns_tmpfs")
PROBE_CASES = ("uid_map", "core_pattern", "ways_in")
JOB_CASES = ("uid_map", "core_pattern", *MEMORY_CASES, "threads_3000", "ways_in")
PLAIN = """
def reward(prompt, completion, **fields):
    return float(len(completion))
"""
ITEM = {"prompt": "What is 1 + 1?", "completion": "2", "fields": {}}
DEATH_WORDS = ("died", "memory", "malformed")
SHMEM_SLACK_KB = 50 * 1024


# --- what the host sees -----------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in kB (VmRSS, VmHWM), 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS (Linux 4.0+, root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def shmem_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


def shmem_floor_kb(seconds: float = 1.0) -> int:
    """The host's Shmem at its lowest over `seconds`: a dead sandbox's IPC namespace and tmpfs are freed by the
    kernel a moment after it dies, so one reading may still count them."""
    deadline, lowest = time.monotonic() + seconds, shmem_kb()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        lowest = min(lowest, shmem_kb())
    return lowest


def shmem_back_kb(before_kb: int, slack_kb: int, timeout: float = 15.0) -> tuple[int, float]:
    """(Shmem, seconds it took) once it is back within slack_kb of before_kb, or as it is after `timeout`."""
    started = time.monotonic()
    while True:
        now = shmem_kb()
        if now - before_kb <= slack_kb or time.monotonic() - started > timeout:
            return now, time.monotonic() - started
        time.sleep(0.2)


class SandboxWatch(threading.Thread):
    """Every 0.1 s, from the host: each bubblewrap or Python process in a sandbox's cgroup and its uids (real,
    effective, saved, filesystem), read in one go from /proc/<pid>/status. The launcher (sh, setpriv) is root in
    the cgroup for a moment by design, before it drops to the sandbox's uid and execs bubblewrap: not judged."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[str, tuple[int, ...]]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    if "grpo-sandbox/sandbox-" not in Path(f"/proc/{entry.name}/cgroup").read_text():
                        continue
                    fields = dict(
                        line.split(":", 1) for line in Path(f"/proc/{entry.name}/status").read_text().splitlines()
                    )
                except (OSError, ValueError):
                    continue
                name = fields["Name"].strip()
                if name == "bwrap" or name.startswith("python"):
                    self.seen[int(entry.name)] = (name, tuple(int(u) for u in fields["Uid"].split()))

    def root_processes(self) -> list[str]:
        return [f"{pid} {name} uids {uids}" for pid, (name, uids) in self.seen.items() if 0 in uids]


class JobWatch(threading.Thread):
    """Every 50 ms: which worker process holds each watched job (its lease owner is host:pid:nonce; the solo pool
    trains in the worker process itself) and that process's VmRSS. Its VmHWM is reset when the job is first seen
    running and read when the job has ended, so `peak_kb` misses no spike between two samples."""

    def __init__(self, database_url: str, job_ids: list[str]):
        super().__init__(daemon=True)
        self.engine = create_engine(database_url)
        self.job_ids = job_ids
        self.pids: dict[str, int] = {}
        self.peak_kb = dict.fromkeys(job_ids, 0)
        self.start_kb = dict.fromkeys(job_ids, 0)
        self.ended: set[str] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        query = f"SELECT id, status, lease_owner FROM jobs WHERE id IN ({', '.join('?' * len(self.job_ids))})"
        while not self.stopped.wait(0.05) and len(self.ended) < len(self.job_ids):
            with self.engine.connect() as connection:
                rows = connection.exec_driver_sql(query, tuple(self.job_ids)).all()
            for job_id, status, owner in rows:
                if job_id in self.ended:
                    continue
                pid = self.pids.get(job_id)
                if status == "running" and owner and pid is None:
                    pid = self.pids[job_id] = int(owner.rsplit(":", 2)[1])
                    self.start_kb[job_id] = status_kb(pid, "VmRSS")
                    reset_peak(pid)
                if pid is None:
                    continue
                if status in TERMINAL_STATUSES:
                    self.peak_kb[job_id] = max(self.peak_kb[job_id], status_kb(pid, "VmHWM"))
                    self.ended.add(job_id)
                else:
                    self.peak_kb[job_id] = max(self.peak_kb[job_id], status_kb(pid, "VmRSS"))
        self.engine.dispose()


class ModelsLoop(threading.Thread):
    """Tenant B asking GET /v1/models back to back for the whole run: when each request started, its latency and
    status."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)
        self.answers: list[tuple[float, float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                status = self.http.get("/v1/models").status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append((started, time.monotonic() - started, status))
            time.sleep(0.01)
        self.http.close()

    def latencies(self, since: float = 0.0, until: float = math.inf) -> list[float]:
        return sorted(latency for started, latency, _ in self.answers if since <= started <= until)

    def p99_ms(self, since: float = 0.0, until: float = math.inf) -> float:
        ordered = self.latencies(since, until)
        return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def statuses(self) -> list[int]:
        return [status for _, _, status in self.answers]


class RssSampler(threading.Thread):
    """A process's VmRSS every 50 ms, kept at its peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = status_kb(pid, "VmRSS")
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))


# --- what the tenant sees ---------------------------------------------------------------------------------------


def reached(output: str) -> list[str]:
    """The `REACHED <what>` categories the code printed (JSON-escaped newlines undone)."""
    return re.findall(r"REACHED (\S+)", output.replace("\\n", "\n"))


def dry_run(client: Client, reward_id: str, params: dict, items: list[dict] | None = None) -> tuple[int, Any]:
    """POST /v1/rewards/{id}/test, again while the tenant's slots are full (429): (status, body)."""
    body = {"items": items or [ITEM], "params": params}
    deadline = time.monotonic() + 120
    while True:
        answer = client.http.post(f"/v1/rewards/{reward_id}/test", json=body, timeout=120)
        if answer.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, answer.text


def job_samples(client: Client, job_id: str) -> tuple[list[dict], str]:
    """The job's stored samples and everything it served (the rewards' printed output included)."""
    samples, cursor = [], None
    while True:
        page = client.http.get(
            f"/v1/jobs/{job_id}/samples", params={"limit": 100, **({"after": cursor} if cursor else {})}
        ).json()
        samples += page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            return samples, everything_served(client, job_id)


class Findings:
    """What the module's run gathered, for the tests to judge."""

    healthz: dict
    uploads: dict[str, int]
    dry: dict[str, tuple[int, Any]]
    jobs: dict[str, dict]
    served: dict[str, str]
    scores: dict[str, list[float | None]]
    errors: dict[str, list[str | None]]
    reward_ids: dict[str, str]
    other_job: dict
    probe: HealthProbe
    models: ModelsLoop
    api_idle_kb: int
    api_peak_kb: int
    forge_window: tuple[float, float]
    worker_peak_kb: dict[str, int]
    worker_start_kb: dict[str, int]
    worker_pids: tuple[list[int], list[int]]
    shmem_before_kb: int
    shmem_after_dry_kb: int
    shmem_after_jobs_kb: int
    shmem_settle_seconds: float
    core_pattern: tuple[bytes, bytes]
    sandboxes: SandboxWatch
    seconds: float


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Findings:
    started = time.monotonic()
    found = Findings()
    core_before = CORE_PATTERN.read_bytes()
    host_namespaces = {name: os.stat(f"/proc/self/ns/{name}").st_ino for name in os.listdir("/proc/self/ns")}
    tmp_path = tmp_path_factory.mktemp("privilege")
    with service(
        tmp_path,
        GRPO_REWARD_TIMEOUT_SECONDS=str(REWARD_TIMEOUT),
        GRPO_REWARD_START_TIMEOUT_SECONDS="30",
        GRPO_REWARD_MAX_RESTARTS=str(MAX_RESTARTS),
        GRPO_REWARD_MEMORY_MB=str(MEMORY_MB),
        GRPO_MAX_REWARD_CHECKS_PER_TENANT="2",
    ) as svc:
        sandboxes = SandboxWatch()
        sandboxes.start()
        svc.start_api()
        supervisors = [svc.start_worker(), svc.start_worker()]
        worker_pids = [svc.worker_pid(s) for s in supervisors]
        tenant_a, tenant_b = Client(svc, tenant="tenant-a"), Client(svc, tenant="tenant-b")
        dataset_a, dataset_b = tenant_a.upload_arithmetic(), tenant_b.upload_arithmetic()
        found.healthz = httpx.get(svc.base_url + "/healthz").json()
        probe = HealthProbe(svc.base_url)
        probe.start()
        models = ModelsLoop(svc.base_url, dict(tenant_b.http.headers))
        models.start()
        other_job = tenant_b.submit(dataset_b, max_steps=2)  # tenant B trains while all of this goes on

        reward_ids, found.uploads = {}, {}
        for case, source in {**SOURCES, "plain": PLAIN}.items():
            uploaded = tenant_a.http.post("/v1/rewards", files={"file": (f"{case}.py", source.encode())}, timeout=60)
            found.uploads[case] = uploaded.status_code
            if uploaded.status_code == 201:
                reward_ids[case] = uploaded.json()["id"]
        found.reward_ids = reward_ids
        assert len(reward_ids) == len(found.uploads), f"uploads refused: {found.uploads}"
        data_dir = svc.env["GRPO_DATA_DIR"]
        params = {
            "ways_in": {"repo": str(REPO), "data_dir": data_dir, "host_namespaces": host_namespaces},
        }

        # 5, in the API: forged answers, two dry runs at a time, while tenant B asks for /v1/models in a loop.
        found.dry = {"plain": dry_run(tenant_a, reward_ids["plain"], {})}  # warms the API's sandbox path up
        time.sleep(1)
        api_pid = svc.api.pid
        found.api_idle_kb = status_kb(api_pid, "VmRSS")
        reset_peak(api_pid)
        sampler = RssSampler(api_pid)
        sampler.start()
        forged: dict[str, tuple[str, dict, list[dict]]] = {
            f"forge {mode}": (reward_ids["forge"], {"mode": mode}, [ITEM]) for mode in FORGE_MODES
        }
        forged["forge batch_huge_int"] = (reward_ids["forge_batch_huge_int"], {}, [ITEM, ITEM])
        forged["forge several items"] = (
            reward_ids["forge"],
            {"mode": "mixed"},
            [{**ITEM, "completion": str(n)} for n in range(6)],
        )
        found.forge_window = (time.monotonic(), math.inf)
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = dict(zip(forged, pool.map(lambda args: dry_run(tenant_a, *args), forged.values()), strict=True))
        found.forge_window = (found.forge_window[0], time.monotonic())
        sampler.stopped.set()
        sampler.join()
        found.dry |= answers
        found.api_peak_kb = max(sampler.peak_kb, status_kb(api_pid, "VmHWM"))

        # 1-4 and 6, in the API: each case's dry run, two at a time.
        found.shmem_before_kb = shmem_floor_kb()
        cases = list(JOB_CASES)
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = pool.map(lambda case: dry_run(tenant_a, reward_ids[case], params.get(case, {})), cases)
            found.dry |= dict(zip(cases, answers, strict=True))
        found.shmem_after_dry_kb = shmem_kb()

        # The same cases in jobs, and the forging reward in a 16-completion step beside the same job, plainly.
        jobs = {
            "forge": tenant_a.submit(
                dataset_a,
                rewards=[{"name": reward_ids["forge"], "params": {"mode": "mixed"}}],
                max_steps=1,
                prompts_per_step=2,
                group_size=8,
            ),
            "plain": tenant_a.submit(
                dataset_a,
                rewards=[{"name": reward_ids["plain"], "params": {}}],
                max_steps=1,
                prompts_per_step=2,
                group_size=8,
            ),
        }
        watch = JobWatch(svc.env["GRPO_DATABASE_URL"], list(jobs.values()))
        watch.start()
        jobs["forge_batch_huge_int"] = tenant_a.submit(
            dataset_a, rewards=[{"name": reward_ids["forge_batch_huge_int"]}], max_steps=1, prompts_per_step=1
        )
        for case in JOB_CASES:
            jobs[case] = tenant_a.submit(
                dataset_a,
                rewards=[{"name": reward_ids[case], "params": params.get(case, {})}],
                max_steps=1,
                prompts_per_step=1,
            )
        found.jobs = {case: tenant_a.wait(job_id, timeout=600) for case, job_id in jobs.items()}
        found.other_job = tenant_b.wait(other_job, timeout=600)
        watch.join(timeout=10)
        watch.stopped.set()
        found.worker_peak_kb = {case: watch.peak_kb.get(job_id, 0) for case, job_id in jobs.items()}
        found.worker_start_kb = {case: watch.start_kb.get(job_id, 0) for case, job_id in jobs.items()}
        found.shmem_after_jobs_kb, found.shmem_settle_seconds = shmem_back_kb(found.shmem_before_kb, SHMEM_SLACK_KB)
        found.served, found.scores, found.errors = {}, {}, {}
        for case, job_id in jobs.items():
            samples, found.served[case] = job_samples(tenant_a, job_id)
            reward_id = reward_ids[case]
            found.scores[case] = [s["scores"].get(reward_id) for s in samples]
            found.errors[case] = [s["errors"].get(reward_id) for s in samples]
        probe.stopped.set()
        models.stopped.set()
        probe.join()
        models.join()
        found.probe, found.models = probe, models
        found.worker_pids = (worker_pids, [svc.worker_pid(s) for s in supervisors])
        sandboxes.stopped.set()
        sandboxes.join()
        found.sandboxes = sandboxes
    found.core_pattern = (core_before, CORE_PATTERN.read_bytes())
    found.seconds = time.monotonic() - started
    figure(
        "sandbox privilege, the run",
        seconds=f"{found.seconds:.0f}",
        uploads=found.uploads,
        other_tenant=f"{found.other_job['status']} in {seconds_running(found.other_job):.1f}s",
        health_probes=probe.probes,
        health_failures=probe.failures,
        slowest_health_s=f"{probe.slowest:.2f}",
        sandbox_processes_seen=len(sandboxes.seen),
        workers_kept=found.worker_pids[0] == found.worker_pids[1],
    )
    return found


def other_tenant_went_on(found: Findings) -> None:
    """Tenant B's job succeeded, its requests never met a 5xx, the API answered every health probe, and no worker
    process was replaced."""
    assert found.other_job["status"] == "succeeded", found.other_job["error"]
    statuses = found.models.statuses()
    assert statuses and all(status == 200 for status in statuses), sorted(set(statuses))
    assert found.probe.probes > 0 and found.probe.failures == 0
    assert found.worker_pids[0] == found.worker_pids[1], "a worker process was replaced"


def dry_item(found: Findings, case: str) -> dict:
    status, body = found.dry[case]
    assert status == 200, f"{case}: dry run answered {status}: {body}"
    return body["results"][0]


def dry_output(found: Findings, case: str) -> str:
    status, body = found.dry[case]
    return body.get("output", "") if isinstance(body, dict) else str(body)


def job_line(found: Findings, case: str) -> str:
    job = found.jobs[case]
    return f"{job['status']} {(job['error'] or '')[:160]!r}"


# --- the cases --------------------------------------------------------------------------------------------------


def test_healthz_reports_a_full_sandbox_that_is_not_root(run):
    sandbox = run.healthz["sandbox"]
    figure("sandbox privilege healthz", **sandbox)
    assert sandbox["level"] == "full"
    assert sandbox["uid"] not in (0, None)
    assert all(status == 201 for status in run.uploads.values()), run.uploads
    other_tenant_went_on(run)


def test_no_sandbox_process_runs_as_host_root(run):
    """1, from the host: every bubblewrap and Python process seen in a sandbox's cgroup, the API's and the
    workers', over the whole run."""
    roots = run.sandboxes.root_processes()
    uids = sorted({uid for _name, found in run.sandboxes.seen.values() for uid in found})
    figure("sandbox privilege host uids", processes_seen=len(run.sandboxes.seen), uids=uids, as_root=len(roots))
    assert run.sandboxes.seen, "no sandbox process was ever seen"
    assert not roots, roots
    other_tenant_went_on(run)


def test_probing_cases_are_scored_and_hold_no_capability(run):
    """The cases that only look (uid_map, core_pattern, ways_in) are scored, not killed: each dry run answers 200
    with a score and each job trains; no capability inside. What they reach is judged case by case."""
    for case in PROBE_CASES:
        item = dry_item(run, case)
        assert item["error"] is None and item["score"] is not None, f"{case}: {item}"
        assert run.jobs[case]["status"] == "succeeded", f"{case}: {run.jobs[case]['error']}"
        assert run.scores[case] and None not in run.scores[case], f"{case}: {run.errors[case]}"
    assert "capabilities" not in reached(dry_output(run, "uid_map")) + reached(run.served["uid_map"])
    assert "Uid ['65534', '65534', '65534', '65534'] CapEff 0000000000000000" in dry_output(run, "uid_map")
    other_tenant_went_on(run)


def test_uid_map_outside_uid_is_never_0(run):
    """1, from inside: the code returns the lowest outside uid of /proc/self/uid_map."""
    item = dry_item(run, "uid_map")
    job_scores = run.scores["uid_map"]
    figure(
        "sandbox privilege uid_map",
        dry_run_outside_uid=item["score"],
        job_outside_uids=job_scores,
        job=job_line(run, "uid_map"),
        reached=sorted(set(reached(dry_output(run, "uid_map")) + reached(run.served["uid_map"]))),
    )
    assert item["score"] != 0 and 0 not in job_scores
    assert "root-uid-outside" not in reached(dry_output(run, "uid_map")) + reached(run.served["uid_map"])
    other_tenant_went_on(run)


def test_host_core_pattern_is_unchanged(run):
    before, after = run.core_pattern
    figure("sandbox privilege core_pattern on the host", before=before, after=after)
    assert before == after
    other_tenant_went_on(run)


def test_kernel_knobs_never_open_for_writing(run):
    """2: the code opens each knob O_WRONLY and closes it at once (never writes); its score is the count opened."""
    item = dry_item(run, "core_pattern")
    job_scores = run.scores["core_pattern"]
    opened = sorted(set(re.findall(r"REACHED knob-open-for-writing (\S+)", dry_output(run, "core_pattern"))))
    figure(
        "sandbox privilege kernel knobs",
        dry_run_opened=item["score"],
        job_opened=job_scores,
        opened=opened,
        job=job_line(run, "core_pattern"),
    )
    assert item["score"] == 0 and set(job_scores) == {0.0}, opened
    assert not reached(dry_output(run, "core_pattern")) and not reached(run.served["core_pattern"])
    other_tenant_went_on(run)


def test_memory_past_the_limit_is_stopped_and_given_back(run):
    """3: memfd and SysV shm past the cgroup's memory.limit die (the dry run's item fails naming the death; the job
    fails naming the reward and the memory limit: more than the allowed fraction of its samples failed, or its
    sandbox died MAX_RESTARTS times in a row), the nested user namespace is refused at clone and unshare (its tmpfs
    never mounted), and the host's Shmem is back within 50 MiB of before (lower is the host's other work)."""
    problems = []
    for case in MEMORY_CASES:
        status, body = run.dry[case]
        job = run.jobs[case]
        item = body["results"][0] if status == 200 else {}
        figure(
            f"sandbox privilege memory {case}",
            dry_run_status=status,
            dry_run_item=repr((item.get("error") or str(item.get("score")))[:120]),
            job=job_line(run, case),
            job_s=f"{seconds_running(job):.1f}" if job.get("finished_at") else "-",
            reached=sorted(set(reached(dry_output(run, case)) + reached(run.served[case]))),
        )
        if status != 200:
            problems.append(f"{case}: dry run answered {status}: {body}")
            continue
        if reached(dry_output(run, case)) or reached(run.served[case]):
            problems.append(f"{case}: reached {reached(dry_output(run, case)) + reached(run.served[case])}")
        if case == "userns_tmpfs":
            # Refused at unshare, so nothing to kill: the item scores 0 (MiB written to its tmpfs), and the job trains.
            if item["score"] != 0.0 or "refused unshare" not in dry_output(run, case):
                problems.append(f"{case}: dry run {item}, output {dry_output(run, case)[:300]!r}")
            if job["status"] != "succeeded" or set(run.scores[case]) != {0.0}:
                problems.append(f"{case}: job {job['status']} {job['error']}, scores {run.scores[case]}")
            continue
        if item["score"] is not None or not any(word in (item["error"] or "") for word in DEATH_WORDS):
            problems.append(f"{case}: dry run item {item}")
        error = job["error"] or ""
        rule = f"killed or died {MAX_RESTARTS} times in a row" in error or "failed on" in error
        if job["status"] != "failed" or run.reward_ids[case] not in error or not rule or "memory" not in error:
            problems.append(f"{case}: job {job['status']}: {error}")
    left_kb = run.shmem_after_jobs_kb - run.shmem_before_kb
    figure(
        "sandbox privilege memory Shmem",
        before_mib=f"{run.shmem_before_kb / 1024:.0f}",
        right_after_dry_runs_mib=f"{run.shmem_after_dry_kb / 1024:.0f}",
        after_jobs_mib=f"{run.shmem_after_jobs_kb / 1024:.0f}",
        left_mib=f"{left_kb / 1024:+.1f}",
        settled_in_s=f"{run.shmem_settle_seconds:.1f}",
    )
    assert not problems, "\n".join(problems)
    # Held back, not given back: the host's other work may only lower it.
    assert left_kb <= SHMEM_SLACK_KB
    other_tenant_went_on(run)


def test_threads_stop_at_pids_max(run):
    """4: the score is how many of 3,000 native threads started."""
    item = dry_item(run, "threads_3000")
    job_scores = run.scores["threads_3000"]
    figure(
        "sandbox privilege threads",
        dry_run_started=item["score"],
        job_started=job_scores,
        job=job_line(run, "threads_3000"),
    )
    assert item["error"] is None and item["score"] < 64
    assert run.jobs["threads_3000"]["status"] == "succeeded", run.jobs["threads_3000"]["error"]
    assert job_scores and all(score is not None and score < 64 for score in job_scores)
    assert not reached(dry_output(run, "threads_3000")) and not reached(run.served["threads_3000"])
    other_tenant_went_on(run)


def test_forged_answers_in_dry_runs_cost_the_api_nothing(run):
    """5, in the API: every forged frame is refused before it is parsed (or parsed and refused), each item fails,
    no request of anyone answers 5xx, the API's peak RSS stays within 100 MB of idle, B's p99 under 100 ms."""
    singles = [f"forge {mode}" for mode in FORGE_MODES] + ["forge batch_huge_int"]
    for case in singles:
        status, body = run.dry[case]
        first = body["results"][0] if status == 200 else {}
        figure(
            f"sandbox privilege {case}",
            dry_run_status=status,
            items=len(body["results"]) if status == 200 else 0,
            error=repr((first.get("error") or "")[:120]),
        )
    growth_mb = (run.api_peak_kb - run.api_idle_kb) / 1024
    models, window = run.models, run.forge_window
    figure(
        "sandbox privilege forged answers, API",
        dry_runs=len(singles) + 1,
        seconds=f"{window[1] - window[0]:.1f}",
        api_idle_mb=f"{run.api_idle_kb / 1024:.0f}",
        api_peak_mb=f"{run.api_peak_kb / 1024:.0f}",
        api_growth_mb=f"{growth_mb:.1f}",
        other_tenant_requests=len(models.latencies(*window)),
        other_tenant_p99_ms=f"{models.p99_ms(*window):.1f}",
        other_tenant_max_ms=f"{1000 * models.latencies(*window)[-1]:.1f}",
        whole_run_requests=len(models.answers),
        whole_run_p99_ms=f"{models.p99_ms():.1f}",
        whole_run_non_200=sum(status != 200 for status in models.statuses()),
    )
    for case in singles:
        status, body = run.dry[case]
        assert status == 200, f"{case}: {status} {body}"
        for result in body["results"]:
            assert result["score"] is None and result["error"], f"{case}: {result}"
        assert "forged-answer-ignored" not in reached(body["output"])
    for mode in FORGE_MODES:
        error = run.dry[f"forge {mode}"][1]["results"][0]["error"]
        assert ("died" if mode == "truncated" else "malformed") in error, f"{mode}: {error}"
    assert "too large for a float" in run.dry["forge batch_huge_int"][1]["results"][0]["error"]
    assert growth_mb <= 100
    assert models.p99_ms(*window) < 100
    other_tenant_went_on(run)


def test_a_dry_run_of_several_forged_items_answers_200_with_each_failed(run):
    status, body = run.dry["forge several items"]
    figure("sandbox privilege forge several items", dry_run_status=status, body=repr(str(body)[:200]))
    assert status == 200, body
    assert all(r["score"] is None and r["error"] for r in body["results"])


def test_forged_answers_in_a_job_cost_the_worker_nothing(run):
    """5, on a worker: the forging reward in a 16-completion step against the same job with a plain reward. The job
    ends on the malformed-answer path (failed naming the reward and the malformed answer, or trained with its
    items failed), and the worker's peak RSS is at most 100 MB above the plain job's (below it is no harm: the two
    run on whichever worker takes them, after whatever that worker ran before)."""
    forge, plain = run.jobs["forge"], run.jobs["plain"]
    hostile_mb, plain_mb = run.worker_peak_kb["forge"] / 1024, run.worker_peak_kb["plain"] / 1024
    hostile_start_mb, plain_start_mb = run.worker_start_kb["forge"] / 1024, run.worker_start_kb["plain"] / 1024
    figure(
        "sandbox privilege forged answers, worker",
        job=job_line(run, "forge"),
        plain_job=job_line(run, "plain"),
        batch_job=job_line(run, "forge_batch_huge_int"),
        worker_peak_mb=f"{hostile_mb:.0f}",
        plain_worker_peak_mb=f"{plain_mb:.0f}",
        difference_mb=f"{hostile_mb - plain_mb:+.1f}",
        worker_growth_mb=f"{hostile_mb - hostile_start_mb:.0f}",
        plain_worker_growth_mb=f"{plain_mb - plain_start_mb:.0f}",
        job_s=f"{seconds_running(forge):.1f}",
        plain_job_s=f"{seconds_running(plain):.1f}",
    )
    assert plain["status"] == "succeeded", plain["error"]
    assert hostile_mb > 0 and plain_mb > 0, "the jobs' workers were not measured"
    if forge["status"] == "failed":
        assert run.reward_ids["forge"] in forge["error"] and "malformed" in forge["error"], forge["error"]
    else:
        assert forge["status"] == "succeeded", forge["error"]
        assert all(error and "malformed" in error for error in run.errors["forge"]), run.errors["forge"]
    assert "forged-answer-ignored" not in reached(run.served["forge"])
    batch = run.jobs["forge_batch_huge_int"]
    assert batch["status"] == "failed", batch["error"]
    assert run.reward_ids["forge_batch_huge_int"] in batch["error"] and "too large for a float" in batch["error"]
    assert hostile_mb - plain_mb <= 100
    other_tenant_went_on(run)


WAYS_IN = {
    "ptrace": "ptrace attach to bubblewrap's init",
    "host-namespace": "a handle on one of the host's namespaces",
    "setns": "setns into /proc/1/ns/*",
    "device": "a /dev node besides bubblewrap's minimal set",
    "sysfs": "anything in /sys",
    "inherited-fd": "a descriptor besides 0, 1, 2 and its socket",
    "host-path": "the repo or data folder in /proc/1/cmdline, /proc/self/cmdline, mountinfo, /proc/self/cgroup",
}


def ways_in_reached(run: Findings) -> list[str]:
    return reached(dry_output(run, "ways_in")) + reached(run.served["ways_in"])


def test_other_ways_in_find_nothing(run):
    """6: ptrace, namespaces, devices, sysfs, inherited descriptors, host paths in what /proc shows (another
    process's memory and environment are judged by the two tests below)."""
    item = dry_item(run, "ways_in")
    found = ways_in_reached(run)
    figure(
        "sandbox privilege other ways in",
        dry_run_reached=item["score"],
        job_reached=run.scores["ways_in"],
        categories=sorted(set(found)),
        job=job_line(run, "ways_in"),
    )
    assert "refused ptrace attach 1" in dry_output(run, "ways_in")
    assert [c for c in found if c in WAYS_IN] == [], [WAYS_IN[c] for c in found if c in WAYS_IN]
    other_tenant_went_on(run)


def test_no_other_process_in_the_sandbox_has_memory_to_reach(run):
    """6: /proc/<pid>/mem of every other process in the sandbox's pid namespace (bubblewrap's init, when the
    interpreter is not pid 1 itself), opened to read and to write (never written): refused, or no such process."""
    output = dry_output(run, "ways_in")
    others = re.search(r"the others in its pid namespace: (\[[^\]]*\])", output)
    found = [c for c in ways_in_reached(run) if c == "other-process-memory"]
    figure(
        "sandbox privilege other processes' memory",
        other_processes=others.group(1) if others else "?",
        reached=len(found),
    )
    assert others, output[:2000]
    assert not found
    other_tenant_went_on(run)


def test_no_environment_in_the_sandbox_names_a_host_path(run):
    """6: the environ of every process in the sandbox (its own is cleared; bubblewrap's init, where there is one,
    keeps the launcher's) names neither the repo nor the data folder."""
    found = [c for c in ways_in_reached(run) if c == "host-path-in-environ"]
    figure("sandbox privilege environments", reached=len(found))
    assert not found
    other_tenant_went_on(run)
