"""Checkpoint retention: a finished job keeps every checkpoint for GRPO_CHECKPOINT_RETENTION_DAYS after it ended, then
only its adapter (the checkpoint GET /v1/jobs/{id}/adapter serves: adapter_step when a guardrail chose the best
evaluation's, else the last) and the checkpoints forks start from. The reconciler thread of every worker calls
expire_checkpoints now and then; each checkpoint goes in a compare-and-set DELETE, so workers running it at once
remove each one once, and a pass that stopped half-way is finished by the next."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from service_core import artifacts
from service_core.db import session_scope
from service_core.models import TERMINAL_STATUSES, CheckpointRow, Job, utcnow
from service_core.settings import get_settings

log = logging.getLogger(__name__)

# Retention is counted in days, so looking rarely is enough; the scan reads every old job's checkpoint rows.
EXPIRE_EVERY_SECONDS = 3600.0


def expired_checkpoints(rows: list[tuple[str, int, int | None]]) -> list[tuple[str, int]]:
    """(job_id, step) of the checkpoints that are not their job's adapter, from rows of (job_id, step, adapter_step)
    of finished jobs: adapter_step where a guardrail set it, else the job's last step."""
    steps: dict[str, list[int]] = {}
    adapter_steps: dict[str, int | None] = {}
    for job_id, step, adapter_step in rows:
        steps.setdefault(job_id, []).append(step)
        adapter_steps[job_id] = adapter_step
    expired = []
    for job_id, job_steps in steps.items():
        adapter_step = adapter_steps[job_id]
        kept = max(job_steps) if adapter_step is None else adapter_step
        expired += [(job_id, step) for step in sorted(job_steps) if step != kept]
    return expired


def expire_checkpoints(now: datetime | None = None) -> list[tuple[str, int]]:
    """Delete the checkpoints (folder, archive and row) of jobs finished more than GRPO_CHECKPOINT_RETENTION_DAYS
    ago, except each job's adapter and any checkpoint a job not deleted forks from. Returns (job_id, step) of those
    removed by this call. With a retention of 0 nothing expires."""
    days = get_settings().checkpoint_retention_days
    if days == 0:
        return []
    cutoff = (now or utcnow()) - timedelta(days=days)
    removed = []
    with session_scope() as session:
        rows = session.execute(
            select(CheckpointRow.job_id, CheckpointRow.step, Job.adapter_step)
            .join(Job, Job.id == CheckpointRow.job_id)
            .where(Job.status.in_(TERMINAL_STATUSES), Job.finished_at < cutoff, Job.deleted_at.is_(None))
        ).all()
        for job_id, step in expired_checkpoints([tuple(row) for row in rows]):
            # Checked in the DELETE itself, not before it: a fork submitted since the read above keeps its start.
            forked = (
                select(Job.id)
                .where(Job.parent_job_id == job_id, Job.parent_step == step, Job.deleted_at.is_(None))
                .exists()
            )
            deleted = session.execute(
                delete(CheckpointRow)
                .where(CheckpointRow.job_id == job_id, CheckpointRow.step == step, ~forked)
                .returning(CheckpointRow.id)
                .execution_options(synchronize_session=False)
            ).first()
            if deleted is None:  # another worker removed it, or a fork starts from it
                continue
            # Files before the commit: a pass that fails after this leaves the row, and the next pass removes both.
            artifacts.remove_tree(artifacts.checkpoint_dir(job_id, step))
            removed.append((job_id, step))
    if removed:
        log.info("expired %d checkpoint(s) past the %g-day retention", len(removed), days)
    return removed
