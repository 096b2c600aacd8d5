import hashlib
import io
import tarfile
import time

import pytest
import torch
from peft import PeftModel

from grpo_core.models import load_base_model
from tests.e2e.helpers import read_events, submit, upload_arithmetic

pytestmark = pytest.mark.slow


def load_adapter_archive(content: bytes, tmp_path):
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        names = archive.getnames()
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / names[0].split("/")[0]
    base, _ = load_base_model("tiny-random-llama")
    return PeftModel.from_pretrained(base, folder)


def test_a_job_runs_end_to_end_and_its_adapter_loads(running_service, tmp_path):
    client = running_service.client("e2e")
    job_id = submit(client, upload_arithmetic(client), max_steps=4, checkpoint_every=2)

    events = read_events(client, job_id)
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["event"] == "metrics"] == [1, 2, 3, 4]
    assert [e["data"]["step"] for e in events if e["event"] == "checkpoint"] == [2, 4]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)

    # Resuming the stream after the third event replays exactly the rest.
    assert [e["id"] for e in read_events(client, job_id, last_event_id=ids[2])] == [str(i) for i in ids[3:]]

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["progress"]["fraction"] == 1.0 and job["worker_host"]
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3, 4]

    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [2, 4]
    download = client.get(f"/v1/jobs/{job_id}/adapter")
    assert download.status_code == 200
    digest = hashlib.sha256(download.content).hexdigest()
    assert digest == download.headers["X-Checksum-SHA256"] == checkpoints[-1]["sha256"]
    assert len(download.content) == checkpoints[-1]["bytes"]

    model = load_adapter_archive(download.content, tmp_path)
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b), "LoRA B starts at zero; training moved it"
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()

    early = client.get(f"/v1/jobs/{job_id}/checkpoints/2/adapter")
    assert early.status_code == 200 and hashlib.sha256(early.content).hexdigest() == checkpoints[0]["sha256"]
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/3/adapter").status_code == 404


def test_cancelling_a_running_job_stops_it_within_a_step(running_service, tmp_path):
    client = running_service.client("e2e-cancel")
    job_id = submit(client, upload_arithmetic(client), max_steps=500, checkpoint_every=1000)

    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 2:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    step_at_cancel = client.post(f"/v1/jobs/{job_id}/cancel").json()["progress"]["step"]

    events = read_events(client, job_id)  # ends when the job is terminal
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["progress"]["step"] <= step_at_cancel + 1, "stopped within one step of the request"
    cancelled_event = next(e for e in events if e["event"] == "status" and e["data"]["status"] == "cancelled")
    later_metrics = [e for e in events if e["event"] == "metrics" and int(e["id"]) > int(cancelled_event["id"])]
    assert later_metrics == []
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, job["progress"]["step"] + 1))

    # The stop saved a checkpoint at the last finished step, and it downloads.
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints[-1]["step"] == job["progress"]["step"]
    download = client.get(f"/v1/jobs/{job_id}/adapter")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == checkpoints[-1]["sha256"]
    load_adapter_archive(download.content, tmp_path)
