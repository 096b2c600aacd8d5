"""Acceptance for forks, through the real API server and Celery worker: a parent trains 4 steps, a fork starts from
its step-2 checkpoint with another reward, and its step-0 adapter is the parent's step-2 adapter bit for bit."""

import io
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from grpo_core.checkpoint import load_trainer_state, read_checkpoint
from tests.e2e.helpers import read_events, submit, upload_arithmetic

pytestmark = pytest.mark.slow

ADAPTER = "adapter_model.safetensors"


def adapter_bytes(client, job_id: str, step: int) -> bytes:
    """The adapter weights file inside the checkpoint's download."""
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/{step}/adapter")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/" + ADAPTER))
        return archive.extractfile(member).read()  # type: ignore[union-attr]


def optimizer_state(running_service, job_id: str, step: int) -> dict:
    folder = Path(running_service.env["GRPO_DATA_DIR"]) / "artifacts" / "jobs" / job_id / "checkpoints"
    return load_trainer_state(read_checkpoint(folder / f"step-{step:06d}"))["optimizer"]


def test_a_fork_starts_from_the_parents_checkpoint_and_both_show_the_lineage(running_service):
    client = running_service.client("e2e-forks")
    dataset_id = upload_arithmetic(client)
    # Groups of 4 on 2 prompts: the length reward gives mixed groups, so the parent's adapter really trains.
    parent = submit(client, dataset_id, max_steps=4, checkpoint_every=1, group_size=4, prompts_per_step=2)
    assert [e["data"]["status"] for e in read_events(client, parent) if e["event"] == "status"][-1] == "succeeded"

    spec = {
        "base_model": "tiny-random-llama",
        "dataset_id": dataset_id,
        "rewards": [{"name": "length_target", "params": {"target": 60}}],  # not the parent's rewards
        "hyperparameters": {
            "group_size": 2,
            "max_new_tokens": 8,
            "lora": {"r": 4},
            "max_steps": 2,
            "checkpoint_every": 1,
            "learning_rate": 1e-4,
            "seed": 3,
        },
        "init_from": {"job_id": parent, "step": 2, "optimizer": True},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    fork = response.json()["id"]
    events = read_events(client, fork)
    assert [e["data"]["status"] for e in events if e["event"] == "status"] == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["event"] == "checkpoint"] == [0, 1, 2]

    # Step 0 of the fork is the parent's step 2, bit for bit; its own training then moves it.
    fork_start, parent_step_2 = adapter_bytes(client, fork, 0), adapter_bytes(client, parent, 2)
    assert fork_start == parent_step_2
    start, parents = load_safetensors(fork_start), load_safetensors(parent_step_2)
    assert start.keys() == parents.keys() and all(torch.equal(start[k], parents[k]) for k in start)
    fork_end = load_safetensors(adapter_bytes(client, fork, 2))
    assert any(not torch.equal(start[k], fork_end[k]) for k in start)
    assert any(parents[k].any() for k in parents if "lora_B" in k), "LoRA B starts at 0: the parent trained it"
    # optimizer: true carried the parent's AdamW moments into the fork's step 0.
    carried, saved = optimizer_state(running_service, fork, 0), optimizer_state(running_service, parent, 2)
    assert carried["state"].keys() == saved["state"].keys() and carried["state"]
    for index, moments in saved["state"].items():
        assert all(torch.equal(value, carried["state"][index][name]) for name, value in moments.items())

    shown_fork, shown_parent = client.get(f"/v1/jobs/{fork}").json(), client.get(f"/v1/jobs/{parent}").json()
    assert (shown_fork["parent_job_id"], shown_fork["parent_step"], shown_fork["parent_optimizer"]) == (parent, 2, True)
    assert shown_fork["children"] == [] and shown_fork["children_count"] == 0
    assert shown_parent["parent_job_id"] is None and shown_parent["children_count"] == 1
    assert shown_parent["children"] == [{"id": fork, "step": 2, "status": "succeeded"}]

    # Invalid forks are refused at submit, each naming what is wrong; nothing is queued.
    refusals = {
        "init_from.step: job": {**spec, "init_from": {"job_id": parent, "step": 7}},
        "hyperparameters.lora.r:": {**spec, "hyperparameters": {**spec["hyperparameters"], "lora": {"r": 8}}},
        "base_model:": {**spec, "base_model": "smollm2-135m-instruct"},
    }
    for expected, invalid in refusals.items():
        response = client.post("/v1/jobs", json=invalid)
        assert response.status_code == 422 and any(e.startswith(expected) for e in response.json()["errors"])
    stranger = running_service.client("e2e-forks-stranger")
    response = stranger.post("/v1/jobs", json={**spec, "dataset_id": upload_arithmetic(stranger)})
    assert response.status_code == 422 and response.json()["errors"] == [f"init_from.job_id: job {parent!r} not found"]
    assert client.get(f"/v1/jobs/{parent}").json()["children_count"] == 1
