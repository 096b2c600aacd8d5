from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep, TenantDep
from api.schemas import UsagePublic, error_responses
from api.services import InvalidInput
from api.services import usage as usage_service

DAY = r"^\d{4}-\d{2}-\d{2}$"
router = APIRouter(prefix="/v1", tags=["usage"], responses=error_responses(401, 413, 422))


@router.get("/usage", name="get", response_model=UsagePublic)
def get_usage(
    session: SessionDep,
    tenant_id: TenantDep,
    start: Annotated[
        str | None, Query(pattern=DAY, description="First UTC day, YYYY-MM-DD (default: 29 days before end)")
    ] = None,
    end: Annotated[
        str | None, Query(pattern=DAY, description="Last UTC day, included, YYYY-MM-DD (default: today)")
    ] = None,
) -> UsagePublic:
    """What this tenant's jobs and pre-flights used from start to end (at most 366 days), by day, by job and in
    total: compute seconds by hardware class, tokens sampled and trained, reward calls and seconds. A job's steps
    count on the UTC day each was recorded; a step run again after a resume counts once. storage_bytes is what the
    tenant stores now (datasets, uploaded rewards, checkpoints), whatever the range."""
    first, last = usage_service.usage_range(_day(start, "start"), _day(end, "end"))
    return usage_service.tenant_usage(session, tenant_id=tenant_id, start=first, end=last)


def _day(value: str | None, name: str) -> date | None:
    """A YYYY-MM-DD day as written; pydantic's date would also read "0" as a Unix timestamp (1970-01-01)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a day that exists, YYYY-MM-DD; got {value!r}", [name]) from None
