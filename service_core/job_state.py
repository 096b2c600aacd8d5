"""A job's state changes, written the same way by the API (create, cancel) and the worker (run, finish, fail):
the row's status and timestamps, and an event on the job's stream (GET /v1/jobs/{id}/events) for each change.
docs/architecture.md draws the states and what moves a job between them."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from service_core.models import TERMINAL_STATUSES, Event, Job, utcnow


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
    if fields.get("stopped_early"):
        data["stopped_early"] = fields["stopped_early"]
    record_event(session, job_id=job.id, type="status", data=data)


def record_event(session: Session, *, job_id: str, type: str, data: dict[str, Any]) -> None:
    """Add an event to the job's stream. Numbers that are not finite (NaN, ±Infinity) are stored as null: JSON
    has no such numbers (`finite` says why)."""
    session.add(Event(job_id=job_id, type=type, data=finite(data)))


def finite(value: Any) -> Any:
    """`value` (a JSON document: dicts, lists, numbers, strings) with every NaN and ±Infinity replaced by None.
    JSON has no such numbers: json.dumps writes `NaN`, which no strict parser reads and PostgreSQL's json type
    refuses. Both what the worker records and what the API sends go through this, so they hold null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
