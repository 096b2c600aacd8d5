"""`grpo serve` stopped the ways systemd, `docker stop` and Ctrl+C stop it: real processes on the embedded layout
(SQLite, folder broker). No worker may outlive serve, and a job running at the time must checkpoint, go back to
the queue and resume from that checkpoint when serve starts again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service_env import free_port


class Serve:
    """One `grpo serve` process on a data folder, its output in a log file, killed (with its process group) if a
    test leaves it running."""

    def __init__(self, data_dir: Path, log: Path):
        self.data_dir, self.log = data_dir, log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "GRPO_DATA_DIR": str(data_dir), "GRPO_EVENTS_POLL_SECONDS": "0.2"}
        for name in ("GRPO_DATABASE_URL", "GRPO_BROKER_URL", "GRPO_QUEUE"):
            self.env.pop(name, None)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self.env,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the clean-up below can kill whatever serve started
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, "serve exited:\n" + self.output()
            assert time.monotonic() < deadline, "serve did not become ready:\n" + self.output()
            time.sleep(0.3)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def worker_pid(self, timeout: float = 60) -> int:
        """The pid of serve's worker child, once Celery says it is ready (its handlers are installed then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = [int(pid) for pid in _children(self.process.pid)]
            if children and " ready." in self.log.read_text(errors="replace")[self.log_offset :]:
                assert len(children) == 1, children
                return children[0]
            time.sleep(0.2)
        raise AssertionError("no ready worker under serve:\n" + self.output())

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve still running {timeout}s after {sig!r}:\n" + self.output()) from None

    def grpo(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def kill_all(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def _children(pid: int) -> list[str]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return children


def _descendants(pid: int) -> list[int]:
    found = [int(child) for child in _children(pid)]
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _running(pid: int) -> bool:
    """True while `pid` is a live process: not gone, and not a zombie waiting for whoever it was re-parented to."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextmanager
def serve_on(tmp_path: Path):
    server = Serve(tmp_path / "data", tmp_path / "serve.log")
    try:
        yield server
    finally:
        server.kill_all()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_its_worker_on_a_stop_signal(tmp_path, sig):
    with serve_on(tmp_path) as server:
        server.start()
        worker = server.worker_pid()
        returncode = server.stop(sig)
        assert not _running(worker), f"worker {worker} outlived serve:\n" + server.output()
        assert not Path(f"/proc/{worker}").exists(), "serve did not reap its worker"
        assert returncode == 0, server.output()


def test_the_worker_stops_when_serve_is_killed(tmp_path):
    with serve_on(tmp_path) as server:
        server.start()
        worker = server.worker_pid()
        server.process.kill()
        server.process.wait()
        assert _wait_gone(worker, timeout=30), f"worker {worker} outlived a killed serve:\n" + server.output()


def _job_row(data_dir: Path, job_id: str) -> dict:
    with sqlite3.connect(data_dir / "grpo.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _wait_for(client: httpx.Client, job_id: str, done, what: str, server: Serve, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job never {what}: {job}\n" + server.output()
        time.sleep(0.1)


@pytest.mark.slow
def test_a_running_job_checkpoints_goes_back_to_the_queue_and_resumes(tmp_path):
    with serve_on(tmp_path) as server:
        server.start()
        key = server.grpo("keys", "create", "--tenant", "t")
        client = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        rows = "".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(6))
        dataset = client.post("/v1/datasets", files={"file": ("d.jsonl", rows.encode())}).json()["id"]
        spec = {
            "base_model": "tiny-random-llama",
            "dataset_id": dataset,
            "rewards": [{"name": "length_target", "params": {"target": 40}}],
            # Long enough to be mid-run when serve stops, and no periodic checkpoints: the one at the stop is
            # what the next run resumes from.
            "hyperparameters": {"group_size": 2, "max_new_tokens": 6, "max_steps": 400, "checkpoint_every": 0},
        }
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        _wait_for(client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 2, "ran", server)

        # A client following the job's events holds a response open; it must not hold serve's shutdown up.
        following = threading.Event()

        def follow() -> None:
            try:
                with httpx.stream(
                    "GET", f"{server.base_url}/v1/jobs/{job_id}/events", headers=client.headers
                ) as stream:
                    following.set()
                    for _ in stream.iter_lines():
                        pass
            except httpx.HTTPError:
                pass

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert following.wait(60), "the event stream never opened"

        worker = server.worker_pid()
        # The worker and the job's reward process (a child of the worker): none may outlive serve.
        processes = _descendants(server.process.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes]
        assert any(b"grpo_core.reward_process" in command for command in commands), commands
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert not _running(worker), server.output()
        assert not [pid for pid in processes if _running(pid)], server.output()
        stopped = _job_row(server.data_dir, job_id)
        assert stopped["status"] == "queued", (stopped, server.output())
        assert stopped["lease_owner"] is None and stopped["lease_expires_at"] is None
        assert stopped["steps_computed"] == stopped["step"] >= 2
        stop_step = stopped["step"]

        server.start()
        checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
        assert [c["step"] for c in checkpoints] == [stop_step]
        _wait_for(
            client, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] > stop_step, "resumed", server
        )
        resumed = _job_row(server.data_dir, job_id)
        # Resumed from the checkpoint: no step computed twice, and the graceful stop did not use up an attempt.
        assert resumed["steps_computed"] == resumed["step"] > stop_step
        assert resumed["attempt"] == 1

        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        _wait_for(client, job_id, lambda j: j["status"] == "cancelled", "cancelled", server)
        assert server.stop(signal.SIGTERM) == 0, server.output()

    with sqlite3.connect(server.data_dir / "grpo.db") as db:
        statuses = [
            json.loads(data)["status"]
            for (data,) in db.execute(
                "SELECT data FROM events WHERE job_id = ? AND type = 'status' ORDER BY id", (job_id,)
            )
        ]
    assert statuses == ["queued", "running", "queued", "running", "cancelled"]
