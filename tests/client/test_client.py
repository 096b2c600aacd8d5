"""grpo_client.Client against the real API and worker: typed calls, errors, the event stream resumed after a
dropped connection, and downloads checked against their sha256."""

import hashlib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grpo_client import ApiError, ChecksumMismatch, Client, Event, parse_events
from tests.client.helpers import TINY_JOB, TINY_REWARDS, embedded_only, write_prompts


def test_the_client_imports_nothing_of_the_service():
    code = (
        "import sys, grpo_client, grpo_client.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'api', 'worker', 'grpo_core', 'torch', 'pydantic'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.unit
def test_parse_events_follows_the_sse_rules():
    lines = [": keep-alive", "", "id: 7", "event: status", 'data: {"status":', 'data: "running"}', "",
             "retry: 100", "id: 8", "event: metrics", 'data:{"step": 1}', "", "id: 9", "event: warning", "data: {"]  # fmt: skip
    # A comment is skipped, data lines join with newlines, the space after the colon is optional, and the last
    # event, cut off before its blank line, is not yielded.
    assert list(parse_events(lines)) == [Event(7, "status", {"status": "running"}), Event(8, "metrics", {"step": 1})]


class CuttingProxy:
    """A TCP relay to the API that drops its first connection the way a network does: mid-response, right after
    the first complete event of the stream, without ending the chunked body. Later connections relay whole. Keeps
    what each connection sent, to read the request headers."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytearray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            sent = bytearray()
            self.requests.append(sent)
            cut = len(self.requests) == 1
            threading.Thread(target=self._pump, args=(downstream, upstream, sent, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, bytearray(), cut), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, seen: bytearray, cut: bool) -> None:
        try:
            while chunk := source.recv(65536):
                start = len(seen)
                seen += chunk
                body = seen.find(b"\r\n\r\n")
                first_event = seen.find(b"id: ", body) if cut and body >= 0 else -1
                end = seen.find(b"\n\n", first_event) if first_event >= 0 else -1
                if end >= 0:
                    sink.sendall(seen[start : end + 2])
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for side in (source, sink):
            try:
                side.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            side.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def finished_job(client, tmp_path) -> str:
    dataset = client.datasets.upload(write_prompts(tmp_path / "prompts.jsonl"))
    job = client.jobs.create(
        model="tiny-random-llama",
        dataset=dataset["id"],
        rewards=TINY_REWARDS,
        hyperparameters={**TINY_JOB, "max_steps": 2, "checkpoint_every": 1},
    )
    assert job["status"] == "queued" and job["hyperparameters"]["max_steps"] == 2
    events = list(client.jobs.watch(job["id"]))
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    return job["id"]


@pytest.mark.slow
@embedded_only
def test_watch_resumes_a_dropped_stream_with_last_event_id(running_service, api_key, client, finished_job):
    everything = list(client.jobs.watch(finished_job))
    assert len(everything) >= 7 and len({e.id for e in everything}) == len(everything)
    assert [e.id for e in client.jobs.watch(finished_job, last_event_id=everything[2].id)] == [
        e.id for e in everything[3:]
    ]

    proxy = CuttingProxy(int(running_service.base_url.rsplit(":", 1)[1]))
    try:
        with Client(proxy.url, api_key) as through_proxy:
            resumed = list(through_proxy.jobs.watch(finished_job))
    finally:
        proxy.close()
    assert resumed == everything, "no event lost or repeated across the drop"
    assert len(proxy.requests) == 2, "the first connection was dropped, the second one finished the stream"
    first, second = (bytes(r).decode().lower() for r in proxy.requests)
    assert "last-event-id" not in first
    assert f"last-event-id: {everything[0].id}\r\n" in second


@pytest.mark.slow
@embedded_only
def test_download_checks_the_sha256(running_service, client, finished_job, tmp_path):
    checkpoints = client.jobs.checkpoints(finished_job)
    assert [c["step"] for c in checkpoints] == [1, 2]
    download = client.jobs.download(finished_job, tmp_path / "adapter.tar.gz")
    assert download.path == tmp_path / "adapter.tar.gz" and download.step == 2
    assert hashlib.sha256(download.path.read_bytes()).hexdigest() == download.sha256 == checkpoints[1]["sha256"]
    assert download.bytes == checkpoints[1]["bytes"]

    # Step 1's stored archive is truncated behind the API's back: the bytes no longer hash to the recorded sha256.
    stored = Path(running_service.env["GRPO_DATA_DIR"]) / "artifacts" / "jobs" / finished_job / "checkpoints"
    archive = stored / "step-000001" / "adapter.tar.gz"
    archive.write_bytes(archive.read_bytes()[:100])
    target = tmp_path / "corrupt"
    target.mkdir()
    with pytest.raises(ChecksumMismatch) as mismatch:
        client.jobs.download(finished_job, target, step=1)
    assert mismatch.value.expected == checkpoints[0]["sha256"]
    assert mismatch.value.actual == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert list(target.iterdir()) == [], "no file, not even a partial one"


@pytest.mark.slow
@embedded_only
def test_api_errors_carry_status_and_detail(client, tmp_path):
    with pytest.raises(ApiError) as missing:
        client.jobs.get("job_" + "0" * 32)
    assert missing.value.status == 404 and "job_" + "0" * 32 in missing.value.detail
    dataset = client.datasets.upload(write_prompts(tmp_path / "prompts.jsonl"))
    assert client.datasets.get(dataset["id"]) == dataset and dataset in client.datasets.list()
    with pytest.raises(ApiError) as invalid:
        client.jobs.create(
            model="no-such-model", dataset=dataset["id"], rewards=["no_such_reward"], hyperparameters={"beta": 0.0}
        )
    assert invalid.value.status == 422 and len(invalid.value.errors) == 2
    assert "unknown base_model 'no-such-model'" in str(invalid.value) and "no_such_reward" in str(invalid.value)
    assert {"numeric_answer", "length_target"} <= {r["name"] for r in client.rewards.list()}
    assert "tiny-random-llama" in [m["name"] for m in client.models.list()]
    with pytest.raises(ApiError) as unauthorised, Client(str(client.http.base_url), "grpo_not-a-key") as stranger:
        stranger.jobs.list()
    assert unauthorised.value.status == 401
