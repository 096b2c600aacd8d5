"""Whose job a worker starts next: tenants take turns, whatever the number of jobs each has queued.

Jobs wait in the database. The broker carries turns: a `grpo.run_next_job` message for one Celery queue is one
worker's chance to start one job there. The worker that takes a turn reads the jobs queued on that queue and tries
them in `turn_order`; the first whose lease it claims is the job it runs, and a turn that claims none ends idle.

The order, over the queued jobs (not cancelled) of the turn's queue whose tenant runs fewer jobs than its cap:

1. the tenant with the fewest running jobs per unit of weight first (its jobs running on any queue, divided by its
   weight), so a tenant of weight 2 holds two workers for another's one;
2. between tenants equal on that, the one whose last turn is the oldest, and a tenant never served before all;
3. within a tenant, its oldest job (created_at, then id).

The cap and the recorded turn are settled again, under a lock on the tenant's row, in the transaction that claims
the job (`take_turn`): two workers choosing at once never run more of a tenant's jobs than its cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service_core.models import Job, Tenant, utcnow
from service_core.queue import queue_for
from service_core.settings import Settings

NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Waiting:
    """A queued job, as the order reads it."""

    job_id: str
    tenant_id: str
    created_at: datetime


@dataclass(frozen=True)
class Share:
    """A tenant, as the order reads it."""

    weight: float  # > 0: its share of the workers against a tenant of weight 1
    running: int  # its jobs running now, on every queue
    max_running: int  # its cap on running jobs, the service's default where it has none of its own
    last_turn_at: datetime | None  # when one of its jobs last took a turn; None: never


def turn_order(waiting: Iterable[Waiting], shares: Mapping[str, Share]) -> list[Waiting]:
    """The jobs a turn tries, in order (see the module's docstring). Each tenant's first job comes before any
    tenant's second, so a claim lost to another worker moves on to the next tenant; a tenant offers no more jobs
    than it has room for under its cap. `shares` holds every tenant of `waiting`."""
    by_tenant: dict[str, list[Waiting]] = {}
    for job in sorted(waiting, key=lambda job: (job.created_at, job.job_id)):
        by_tenant.setdefault(job.tenant_id, []).append(job)
    room = {tenant: shares[tenant].max_running - shares[tenant].running for tenant in by_tenant}
    candidates = {tenant: jobs[: room[tenant]] for tenant, jobs in by_tenant.items() if room[tenant] > 0}

    def served(tenant: str) -> tuple:
        share = shares[tenant]
        return (
            share.running / share.weight,
            share.last_turn_at or NEVER,
            candidates[tenant][0].created_at,
            tenant,
        )

    tenants = sorted(candidates, key=served)
    depth = max((len(jobs) for jobs in candidates.values()), default=0)
    return [candidates[tenant][rank] for rank in range(depth) for tenant in tenants if rank < len(candidates[tenant])]


def max_running(tenant_limit: int | None, settings: Settings) -> int:
    """A tenant's cap on running jobs: its own where the operator set one, else GRPO_MAX_RUNNING_JOBS_PER_TENANT."""
    return settings.max_running_jobs_per_tenant if tenant_limit is None else tenant_limit


def waiting_on(session: Session, queue: str) -> list[Waiting]:
    """The jobs queued (and not being cancelled) whose Celery queue is `queue`. A job's queue follows from its
    hardware and its process count, which lives in its hyperparameters, so the match is made here rather than in
    SQL."""
    rows = session.execute(
        select(Job.id, Job.tenant_id, Job.created_at, Job.hardware, Job.hyperparameters).where(
            Job.status == "queued", Job.cancel_requested.is_(False)
        )
    )
    return [
        Waiting(job_id, tenant_id, created_at)
        for job_id, tenant_id, created_at, hardware, hyperparameters in rows
        if queue_for(hardware, processes=int(hyperparameters.get("processes", 1))) == queue
    ]


def tenant_shares(session: Session, tenant_ids: Iterable[str], settings: Settings) -> dict[str, Share]:
    """What turn_order reads of these tenants, from the database now."""
    ids = set(tenant_ids)
    if not ids:
        return {}
    running = dict(
        session.execute(
            select(Job.tenant_id, func.count())
            .where(Job.status == "running", Job.tenant_id.in_(ids))
            .group_by(Job.tenant_id)
        ).all()
    )
    rows = session.execute(
        select(Tenant.id, Tenant.weight, Tenant.max_running_jobs, Tenant.last_turn_at).where(Tenant.id.in_(ids))
    )
    return {
        tenant_id: Share(weight, running.get(tenant_id, 0), max_running(limit, settings), last_turn_at)
        for tenant_id, weight, limit, last_turn_at in rows
    }


def next_jobs(session: Session, queue: str, settings: Settings) -> list[Waiting]:
    """The jobs a turn on `queue` tries, in order; empty when none can start (nothing queued, or every tenant with
    queued jobs is at its cap)."""
    waiting = waiting_on(session, queue)
    return turn_order(waiting, tenant_shares(session, (job.tenant_id for job in waiting), settings))


def take_turn(session: Session, *, tenant_id: str, settings: Settings) -> bool:
    """In the transaction that claims one of the tenant's jobs: lock the tenant's row, record its turn, and say
    whether it is below its cap on running jobs. On False the caller rolls back (no turn is recorded). The lock is
    taken first (a write: the row on PostgreSQL, the database on SQLite), so the count read after it sees every claim
    committed before, and a concurrent claim for the same tenant waits for this one."""
    limit = session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(last_turn_at=utcnow())
        .returning(Tenant.max_running_jobs)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    running = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status == "running"))
    return (running or 0) < max_running(limit, settings)
