"""A worker's lease on a job: a compare-and-set claim, renewals from the heartbeat, and a check before every write
that the lease is still this worker's. The lease fields live on the job row (service_core/models.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service_core.models import ACTIVE_STATUSES, Job, utcnow


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
            Job.status.in_(ACTIVE_STATUSES),
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
