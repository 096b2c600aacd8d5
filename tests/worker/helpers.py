"""What the worker tests share: a job queued for tiny-random-llama (the database comes from conftest's
tenant_and_dataset)."""

from sqlalchemy import select

from api.schemas import JobCreate
from api.services import jobs as jobs_service
from service_core.db import session_scope
from service_core.models import Usage
from service_core.queue import queue_for


def make_job(tenant_id, dataset_id, rewards=None, **hyperparameters) -> str:
    spec = JobCreate(
        base_model="tiny-random-llama",
        dataset_id=dataset_id,
        rewards=rewards or [{"name": "length_target", "params": {"target": 40}}],
        hyperparameters={
            "group_size": 2,
            "max_new_tokens": 6,
            "max_steps": 3,
            "checkpoint_every": 2,
            **hyperparameters,
        },
    )
    with session_scope() as session:
        job, _ = jobs_service.create_job(session, tenant_id=tenant_id, spec=spec, idempotency_key=None)
        return job.id


def cpu_queue() -> str:
    """The Celery queue of the jobs make_job queues (no GPU, one process): where their turns go."""
    return queue_for("cpu")


def usage_rows(source_id: str) -> list[Usage]:
    """The usage rows of a job or pre-flight, detached."""
    with session_scope() as session:
        rows = list(session.scalars(select(Usage).where(Usage.source_id == source_id)))
        session.expunge_all()
        return rows
