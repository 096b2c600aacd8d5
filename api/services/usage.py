"""Usage: what a tenant's jobs and pre-flights used, summed from the usage table (worker/writes.py record_usage) by
day and by job over a range of UTC days, and the bytes it stores now. GET /v1/usage reads the caller's own; `grpo usage` reads any tenant's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.schemas import UsageDay, UsageFigures, UsagePublic, UsageSource
from api.services import InvalidInput
from service_core.models import HARDWARE_CLASSES, CheckpointRow, Dataset, Job, RewardCode, Tenant, Usage, utcnow

MAX_DAYS = 366  # a year, leap day included: the range one request may sum
DEFAULT_DAYS = 30  # without a start: the 30 days up to the end

_SUMS = (
    func.sum(Usage.compute_seconds),
    func.sum(Usage.tokens_sampled),
    func.sum(Usage.tokens_trained),
    func.sum(Usage.reward_calls),
    func.sum(Usage.reward_seconds),
)


def usage_range(start: date | None, end: date | None, *, today: date | None = None) -> tuple[date, date]:
    """The days to sum, both included: end defaults to today (UTC), start to DEFAULT_DAYS days up to end. A start
    after the end, or a range longer than MAX_DAYS days, is refused naming the problem."""
    end = end or today or utcnow().date()
    # Near the first day a date can hold, the default range starts there rather than before it (OverflowError).
    start = start or max(date.min + timedelta(days=DEFAULT_DAYS - 1), end) - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidInput(f"start ({start}) is after end ({end})", ["start"])
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInput(
            f"the range from {start} to {end} is {(end - start).days + 1} days; at most {MAX_DAYS} are summed at once",
            ["start", "end"],
        )
    return start, end


def _figures(rows: Iterable[Sequence]) -> dict:
    """UsageFigures' fields from rows of (hardware, compute_seconds, tokens_sampled, tokens_trained, reward_calls,
    reward_seconds), added up."""
    by_hardware = dict.fromkeys(HARDWARE_CLASSES, 0.0)
    totals = [0.0, 0, 0, 0, 0.0]
    for hardware, *values in rows:
        by_hardware[hardware] = by_hardware.get(hardware, 0.0) + float(values[0] or 0)
        totals = [total + (value or 0) for total, value in zip(totals, values, strict=True)]
    return {
        "compute_seconds": float(totals[0]),
        "compute_seconds_by_hardware": by_hardware,
        "tokens_sampled": int(totals[1]),
        "tokens_trained": int(totals[2]),
        "reward_calls": int(totals[3]),
        "reward_seconds": float(totals[4]),
    }


def storage_by_kind(session: Session, *, tenant_id: str) -> dict[str, int]:
    """Bytes the tenant stores now, from the rows that describe each file: its datasets not deleted, its uploaded
    rewards, and its jobs' checkpoints (the adapter archive each serves; deleted jobs have none left)."""
    datasets = select(func.coalesce(func.sum(Dataset.bytes), 0)).where(
        Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
    )
    rewards = select(func.coalesce(func.sum(RewardCode.bytes), 0)).where(RewardCode.tenant_id == tenant_id)
    checkpoints = (
        select(func.coalesce(func.sum(CheckpointRow.bytes), 0))
        .join(Job, Job.id == CheckpointRow.job_id)
        .where(Job.tenant_id == tenant_id)
    )
    return {
        "datasets": int(session.scalar(datasets) or 0),
        "rewards": int(session.scalar(rewards) or 0),
        "checkpoints": int(session.scalar(checkpoints) or 0),
    }


def tenant_usage(session: Session, *, tenant_id: str, start: date, end: date) -> UsagePublic:
    """One tenant's usage from start to end (both included, a range usage_range allows): by day, by job or
    pre-flight, and in total. Two grouped queries over the tenant's rows in the range (ix_usage_tenant_day)."""
    in_range = (Usage.tenant_id == tenant_id, Usage.day >= start, Usage.day <= end)
    days: dict[date, list[Sequence]] = {}
    for day, hardware, *sums in session.execute(
        select(Usage.day, Usage.hardware, *_SUMS).where(*in_range).group_by(Usage.day, Usage.hardware)
    ):
        days.setdefault(day, []).append((hardware, *sums))
    sources = session.execute(
        select(Usage.source_id, Usage.kind, Usage.hardware, *_SUMS)
        .where(*in_range)
        .group_by(Usage.source_id, Usage.kind, Usage.hardware)
        .order_by(Usage.source_id, Usage.hardware)
    ).all()
    storage = storage_by_kind(session, tenant_id=tenant_id)
    return UsagePublic(
        start=start,
        end=end,
        by_day=[UsageDay(day=day, **_figures(days[day])) for day in sorted(days)],
        by_job=[
            UsageSource(id=source_id, kind=kind, hardware=hardware, **_figures([(hardware, *sums)]))
            for source_id, kind, hardware, *sums in sources
        ],
        totals=UsageFigures(**_figures(row for rows in days.values() for row in rows)),
        storage_bytes=sum(storage.values()),
        storage_bytes_by_kind=storage,
    )


def tenants_with_usage(session: Session, *, start: date, end: date) -> list[tuple[str, str]]:
    """(id, name) of every tenant with usage from start to end, by name: whose usage `grpo usage` prints."""
    return list(
        session.execute(
            select(Tenant.id, Tenant.name)
            .where(Tenant.id.in_(select(Usage.tenant_id).where(Usage.day >= start, Usage.day <= end)))
            .order_by(Tenant.name)
        ).tuples()
    )
