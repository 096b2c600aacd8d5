"""The running_service fixture: the real API server and a real Celery worker process, on the embedded layout (SQLite,
folder broker) and on the scaled-out one (PostgreSQL, Redis). A plugin (tests/conftest.py names it in pytest_plugins),
so tests/e2e and tests/client share it without importing a conftest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.service_env import REDIS_URL, free_port, fresh_database

LAYOUTS = {"embedded": ("sqlite", None), "redis-postgresql": ("postgresql", REDIS_URL)}


class RunningService:
    def __init__(self, base_url: str, env: dict[str, str], processes: list[subprocess.Popen]):
        self.base_url, self.env, self.processes = base_url, env, processes

    def grpo(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def client(self, tenant: str) -> httpx.Client:
        key = self.grpo("keys", "create", "--tenant", tenant)
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def running_service(request, tmp_path_factory):
    database, broker = LAYOUTS[request.param]
    tmp_path = tmp_path_factory.mktemp(request.param)
    with fresh_database(database, tmp_path) as database_url:
        env = {
            **os.environ,
            "GRPO_DATA_DIR": str(tmp_path / "data"),
            "GRPO_DATABASE_URL": database_url,
            # A queue of its own, so no message left on the shared Redis by another run is consumed here.
            "GRPO_QUEUE": f"grpo-test-{uuid.uuid4().hex[:8]}",
            "GRPO_EVENTS_POLL_SECONDS": "0.2",
            # Settings a test module asks its service for (its SERVICE_ENV).
            **getattr(request.module, "SERVICE_ENV", {}),
        }
        if broker:
            env["GRPO_BROKER_URL"] = broker
        else:
            env.pop("GRPO_BROKER_URL", None)
        port = free_port()
        logs = tmp_path / "logs"
        logs.mkdir()
        subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=env, check=True, timeout=120)
        api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api", "--port", str(port)],
            env=env, stdout=open(logs / "api.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker"],
            env=env,
            stdout=open(logs / "worker.log", "w"),
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (logs / "api.log").read_text()
            time.sleep(0.3)
        try:
            yield RunningService(base_url, env, [api, worker])
        finally:
            for process in (api, worker):
                process.terminate()
            for process in (api, worker):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
