"""Pre-flights: a job spec checked as a job's is, then the base model sampled on its first prompts and one step
timed on a worker (worker/preflight.py), with the figures and verdict kept for the tenant to read by id."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from api.schemas import JobCreate, PreflightPublic, PreflightResult, StoredRewardRef
from api.services import NotFound
from api.services import jobs as jobs_service
from service_core import artifacts
from service_core.models import ACTIVE_STATUSES, Dataset, Preflight, utcnow
from service_core.settings import get_settings

RETRY_AFTER_SECONDS = 30  # a pre-flight loads a model and runs a step or two: polling sooner learns nothing


def create_preflight(session: Session, *, tenant_id: str, spec: JobCreate) -> Preflight:
    """Validate the spec exactly as POST /v1/jobs does (the same 422s), refuse past the tenant's limit of active
    pre-flights (429), and insert a queued pre-flight. The caller commits, then enqueues."""
    config = jobs_service.validate_job_spec(session, tenant_id=tenant_id, spec=spec)
    settings = get_settings()
    active = session.scalar(
        select(func.count()).where(Preflight.tenant_id == tenant_id, Preflight.status.in_(ACTIVE_STATUSES))
    )
    if active and active >= settings.max_preflights_per_tenant:
        raise HTTPException(
            status_code=429,
            detail=f"too many pre-flights: this tenant has {active} queued or running, the limit is "
            f"{settings.max_preflights_per_tenant} (GRPO_MAX_PREFLIGHTS_PER_TENANT); retry after "
            f"{RETRY_AFTER_SECONDS} s",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    rows = session.scalar(select(Dataset.rows).where(Dataset.id == spec.dataset_id))
    preflight = Preflight(
        tenant_id=tenant_id,
        base_model=spec.base_model,
        hardware=jobs_service.job_hardware(spec),
        dataset_id=spec.dataset_id,
        eval_dataset_id=spec.eval_dataset_id,
        rewards=[r.model_dump() for r in spec.rewards],
        hyperparameters=config.to_dict(),
        prompts=min(settings.preflight_prompts, rows or settings.preflight_prompts),
        status="queued",
        enqueued_at=utcnow(),
    )
    session.add(preflight)
    session.flush()
    return preflight


_PREFLIGHT_OF_TENANT = select(Preflight).where(
    Preflight.id == bindparam("preflight_id"), Preflight.tenant_id == bindparam("tenant_id")
)


def get_preflight(session: Session, *, tenant_id: str, preflight_id: str) -> Preflight:
    """Another tenant's pre-flight answers exactly as one that does not exist."""
    if not artifacts.is_server_id(preflight_id):
        raise NotFound("pre-flight", preflight_id)
    preflight = session.scalar(_PREFLIGHT_OF_TENANT, {"preflight_id": preflight_id, "tenant_id": tenant_id})
    if preflight is None:
        raise NotFound("pre-flight", preflight_id)
    return preflight


def list_preflights(session: Session, *, tenant_id: str, limit: int, offset: int) -> tuple[list[Preflight], int]:
    query = select(Preflight).where(Preflight.tenant_id == tenant_id)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    preflights = session.scalars(query.order_by(Preflight.created_at.desc(), Preflight.id).limit(limit).offset(offset))
    return list(preflights), count or 0


def preflight_public(preflight: Preflight) -> PreflightPublic:
    return PreflightPublic(
        id=preflight.id,
        status=preflight.status,  # type: ignore[arg-type]
        base_model=preflight.base_model,
        hardware=preflight.hardware,
        dataset_id=preflight.dataset_id,
        eval_dataset_id=preflight.eval_dataset_id,
        rewards=[StoredRewardRef(**r) for r in preflight.rewards],
        hyperparameters=preflight.hyperparameters,
        prompts=preflight.prompts,
        result=PreflightResult.model_validate(preflight.result) if preflight.result is not None else None,
        worker_host=preflight.worker_host,
        error=preflight.error,
        created_at=preflight.created_at,
        started_at=preflight.started_at,
        finished_at=preflight.finished_at,
    )
