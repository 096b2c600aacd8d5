"""Guardrails end to end in the worker's runner, on a real SQLite database and tiny-random-llama: each stop_when
condition, driven by a reward or a setting that makes it fire, ends the job with the stated status, reason and
adapter (the spec's checks at submit are in tests/api/test_guardrails.py)."""

import json

import pytest
from safetensors.torch import load_file
from sqlalchemy import select

from api.schemas import JobCreate
from api.services import datasets as datasets_service
from api.services import jobs as jobs_service
from grpo_core.checkpoint import list_checkpoints
from service_core import artifacts
from service_core.db import session_scope
from service_core.models import CheckpointRow, Job, MetricRow
from worker.runner import run_job

LENGTH = [{"name": "length_target", "params": {"target": 40}}]


def submit(tenant_id, dataset_id, stop_when, rewards=LENGTH, eval_dataset_id=None, **hyperparameters):
    spec = JobCreate(
        base_model="tiny-random-llama",
        dataset_id=dataset_id,
        eval_dataset_id=eval_dataset_id,
        rewards=rewards,
        hyperparameters={"group_size": 2, "max_new_tokens": 6, "max_steps": 8, **hyperparameters},
        stop_when=stop_when,
    )
    with session_scope() as session:
        job, _ = jobs_service.create_job(session, tenant_id=tenant_id, spec=spec, idempotency_key=None)
        return job.id


def held_out(tenant_id):
    rows = "".join(json.dumps({"prompt": f"What is {i} + 2?", "answer": i + 2}) + "\n" for i in range(3))
    with session_scope() as session:
        return datasets_service.create_dataset(session, tenant_id=tenant_id, name="e.jsonl", content=rows.encode()).id


def finished(job_id):
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        job = session.get(Job, job_id)
        steps = session.scalars(select(MetricRow.step).where(MetricRow.job_id == job_id, MetricRow.kind == "train"))
        checkpoints = session.scalars(select(CheckpointRow.step).where(CheckpointRow.job_id == job_id))
        return job.status, job.stopped_early, job.adapter_step, sorted(steps), sorted(checkpoints)


@pytest.mark.parametrize(
    ("stop_when", "settings", "reason", "step"),
    [
        # LoRA's B starts at 0, so step 1's KL is 0; with a high learning rate every later step's is above 1e-9.
        ({"kl_above": 1e-9, "kl_steps": 2}, {"beta": 0.1, "learning_rate": 0.05}, "kl_above", 3),
        # A window of one step: the first step whose reward is below the best so far by more than 1e-6 stops it.
        ({"reward_drop": 1e-6, "reward_window": 1}, {}, "reward_drop", None),
        # max_new_tokens 2: tiny-random-llama never ends an answer so soon, so every completion is cut.
        ({"truncated_steps": 2}, {"max_new_tokens": 2}, "truncated_steps", 2),
    ],
)
def test_a_train_side_guardrail_ends_the_job_succeeded_naming_it(
    tenant_and_dataset,  # noqa: F811
    stop_when,
    settings,
    reason,
    step,
):
    job_id = submit(*tenant_and_dataset, stop_when, **settings)
    status, stopped_early, adapter_step, steps, checkpoints = finished(job_id)
    assert status == "succeeded" and stopped_early["reason"] == reason
    assert step is None or stopped_early["step"] == step
    stopped_at = stopped_early["step"]
    assert stopped_at < 8 and steps == list(range(1, stopped_at + 1)), "no step after the stop"
    assert stopped_early["message"] and stopped_early["values"]
    # No eval set: the adapter is the last checkpoint, the stop's own.
    assert adapter_step is None and checkpoints[-1] == stopped_at


def test_flat_groups_end_the_job(tenant_and_dataset):  # noqa: F811
    # The tiny model never writes the exact answer, so every completion scores 0: every group is flat.
    job_id = submit(*tenant_and_dataset, {"flat_steps": 3}, rewards=[{"name": "exact_match"}])
    status, stopped_early, _adapter_step, steps, _ = finished(job_id)
    assert (status, stopped_early["reason"], stopped_early["step"], steps) == ("succeeded", "flat_steps", 3, [1, 2, 3])
    assert stopped_early["values"]["zero_std_group_fraction"] == 1.0


def test_early_stopping_keeps_the_best_evaluations_adapter(tenant_and_dataset, tmp_path):  # noqa: F811
    tenant_id, dataset_id = tenant_and_dataset
    eval_id = held_out(tenant_id)
    # No later evaluation can beat the one before training by 1000: patience 2 ends the job at step 2, and the best
    # adapter is the untrained one of step 0.
    job_id = submit(
        tenant_id,
        dataset_id,
        {"eval_patience": 2, "eval_min_delta": 1000},
        eval_dataset_id=eval_id,
        eval_every=1,
        learning_rate=0.05,
    )
    status, stopped_early, adapter_step, steps, checkpoints = finished(job_id)
    assert (status, stopped_early["reason"], stopped_early["step"], steps) == ("succeeded", "eval_patience", 2, [1, 2])
    assert adapter_step == 0 and checkpoints == [0, 2]
    assert stopped_early["values"]["best_step"] == 0.0
    # The adapter the job serves is step 0's: LoRA's B is all zeros there, and no longer at step 2.
    with session_scope() as session:
        job = session.get(Job, job_id)
    (best_checkpoint,) = [c for c in list_checkpoints(artifacts.job_dir(job.id) / "checkpoints") if c.step == 0]
    best = load_file(best_checkpoint.path / "adapter_model.safetensors")
    assert all(not tensor.any() for name, tensor in best.items() if "lora_B" in name)


def test_last_adapter_when_asked(tenant_and_dataset, tmp_path):  # noqa: F811
    tenant_id, dataset_id = tenant_and_dataset
    eval_id = held_out(tenant_id)
    job_id = submit(
        tenant_id,
        dataset_id,
        {"eval_patience": 1, "eval_min_delta": 1000, "adapter": "last"},
        eval_dataset_id=eval_id,
        eval_every=1,
    )
    _status, stopped_early, adapter_step, steps, checkpoints = finished(job_id)
    assert stopped_early["step"] == 1 and adapter_step is None and checkpoints == [1]
