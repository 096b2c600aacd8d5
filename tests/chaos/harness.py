"""What the fault suite drives: real `grpo` processes (API, supervised workers), a private Redis it can kill,
fresh databases, and small helpers to submit jobs and wait on them. Each case prints its figures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx

from grpo_core import arithmetic_task
from service_core.models import TERMINAL_STATUSES
from tests.service_env import fresh_database

# Short lease and reconcile intervals, so a dead worker's job is found in seconds, not minutes.
FAST_RECOVERY = {
    "GRPO_LEASE_SECONDS": "3",
    "GRPO_RECONCILE_EVERY_SECONDS": "1",
    "GRPO_REQUEUE_QUEUED_AFTER_SECONDS": "6",
    "GRPO_EVENTS_POLL_SECONDS": "0.2",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def figure(case: str, **values) -> None:
    """One line per measured figure, greppable in CI output."""
    print(f"\nCHAOS {case}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


class PrivateRedis:
    """A Redis server of the suite's own on a free port (without persistence, like the machine's), so it can
    be killed and restarted without touching anything else."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()


class Service:
    """`grpo` processes sharing one environment: an API and any number of supervised workers."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.supervisors: list[subprocess.Popen] = []
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._log_count = 0

    def _log(self, name: str):
        self._log_count += 1
        return open(self.workdir / "logs" / f"{self._log_count:02d}-{name}.log", "w")

    def grpo(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start_api(self) -> None:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api", "--port", str(self.port)],
            env=self.env,
            stdout=self._log("api"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.api.poll() is None, "API exited:\n" + self.logs()[-3000:]
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.2)

    def kill_api(self) -> None:
        self.api.kill()
        self.api.wait()

    def start_worker(self) -> subprocess.Popen:
        """A worker under the same supervisor `grpo serve` uses: killed, it is started again."""
        code = "from api.cli import worker_command; from api.serve import WorkerSupervisor; from service_core.settings import get_settings; settings = get_settings(); WorkerSupervisor(worker_command(settings), settings.shutdown_grace_seconds).run()"
        supervisor = subprocess.Popen(
            [sys.executable, "-c", code],
            env=self.env,
            stdout=self._log("worker"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.supervisors.append(supervisor)
        return supervisor

    def worker_pid(self, supervisor: subprocess.Popen, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True).stdout.split()
            if found:
                return int(found[0])
            time.sleep(0.1)
        raise AssertionError("worker process not found")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*.log")))

    def stop(self) -> None:
        for supervisor in self.supervisors:
            os.killpg(supervisor.pid, signal.SIGKILL)
        if self.api and self.api.poll() is None:
            self.api.kill()
        for process in [*self.supervisors, *([self.api] if self.api else [])]:
            process.wait()


@contextmanager
def service(tmp_path: Path, *, database: str = "sqlite", broker_url: str | None = None, **extra_env: str):
    with fresh_database(database, tmp_path) as database_url:
        env = {
            **os.environ,
            **FAST_RECOVERY,
            "GRPO_DATA_DIR": str(tmp_path / "data"),
            "GRPO_DATABASE_URL": database_url,
            "GRPO_QUEUE": f"chaos-{uuid.uuid4().hex[:8]}",
            **extra_env,
        }
        if broker_url:
            env["GRPO_BROKER_URL"] = broker_url
        else:
            env.pop("GRPO_BROKER_URL", None)
        svc = Service(tmp_path, env)
        svc.grpo("migrate")
        try:
            yield svc
        finally:
            svc.stop()


class Client:
    def __init__(self, svc: Service, tenant: str = "chaos"):
        self.http = httpx.Client(
            base_url=svc.base_url,
            headers={"Authorization": f"Bearer {svc.grpo('keys', 'create', '--tenant', tenant)}"},
            timeout=30,
        )

    def upload_arithmetic(self) -> str:
        content = "".join(json.dumps(r) + "\n" for r in arithmetic_task()[0]).encode()
        return self.http.post("/v1/datasets", files={"file": ("a.jsonl", content)}).raise_for_status().json()["id"]

    def submit(self, dataset_id: str, rewards=None, **hyperparameters) -> str:
        spec = {
            "base_model": "tiny-random-llama",
            "dataset_id": dataset_id,
            "rewards": rewards or [{"name": "length_target", "params": {"target": 40}}],
            "hyperparameters": {"group_size": 2, "max_new_tokens": 8, "lora": {"r": 4}, "seed": 7, **hyperparameters},
        }
        return self.http.post("/v1/jobs", json=spec).raise_for_status().json()["id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").raise_for_status().json()

    def wait(self, job_id: str, statuses=TERMINAL_STATUSES, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")

    def wait_step(self, job_id: str, step: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.job(job_id)["progress"]["step"] < step:
            assert time.monotonic() < deadline, f"job {job_id} did not reach step {step}"
            time.sleep(0.05)

    def train_steps(self, job_id: str) -> list[int]:
        return [
            m["step"]
            for m in self.http.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
            if m["kind"] == "train"
        ]


def job_row(svc: Service, job_id: str) -> dict:
    """Columns the API does not show (attempts, steps computed), read straight from the database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(svc.env["GRPO_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT attempt, steps_computed, status FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def adapter_weights(client: Client, job_id: str) -> bytes:
    """The final adapter's safetensors bytes, downloaded through the API."""
    import io
    import tarfile

    archive = client.http.get(f"/v1/jobs/{job_id}/adapter").raise_for_status().content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("adapter_model.safetensors"))
        return tar.extractfile(member).read()
