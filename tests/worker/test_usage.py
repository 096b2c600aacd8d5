"""A tenant's usage as the worker records it: a job's steps add up to what its metric rows report, a step run again
adds nothing, and a pre-flight's run is counted once (worker/writes.py record_usage)."""

import pytest
from sqlalchemy import select

from service_core.db import session_scope
from service_core.models import Job, MetricRow
from tests.worker.helpers import make_job, usage_rows
from worker import leases, writes
from worker.runner import DatabaseReporter, run_job

FIGURES = ("tokens_sampled", "tokens_trained", "reward_calls", "reward_seconds")


def test_a_jobs_usage_adds_up_its_steps_metrics(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, max_steps=3, num_iterations=2, prompts_per_step=2)
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        steps = [
            r.values
            for r in session.scalars(select(MetricRow).where(MetricRow.job_id == job_id, MetricRow.kind == "train"))
        ]
    (row,) = usage_rows(job_id)  # one day, one hardware class
    assert (row.tenant_id, row.kind, row.hardware) == (tenant_id, "job", "cpu")
    assert row.compute_seconds == pytest.approx(sum(step["step_seconds"] for step in steps)) and row.compute_seconds > 0
    for key in FIGURES:
        assert getattr(row, key) == pytest.approx(sum(step[key] for step in steps)), key
    assert row.tokens_sampled > 0 and row.tokens_trained == 2 * row.tokens_sampled  # two updates per step
    assert row.reward_calls == 3 * 2 * 2  # steps x prompts per step x group size, one reward function


def test_a_step_recorded_again_adds_no_usage(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id, processes=1)
    with session_scope() as session:
        assert leases.claim_job(session, job_id=job_id, owner="w", lease_seconds=60, max_attempts=3) == 1
    reporter = DatabaseReporter(job_id, "w", heartbeat=None, group_size=2)  # type: ignore[arg-type]
    metrics = {"step_seconds": 2.0, "tokens_sampled": 10.0, "tokens_trained": 20.0, "reward_calls": 4.0}
    reporter.on_step(1, {**metrics, "reward_seconds": 0.5})
    reporter.on_step(1, {**metrics, "reward_seconds": 0.5, "step_seconds": 9.0})  # the same step, resumed
    reporter.on_step(2, {**metrics, "reward_seconds": float("nan")})  # a figure that is not finite counts 0
    (row,) = usage_rows(job_id)
    assert (row.compute_seconds, row.tokens_sampled, row.tokens_trained) == (4.0, 20, 40)
    assert (row.reward_calls, row.reward_seconds) == (8, 0.5)
    with session_scope() as session:
        assert session.get(Job, job_id).steps_computed == 3  # computed three times, billed for two steps


@pytest.mark.unit
def test_step_usage_counts_every_process_of_a_step():
    usage = writes.step_usage({"step_seconds": 3.0, "tokens_sampled": 5, "reward_errors": 1}, processes=2)
    assert usage == {
        "compute_seconds": 6.0,
        "tokens_sampled": 5.0,
        "tokens_trained": 0.0,
        "reward_calls": 0.0,
        "reward_seconds": 0.0,
    }
