"""What a worker writes while it trains: a metrics row per step and kind, a checkpoint row per saved adapter, each
with its event, a step's stored samples and reward output, its groups folded into per-prompt figures, and the
tenant's usage. Rows are unique per (job, step) (samples per position, outputs per reward; prompt figures through a
row per step folded in; usage added only with a step's new metric row), so a step replayed after a crash writes
nothing twice."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service_core import job_state
from service_core.models import (
    CheckpointRow,
    MetricRow,
    PromptStats,
    PromptStatStep,
    RewardOutput,
    SampleRow,
    Usage,
    utcnow,
)


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
    values = job_state.finite(values)
    inserted = _insert_ignoring_duplicates(
        session,
        MetricRow.__table__,
        {"job_id": job_id, "kind": kind, "step": step, "values": values, "created_at": utcnow()},
    )
    if inserted:
        job_state.record_event(
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
        job_state.record_event(
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
        values = {"job_id": job_id, "step": step, "position": position, "data": job_state.finite(sample)}
        _insert_ignoring_duplicates(session, SampleRow.__table__, {**values, "created_at": now})
    for reward, text in outputs.items():
        values = {"job_id": job_id, "step": step, "reward": reward, "text": text, "created_at": now}
        _insert_ignoring_duplicates(session, RewardOutput.__table__, values)


# Rows per INSERT of prompt figures: 10 parameters each stays under SQLite's 32766 and PostgreSQL's 65535.
PROMPT_ROWS_PER_STATEMENT = 1000


def is_zero_variance(rewards: Sequence[float]) -> bool:
    """Whether a group's rewards are all equal, as the trainer counts it (grpo_core.algorithms.zero_std_groups:
    NaN as 0, Bessel's std under 1e-8): such a group has no learning signal."""
    values = [0.0 if math.isnan(r) else r for r in rewards]
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return variance**0.5 < 1e-8


def _fold_groups(job_id: str, step: int, groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A step's groups as one prompt_stats row per dataset row: a row drawn more than once in the step (dynamic
    sampling's later rounds may draw it again) adds up its groups, its first group is its first sight and its last
    the latest. A group's reward is the mean of its finite rewards (None when none is)."""
    folded: dict[int, dict[str, Any]] = {}
    for group in groups:
        finite = [r for r in group["rewards"] if math.isfinite(r)]
        mean = sum(finite) / len(finite) if finite else None
        row = folded.setdefault(
            group["row"],
            {
                "job_id": job_id,
                "row": group["row"],
                "groups": 0,
                "reward_sum": 0.0,
                "reward_count": 0,
                "zero_variance_groups": 0,
                "first_step": step,
                "first_reward": mean,
                "last_step": step,
            },
        )
        row["groups"] += 1
        row["reward_sum"] += sum(finite)
        row["reward_count"] += len(finite)
        row["zero_variance_groups"] += is_zero_variance(group["rewards"])
        row["last_reward"] = mean
    return list(folded.values())


def record_prompt_groups(session: Session, *, job_id: str, step: int, groups: Sequence[dict[str, Any]]) -> bool:
    """Fold a step's groups (grpo_core's TrainerCallback.on_prompt_groups: {"row", "rewards"} each) into the job's
    per-prompt figures; True when folded in (False: the step was recorded already).

    A resumed job runs again the steps after its last checkpoint. Like its metrics and samples, a step's figures
    are the first run's: the step's prompt_stat_steps row is inserted in the same transaction as the figures, and a
    step that already has one adds nothing. (A guard per prompt row, such as "only steps after its last_step", would
    not do: a step run again may draw other rows, with dynamic sampling and rewards that vary, and would count
    those.) Each prompt row is one upsert: counts and sums add, the latest sight moves, the first stays."""
    if not _insert_ignoring_duplicates(session, PromptStatStep.__table__, {"job_id": job_id, "step": step}):
        return False
    rows = _fold_groups(job_id, step, groups)
    table = PromptStats.__table__
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    for start in range(0, len(rows), PROMPT_ROWS_PER_STATEMENT):
        statement = dialect.insert(table).values(rows[start : start + PROMPT_ROWS_PER_STATEMENT])
        added = statement.excluded
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.job_id, table.c.row],
                set_={
                    "groups": table.c.groups + added.groups,
                    "reward_sum": table.c.reward_sum + added.reward_sum,
                    "reward_count": table.c.reward_count + added.reward_count,
                    "zero_variance_groups": table.c.zero_variance_groups + added.zero_variance_groups,
                    "last_step": added.last_step,
                    "last_reward": added.last_reward,
                },
            )
        )
    return True


USAGE_FIGURES = ("compute_seconds", "tokens_sampled", "tokens_trained", "reward_calls", "reward_seconds")
"""The usage table's figures (service_core.models.Usage says what each counts)."""
_WHOLE_FIGURES = ("tokens_sampled", "tokens_trained", "reward_calls")


def step_usage(metrics: Mapping[str, Any], processes: int) -> dict[str, float]:
    """A training step's usage from its metrics (grpo_core.step.step_metrics): compute_seconds is its step_seconds
    (the slowest rank's) times the processes that held a device for it. A figure missing (metrics from before it
    was reported) or not finite counts 0."""

    def figure(key: str) -> float:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0

    return {
        "compute_seconds": figure("step_seconds") * processes,
        **{key: figure(key) for key in USAGE_FIGURES if key != "compute_seconds"},
    }


def record_usage(
    session: Session,
    *,
    tenant_id: str,
    source_id: str,
    kind: str,
    hardware: str,
    figures: Mapping[str, float],
    day: date | None = None,
) -> None:
    """Add `figures` (USAGE_FIGURES; missing ones count 0) to the usage row of a job or pre-flight for `day` (today,
    UTC) and its hardware class: one upsert, so concurrent writers add rather than overwrite. The caller decides a
    step counts once (record_metrics' result)."""
    values = {
        key: round(figures.get(key, 0)) if key in _WHOLE_FIGURES else float(figures.get(key, 0))
        for key in USAGE_FIGURES
    }
    row = {
        "source_id": source_id,
        "day": day or utcnow().date(),
        "hardware": hardware,
        "kind": kind,
        "tenant_id": tenant_id,
        **values,
    }
    table = Usage.__table__
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    statement = dialect.insert(table).values(row)
    added = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.source_id, table.c.day, table.c.hardware],
            set_={key: table.c[key] + added[key] for key in USAGE_FIGURES},
        )
    )
