"""The worker's job runner in-process on a real SQLite database (the Celery wrapper is exercised end to end in
tests/e2e): outcomes are recorded, finished jobs are not run again, failures carry their reason."""

import json

import pytest
from sqlalchemy import func, select

from api import artifacts, services
from api.db import session_scope
from api.models import CheckpointRow, Job, MetricRow, Tenant
from api.schemas import JobCreate
from tests.service_env import clear_service_caches
from worker.runner import run_job


@pytest.fixture
def tenant_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GRPO_DATABASE_URL", raising=False)
    clear_service_caches()
    from api.db import run_migrations

    run_migrations()
    rows = "".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(6))
    with session_scope() as session:
        services.create_api_key(session, tenant_name="t")
        tenant_id = session.scalar(select(Tenant.id))
        dataset = services.create_dataset(session, tenant_id=tenant_id, name="d.jsonl", content=rows.encode())
        dataset_id = dataset.id
    yield tenant_id, dataset_id
    clear_service_caches()


def make_job(tenant_id, dataset_id, **hyperparameters) -> str:
    spec = JobCreate(
        base_model="tiny-random-llama",
        dataset_id=dataset_id,
        rewards=[{"name": "length_target", "params": {"target": 40}}],
        hyperparameters={
            "group_size": 2,
            "max_new_tokens": 6,
            "max_steps": 3,
            "checkpoint_every": 2,
            **hyperparameters,
        },
    )
    with session_scope() as session:
        job, _ = services.create_job(session, tenant_id=tenant_id, spec=spec, idempotency_key=None)
        return job.id


def counts(job_id):
    with session_scope() as session:
        metrics = session.scalar(select(func.count()).where(MetricRow.job_id == job_id))
        checkpoints = session.scalars(
            select(CheckpointRow.step).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.step)
        )
        return metrics, list(checkpoints)


def test_a_job_runs_to_success_and_a_second_delivery_does_nothing(tenant_and_dataset):
    job_id = make_job(*tenant_and_dataset)
    assert run_job(job_id) == "succeeded"
    assert counts(job_id) == (3, [2, 3])
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.step == 3 and job.started_at and job.finished_at and job.worker_host
        finished_at = job.finished_at
    # The same message delivered again: the job is terminal, so nothing runs and nothing is written.
    assert run_job(job_id) == "succeeded"
    with session_scope() as session:
        assert session.get(Job, job_id).finished_at == finished_at
    assert counts(job_id) == (3, [2, 3])
    assert artifacts.checkpoint_archive(job_id, 3).is_file()


def test_a_failing_job_is_marked_failed_with_its_reason(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    artifacts.dataset_path(dataset_id).unlink()  # the shared store lost the file
    assert run_job(job_id) == "failed"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "FileNotFoundError" in job.error and dataset_id in job.error


def test_a_job_cancelled_while_queued_never_trains(tenant_and_dataset):
    tenant_id, dataset_id = tenant_and_dataset
    job_id = make_job(tenant_id, dataset_id)
    with session_scope() as session:
        services.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
    assert run_job(job_id) == "cancelled"
    assert counts(job_id) == (0, [])


def test_a_missing_job_is_dropped(tenant_and_dataset):
    assert run_job("job_" + "0" * 32) == "missing"
