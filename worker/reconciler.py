"""Finds jobs the broker lost and queues them again. Runs as a thread in every worker process: each pass is a
set of compare-and-set updates, so any number of workers can run it at once without double-queueing a job.

- A running job whose lease expired lost its worker (killed, out of memory, machine gone). It goes back to
  `queued` and a turn goes to its queue; the next attempt resumes from its last checkpoint. A job that has used all
  of its attempts (GRPO_MAX_ATTEMPTS) is marked failed instead: a job that kills its worker every time is never
  retried forever.
- A queue with a job queued longer than GRPO_REQUEUE_QUEUED_AFTER_SECONDS (since it was queued or last found here)
  may have lost its turns (a broker restarted without persistence, an API killed between commit and send): it gets
  one turn per pass. A turn too many is harmless: it finds nothing to start, or the lease lets only one worker train
  a job; and the worker that starts a job passes a turn on while jobs still wait, so one turn reaches every idle
  worker.
- Pre-flights: one still running past its deadline_at lost its worker (or hung) and is failed; one queued longer
  than GRPO_REQUEUE_QUEUED_AFTER_SECONDS is sent again (its claim is a compare-and-set, so it runs once).
- Now and then it expires old checkpoints past GRPO_CHECKPOINT_RETENTION_DAYS (worker/retention.py).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from service_core import job_state
from service_core.db import session_scope
from service_core.models import Job, Preflight, utcnow
from service_core.queue import enqueue_preflight, queue_for, send_turn
from service_core.settings import get_settings
from worker.retention import EXPIRE_EVERY_SECONDS, expire_checkpoints

log = logging.getLogger(__name__)


def reconcile_once() -> list[str]:
    """One pass; returns the queues sent a turn, then the ids of the pre-flights sent again."""
    settings = get_settings()
    now = utcnow()
    to_send: set[str] = set()
    with session_scope() as session:
        expired = session.scalars(select(Job).where(Job.status == "running", Job.lease_expires_at < now))
        for job in expired:
            # Compare-and-set on the lease we saw, so a worker that renewed in the meantime keeps its job.
            taken = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.lease_owner == job.lease_owner, Job.lease_expires_at < now)
                .values(lease_owner=None, lease_expires_at=None, enqueued_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            ).first()
            if taken is None:
                continue
            session.refresh(job)
            if job.attempt >= settings.max_attempts:
                reason = (
                    f"the worker running this job stopped without finishing it {job.attempt} times (killed, "
                    f"e.g. out of memory); gave up after {settings.max_attempts} attempts (GRPO_MAX_ATTEMPTS)"
                )
                job_state.set_status(session, job=job, status="failed", error=reason)
                log.warning("job %s failed: %s", job.id, reason)
            else:
                job_state.set_status(session, job=job, status="queued")
                to_send.add(queue_for(job.hardware, processes=job.processes))
                log.warning("job %s lost its worker (attempt %d); queued again", job.id, job.attempt)
        stale_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
        stale = session.scalars(
            select(Job).where(Job.status == "queued", Job.cancel_requested.is_(False), Job.enqueued_at < stale_before)
        )
        for job in stale:
            sent = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == "queued", Job.enqueued_at == job.enqueued_at)
                .values(enqueued_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            ).first()
            if sent is not None:
                to_send.add(queue_for(job.hardware, processes=job.processes))
    for queue in sorted(to_send):  # after the commit, like every send
        send_turn(queue)
    return sorted(to_send) + reconcile_preflights()


def reconcile_preflights() -> list[str]:
    """Fail the pre-flights running past their deadline, send again those queued too long; returns the ids sent."""
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        session.execute(
            update(Preflight)
            .where(Preflight.status == "running", Preflight.deadline_at < now)
            .values(
                status="failed",
                finished_at=now,
                error="the worker running this pre-flight stopped without finishing it (killed, or stuck); "
                "submit it again",
            )
            .execution_options(synchronize_session=False)
        )
        stale_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
        to_send = session.execute(
            update(Preflight)
            .where(Preflight.status == "queued", Preflight.enqueued_at < stale_before)
            .values(enqueued_at=now)
            .returning(Preflight.id, Preflight.hardware)
            .execution_options(synchronize_session=False)
        ).all()
    for preflight_id, hardware in to_send:
        enqueue_preflight(preflight_id, hardware)
    return [preflight_id for preflight_id, _hardware in to_send]


class Reconciler(threading.Thread):
    def __init__(self, every_seconds: float):
        super().__init__(daemon=True, name="reconciler")
        self.every_seconds = every_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        expired_at: float | None = None
        while not self.stopped.wait(self.every_seconds):
            try:
                reconcile_once()
            except Exception:  # the database or broker is down for a moment: try again next pass
                log.exception("reconcile pass failed")
            if expired_at is None or time.monotonic() - expired_at >= EXPIRE_EVERY_SECONDS:
                expired_at = time.monotonic()
                try:
                    expire_checkpoints()
                except Exception:  # as above; files it removed before failing are finished next time
                    log.exception("checkpoint expiry failed")
