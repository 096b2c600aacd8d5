"""Service functions shared by the API and the worker. Every read takes the tenant and filters by it, so another
tenant's id behaves exactly like an id that does not exist."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import artifacts
from api.models import ApiKey, CheckpointRow, Dataset, Event, Job, MetricRow, Tenant, utcnow
from api.schemas import JobCreate, JobPublic, Progress, RewardRef
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.data import DatasetError, dataset_fields, parse_jsonl
from grpo_core.rewards import RewardSpecError, resolve_rewards
from grpo_core.spec import BASE_MODELS

KEY_PREFIX = "grpo_"


class NotFound(Exception):
    def __init__(self, what: str, object_id: str):
        super().__init__(f"{what} {object_id!r} not found")


class InvalidInput(Exception):
    def __init__(self, message: str, errors: list[str] | None = None, status_code: int = 422):
        super().__init__(message)
        self.errors = errors or []
        self.status_code = status_code


# --- tenants and keys -----------------------------------------------------------------------------------------------


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, tenant_name: str) -> str:
    """Create the tenant if it is new and a key for it. The key is returned once; only its hash is stored."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=key[: len(KEY_PREFIX) + 8], key_hash=_hash_key(key)))
    session.flush()
    return key


class RecentKeys:
    """Keys this process checked lately, by hash, with their tenant: a request with a known key then needs no
    database lookup (and no hop to a worker thread for it). Only keys that passed are kept, for `ttl` seconds,
    so a key removed from the database stops working within that time. Bounded: emptied when full."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._tenants: dict[str, tuple[str, float]] = {}

    def get(self, key: str, ttl: float) -> str | None:
        entry = self._tenants.get(_hash_key(key))
        if entry is None or time.monotonic() - entry[1] > ttl:
            return None
        return entry[0]

    def put(self, key: str, tenant_id: str) -> None:
        if len(self._tenants) >= self.max_entries:
            self._tenants.clear()
        self._tenants[_hash_key(key)] = (tenant_id, time.monotonic())

    def clear(self) -> None:
        self._tenants.clear()


recent_keys = RecentKeys()


def authenticate(session: Session, *, key: str) -> str | None:
    """The tenant id a key belongs to, or None. Compared in constant time against each candidate's hash."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    presented = _hash_key(key)
    candidates = session.execute(
        select(ApiKey.key_hash, ApiKey.tenant_id).where(ApiKey.prefix == key[: len(KEY_PREFIX) + 8])
    )
    for key_hash, tenant_id in candidates:
        if hmac.compare_digest(key_hash, presented):
            return tenant_id
    return None


# --- datasets -------------------------------------------------------------------------------------------------------


def display_name(filename: str) -> str:
    """An uploaded file's name as a label only (files are stored under the dataset id): the last path component,
    without control characters (a NUL byte cannot be stored in PostgreSQL text), at most 200 characters."""
    base = re.split(r"[/\\]", filename)[-1]
    cleaned = "".join(c for c in base if c.isprintable()).strip()
    return cleaned[:200] if cleaned not in ("", ".", "..") else "dataset.jsonl"


def create_dataset(session: Session, *, tenant_id: str, name: str, content: bytes) -> Dataset:
    """Parse and store an uploaded JSONL file; bad lines raise InvalidInput naming each line and why."""
    try:
        rows = parse_jsonl(content.splitlines())
    except DatasetError as error:
        raise InvalidInput(
            f"the JSONL file has {error.total} bad line(s); nothing was stored", [str(e) for e in error.errors]
        ) from None
    dataset = Dataset(
        tenant_id=tenant_id,
        name=display_name(name),
        rows=len(rows),
        fields=sorted(dataset_fields(rows)),
        sha256=hashlib.sha256(content).hexdigest(),
        bytes=len(content),
    )
    session.add(dataset)
    session.flush()
    artifacts.write_atomically(artifacts.dataset_path(dataset.id), content)
    return dataset


def list_datasets(session: Session, *, tenant_id: str) -> list[Dataset]:
    return list(
        session.scalars(select(Dataset).where(Dataset.tenant_id == tenant_id).order_by(Dataset.created_at.desc()))
    )


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset:
    # Only an id of the server's own shape reaches the database: others (path tricks, NUL bytes, which
    # PostgreSQL refuses in text with an error) answer like any other id that does not exist.
    if not artifacts.is_server_id(dataset_id):
        raise NotFound("dataset", dataset_id)
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


