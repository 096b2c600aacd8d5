"""What a worker writes while it trains: a metrics row per step and kind, a checkpoint row per saved adapter, each
with its event, and a step's stored samples and reward output. Rows are unique per (job, step) (samples per
position, outputs per reward), so a step replayed after a crash writes nothing twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.models import CheckpointRow, MetricRow, RewardOutput, SampleRow, utcnow
from api.services import jobs as jobs_service
from api.services import progress as progress_service


def _insert_ignoring_duplicates(session: Session, table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: a replayed step never writes a second row. True when inserted."""
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports no reliable rowcount for INSERT ... ON CONFLICT.
    return session.execute(statement.returning(*table.primary_key.columns)).first() is not None


def record_metrics(session: Session, *, job_id: str, kind: str, step: int, values: dict[str, float | None]) -> bool:
    """The step's metrics row and its event; True when inserted (False: the step was recorded already). A value
    that is not finite (a NaN loss, an infinite ratio) is stored as null: JSON has no NaN, PostgreSQL's json type
    refuses it, and the API serves these rows as JSON."""
    values = progress_service.finite(values)
    inserted = _insert_ignoring_duplicates(
        session,
        MetricRow.__table__,
        {"job_id": job_id, "kind": kind, "step": step, "values": values, "created_at": utcnow()},
    )
    if inserted:
        jobs_service.record_event(
            session, job_id=job_id, type="metrics", data={"step": step, "kind": kind, "values": values}
        )
    return inserted


def record_checkpoint(session: Session, *, job_id: str, step: int, sha256: str, size: int) -> None:
    inserted = _insert_ignoring_duplicates(
        session,
        CheckpointRow.__table__,
        {"job_id": job_id, "step": step, "sha256": sha256, "bytes": size, "created_at": utcnow()},
    )
    if inserted:
        jobs_service.record_event(
            session, job_id=job_id, type="checkpoint", data={"step": step, "sha256": sha256, "bytes": size}
        )


def record_samples(
    session: Session, *, job_id: str, step: int, samples: list[dict], outputs: dict[str, str], group_size: int
) -> None:
    """A step's samples (grpo_core's TrainerCallback.on_samples), one row each at position group * group_size +
    index, and a row per reward that printed something. Non-finite numbers are stored as null, as for metrics."""
    now = utcnow()
    for sample in samples:
        position = sample["group"] * group_size + sample["index"]
        values = {"job_id": job_id, "step": step, "position": position, "data": progress_service.finite(sample)}
        _insert_ignoring_duplicates(session, SampleRow.__table__, {**values, "created_at": now})
    for reward, text in outputs.items():
        values = {"job_id": job_id, "step": step, "reward": reward, "text": text, "created_at": now}
        _insert_ignoring_duplicates(session, RewardOutput.__table__, values)
