"""What the API serves of a job's progress: metric rows by step, events after an id, checkpoints. The worker
writes these (worker/writes.py); callers check the job belongs to the tenant first (jobs.get_job)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Row, Text, cast, select
from sqlalchemy.orm import Session

from api.services import NotFound
from service_core.job_state import finite
from service_core.models import CheckpointRow, Event, MetricRow


def event_json(data: Any) -> str:
    """An event's data as the JSON text of an SSE `data:` line. Rows stored before writes were made finite may hold
    NaN (SQLite keeps whatever text it was given): they are sent with null as well, never as invalid JSON."""
    return json.dumps(finite(data), allow_nan=False)


def list_metrics(
    session: Session, *, job_id: str, after_step: int, limit_steps: int
) -> tuple[list[Row[tuple[int, str, str]]], int | None]:
    """Metric rows (step, kind, values) of the next `limit_steps` steps after `after_step` (a step's train and
    eval rows never split across pages), and the cursor for the page after, or None when this page is the last.
    Plain rows, not ORM objects, and `values` as the JSON text stored, not decoded: a page is hundreds of rows,
    and the API validates and serialises it in one pass of pydantic's core."""
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
    rows = session.execute(
        select(MetricRow.step, MetricRow.kind, cast(MetricRow.values, Text))
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
