"""Tenants' shares of the workers, as the operator sets them (`grpo tenants set`, `grpo tenants list`): a weight,
and caps on running and queued jobs of the tenant's own in place of the service's defaults. worker/turns.py reads
the weight and the running cap; POST /v1/jobs reads the queued cap."""

from __future__ import annotations

import dataclasses

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services import InvalidInput, NotFound
from service_core.models import MAX_INT, Job, Tenant
from service_core.settings import Settings

DEFAULT = "default"  # a cap set to this goes back to the service's setting


@dataclasses.dataclass(frozen=True)
class TenantShare:
    """A tenant as `grpo tenants list` shows it: its own caps (None: the service's) and the limits in force."""

    name: str
    weight: float
    max_running_jobs: int | None
    max_queued_jobs: int | None
    running_limit: int
    queued_limit: int
    running: int
    queued: int


def set_tenant(
    session: Session,
    *,
    name: str,
    weight: float | None = None,
    max_running: int | str | None = None,
    max_queued: int | str | None = None,
) -> Tenant:
    """Change what is given, leave the rest: a weight (> 0), and caps (>= 1, or DEFAULT for the service's). A tenant
    that does not exist is refused, not made: a mistyped name would otherwise hold limits nobody uses."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound("tenant", name)
    if weight is not None:
        if not weight > 0 or weight == float("inf"):
            raise InvalidInput(f"weight must be a positive number, not {weight}")
        tenant.weight = weight
    for field, value in (("max_running_jobs", max_running), ("max_queued_jobs", max_queued)):
        if value is None:
            continue
        # At most MAX_INT: the column is the database's 32-bit INTEGER, which PostgreSQL refuses to overflow.
        if value != DEFAULT and (not isinstance(value, int) or not 1 <= value <= MAX_INT):
            raise InvalidInput(f"{field} must be a whole number from 1 to {MAX_INT}, or {DEFAULT!r}; not {value!r}")
        setattr(tenant, field, None if value == DEFAULT else value)
    session.flush()
    return tenant


def list_tenants(session: Session, settings: Settings) -> list[TenantShare]:
    """Every tenant by name, with its weight, caps and jobs running and queued now."""
    counts: dict[tuple[str, str], int] = {
        (tenant_id, status): count
        for tenant_id, status, count in session.execute(
            select(Job.tenant_id, Job.status, func.count())
            .where(Job.status.in_(("running", "queued")))
            .group_by(Job.tenant_id, Job.status)
        )
    }
    return [
        TenantShare(
            name=tenant.name,
            weight=tenant.weight,
            max_running_jobs=tenant.max_running_jobs,
            max_queued_jobs=tenant.max_queued_jobs,
            running_limit=tenant.max_running_jobs or settings.max_running_jobs_per_tenant,
            queued_limit=tenant.max_queued_jobs or settings.max_queued_jobs_per_tenant,
            running=counts.get((tenant.id, "running"), 0),
            queued=counts.get((tenant.id, "queued"), 0),
        )
        for tenant in session.scalars(select(Tenant).order_by(Tenant.name))
    ]
