"""Routing by hardware with the real worker: the fixture's worker is a CPU worker (this machine has no GPU), so a
GPU job stays queued while a CPU job submitted after it is taken and trained."""

import time

import pytest

from tests.e2e.helpers import submit, upload_arithmetic

pytestmark = pytest.mark.slow


def test_a_cpu_worker_leaves_a_gpu_job_queued_and_trains_the_cpu_job_behind_it(running_service):
    client = running_service.client("routing")
    dataset_id = upload_arithmetic(client)
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset_id,
        "rewards": [{"name": "length_target", "params": {"target": 40}}],
        "hyperparameters": {"group_size": 2, "max_new_tokens": 8, "max_steps": 1, "lora": {"r": 4}},
    }
    gpu_job = client.post("/v1/jobs", json={**spec, "hardware": "gpu"})
    assert gpu_job.status_code == 201, gpu_job.text
    cpu_job = submit(client, dataset_id, max_steps=1)
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{cpu_job}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the CPU job was not trained"
        time.sleep(0.2)
    waiting = client.get(f"/v1/jobs/{gpu_job.json()['id']}").json()
    assert waiting["status"] == "queued" and waiting["worker_host"] is None
    # Cancelling a queued job needs no worker.
    assert client.post(f"/v1/jobs/{gpu_job.json()['id']}/cancel").json()["status"] == "cancelled"


def test_a_cpu_job_on_two_processes_trains_through_the_real_worker(running_service):
    client = running_service.client("ranks")
    dataset_id = upload_arithmetic(client)
    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset_id,
        "rewards": [{"name": "length_target", "params": {"target": 40}}],
        "hyperparameters": {
            "group_size": 2,
            "prompts_per_step": 2,
            "processes": 2,
            "max_new_tokens": 8,
            "max_steps": 2,
            "lora": {"r": 4},
        },
    }
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 180
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job on two processes was not trained"
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [row["step"] for row in metrics["data"] if row["kind"] == "train"] == [1, 2]
    assert client.get(f"/v1/jobs/{job_id}/adapter").status_code == 200