# --- jobs -----------------------------------------------------------------------------------------------------------


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
            dataset = get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
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
    returns the job it made the first time. The caller commits, then enqueues."""
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
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
        return existing, False
    record_event(session, job_id=job.id, type="status", data={"status": "queued"})
    return job, True


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    if not artifacts.is_server_id(job_id):  # as in get_dataset
        raise NotFound("job", job_id)
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
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
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status in ("succeeded", "failed", "cancelled"):
        return job
    job.cancel_requested = True
    if job.status == "queued":
        set_status(session, job=job, status="cancelled")
    return job


def set_status(session: Session, *, job: Job, status: str, error: str | None = None, **fields: Any) -> None:
    job.status = status
    if status == "running":
        job.started_at = utcnow()
    if status in ("succeeded", "failed", "cancelled"):
        job.finished_at = utcnow()
    if error is not None:
        job.error = error
    for name, value in fields.items():
        setattr(job, name, value)
    data: dict[str, Any] = {"status": status, "step": job.step, "attempt": job.attempt}
    if error:
        data["error"] = error
    record_event(session, job_id=job.id, type="status", data=data)


# --- leases ---------------------------------------------------------------------------------------------------------


class LeaseLost(Exception):
    """This worker's lease on a job expired and another attempt may own it now: stop without writing."""


def claim_job(session: Session, *, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> int | None:
    """Compare-and-set: take the job if it is not finished, not cancelled, under its attempt limit, and nobody holds
    an unexpired lease on it. Returns the new attempt number, or None when another worker holds it (back off)."""
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(("queued", "running")),
            Job.cancel_requested.is_(False),
            Job.attempt < max_attempts,
            or_(Job.lease_owner.is_(None), Job.lease_expires_at < now),
        )
        .values(attempt=Job.attempt + 1, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Job.attempt)
        .execution_options(synchronize_session=False)
    ).first()
    return claimed[0] if claimed else None


def renew_lease(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when it is no longer ours."""
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).first()
    return renewed is not None


def held_job(session: Session, *, job_id: str, owner: str) -> Job:
    """The job, locked for this transaction where the database can, if `owner` still holds its lease."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.lease_owner != owner:
        raise LeaseLost(f"lease on job {job_id} lost")
    return job


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


# --- metrics, events, checkpoints -------------------------------------------------------------------------------------


def _insert_ignoring_duplicates(session: Session, table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: a replayed step never writes a second row. True when inserted."""
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports no reliable rowcount for INSERT ... ON CONFLICT.
    return session.execute(statement.returning(*table.primary_key.columns)).first() is not None


def record_metrics(session: Session, *, job_id: str, kind: str, step: int, values: dict[str, float]) -> bool:
    inserted = _insert_ignoring_duplicates(
        session,
        MetricRow.__table__,
        {"job_id": job_id, "kind": kind, "step": step, "values": values, "created_at": utcnow()},
    )
    if inserted:
        record_event(session, job_id=job_id, type="metrics", data={"step": step, "kind": kind, "values": values})
    return inserted


def record_checkpoint(session: Session, *, job_id: str, step: int, sha256: str, size: int) -> None:
    inserted = _insert_ignoring_duplicates(
        session,
        CheckpointRow.__table__,
        {"job_id": job_id, "step": step, "sha256": sha256, "bytes": size, "created_at": utcnow()},
    )
    if inserted:
        record_event(session, job_id=job_id, type="checkpoint", data={"step": step, "sha256": sha256, "bytes": size})


def record_event(session: Session, *, job_id: str, type: str, data: dict[str, Any]) -> None:
    session.add(Event(job_id=job_id, type=type, data=data))


def list_metrics(
    session: Session, *, job_id: str, after_step: int, limit_steps: int
) -> tuple[list[MetricRow], int | None]:
    """Metric rows of the next `limit_steps` steps after `after_step` (a step's train and eval rows never split
    across pages), and the cursor for the page after, or None when this page is the last."""
    steps = list(
        session.scalars(
            select(MetricRow.step)
            .where(MetricRow.job_id == job_id, MetricRow.step > after_step)
            .group_by(MetricRow.step)
            .order_by(MetricRow.step)
            .limit(limit_steps + 1)
        )
    )
    if not steps:
        return [], None
    last_step = steps[min(limit_steps, len(steps)) - 1]
    rows = session.scalars(
        select(MetricRow)
        .where(MetricRow.job_id == job_id, MetricRow.step > after_step, MetricRow.step <= last_step)
        .order_by(MetricRow.step, MetricRow.kind.desc())
    )
    return list(rows), last_step if len(steps) > limit_steps else None


def events_after(session: Session, *, job_id: str, after_id: int, limit: int = 500) -> list[Event]:
    return list(
        session.scalars(
            select(Event).where(Event.job_id == job_id, Event.id > after_id).order_by(Event.id).limit(limit)
        )
    )


def list_checkpoints(session: Session, *, job_id: str) -> list[CheckpointRow]:
    return list(
        session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.step))
    )


def get_checkpoint(session: Session, *, job_id: str, step: int | None) -> CheckpointRow:
    """The checkpoint at `step`, or the latest one when step is None."""
    query = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    query = query.where(CheckpointRow.step == step) if step is not None else query.order_by(CheckpointRow.step.desc())
    checkpoint = session.scalars(query.limit(1)).first()
    if checkpoint is None:
        raise NotFound("checkpoint", f"{job_id} step {step if step is not None else 'latest'}")
    return checkpoint
