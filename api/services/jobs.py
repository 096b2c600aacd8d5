"""Jobs: validating a spec, creating, reading, listing and cancelling jobs, and every status change with the
event that records it (the worker records its outcomes through set_status too)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import artifacts
from api.models import TERMINAL_STATUSES, Event, Job, utcnow
from api.schemas import JobCreate, JobPublic, Progress, RewardRef
from api.services import InvalidInput, NotFound
from api.services import datasets as datasets_service
from api.services import progress as progress_service
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.rewards import RewardSpecError, resolve_rewards
from grpo_core.spec import BASE_MODELS


def validate_job_spec(session: Session, *, tenant_id: str, spec: JobCreate) -> GRPOConfig:
    """Check a spec against the catalog, the datasets, the ranges and the reward registry before anything is
    queued. Raises InvalidInput listing every problem."""
    problems: list[str] = []
    if spec.base_model not in BASE_MODELS:
        problems.append(f"unknown base_model {spec.base_model!r}; valid: {', '.join(sorted(BASE_MODELS))}")
    fields: set[str] | None = None
    for key in ("dataset_id", "eval_dataset_id"):
        dataset_id = getattr(spec, key)
        if dataset_id is None:
            continue
        try:
            dataset = datasets_service.get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
        except NotFound as error:
            problems.append(f"{key}: {error}")
        else:
            fields = set(dataset.fields) if fields is None else fields & set(dataset.fields)
    config = None
    try:
        config = GRPOConfig.from_dict(spec.hyperparameters)
    except (ValueError, TypeError) as error:
        problems.append(str(error))
    try:
        resolve_rewards([RewardSpec(r.name, r.weight, r.params) for r in spec.rewards], fields)
    except RewardSpecError as error:
        problems.extend(error.problems)
    if problems:
        raise InvalidInput("the job spec is invalid; nothing was queued", problems)
    assert config is not None
    return config


def create_job(session: Session, *, tenant_id: str, spec: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """Validate and insert a queued job; returns (job, created). The same Idempotency-Key from the same tenant
    with the same spec returns the job it made the first time; with another spec it is a 409 (as payment APIs
    answer a reused key), never the first job in place of the one asked for. The caller commits, then enqueues."""
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replayed(existing, spec, idempotency_key), False
    config = validate_job_spec(session, tenant_id=tenant_id, spec=spec)
    job = Job(
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        base_model=spec.base_model,
        dataset_id=spec.dataset_id,
        eval_dataset_id=spec.eval_dataset_id,
        rewards=[r.model_dump() for r in spec.rewards],
        hyperparameters=config.to_dict(),
        max_steps=config.max_steps,
        status="queued",
    )
    job.enqueued_at = utcnow()
    session.add(job)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert: return its job.
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _replayed(existing, spec, idempotency_key), False
    record_event(session, job_id=job.id, type="status", data={"status": "queued"})
    return job, True


def _replayed(job: Job, spec: JobCreate, idempotency_key: str) -> Job:
    """`job`, made earlier under `idempotency_key`, if `spec` asks for that same job; InvalidInput (409) naming
    what differs otherwise. Hyperparameters compare with their defaults filled in, as the job stores them."""
    try:
        hyperparameters = GRPOConfig.from_dict(spec.hyperparameters).to_dict()
    except (ValueError, TypeError):
        hyperparameters = spec.hyperparameters  # invalid now, so unlike the stored (valid) ones
    requested = {
        "base_model": spec.base_model,
        "dataset_id": spec.dataset_id,
        "eval_dataset_id": spec.eval_dataset_id,
        "rewards": [reward.model_dump() for reward in spec.rewards],
        "hyperparameters": hyperparameters,
    }
    differing = [name for name, value in requested.items() if getattr(job, name) != value]
    if differing:
        raise InvalidInput(
            f"Idempotency-Key {idempotency_key!r} was already used for job {job.id} with another spec "
            f"({', '.join(differing)} differ); use a new key for a new job",
            status_code=409,
        )
    return job


# Built once: building the statement (the ORM's comparisons, then its cache key) cost a third of the query.
_JOB_OF_TENANT = select(Job).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    if not artifacts.is_server_id(job_id):  # as in get_dataset
        raise NotFound("job", job_id)
    job = session.scalar(_JOB_OF_TENANT, {"job_id": job_id, "tenant_id": tenant_id})
    if job is None:
        raise NotFound("job", job_id)
    return job


def list_jobs(
    session: Session, *, tenant_id: str, status: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(jobs), count or 0


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops before its next step (the worker
    checks between steps). Cancelling a finished job changes nothing."""
    if not artifacts.is_server_id(job_id):
        raise NotFound("job", job_id)
    # Flag first, read after: the UPDATE holds the write lock (SQLite) or the row (PostgreSQL) until the commit, so
    # the step read below is the last one the worker finished before the request took effect, and the job ends at
    # most one step later. Reading first let the worker finish steps between the read and the write.
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    job = session.scalar(
        _JOB_OF_TENANT.execution_options(populate_existing=True), {"job_id": job_id, "tenant_id": tenant_id}
    )
    if job is None:
        raise NotFound("job", job_id)
    if job.status == "queued":
        set_status(session, job=job, status="cancelled")
    return job


def set_status(session: Session, *, job: Job, status: str, error: str | None = None, **fields: Any) -> None:
    job.status = status
    if status == "running":
        job.started_at = utcnow()
    if status in TERMINAL_STATUSES:
        job.finished_at = utcnow()
    if error is not None:
        job.error = error
    for name, value in fields.items():
        setattr(job, name, value)
    data: dict[str, Any] = {"status": status, "step": job.step, "attempt": job.attempt}
    if error:
        data["error"] = error
    record_event(session, job_id=job.id, type="status", data=data)


def record_event(session: Session, *, job_id: str, type: str, data: dict[str, Any]) -> None:
    """Add an event to the job's stream. Numbers that are not finite (NaN, ±Infinity) are stored as null: JSON
    has no such numbers (progress.finite says why)."""
    session.add(Event(job_id=job_id, type=type, data=progress_service.finite(data)))


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        base_model=job.base_model,
        dataset_id=job.dataset_id,
        eval_dataset_id=job.eval_dataset_id,
        rewards=[RewardRef(**r) for r in job.rewards],
        hyperparameters=job.hyperparameters,
        progress=Progress(step=job.step, max_steps=job.max_steps, fraction=round(job.step / job.max_steps, 4)),
        cancel_requested=job.cancel_requested,
        worker_host=job.worker_host,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
