from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep, TenantDep
from api.schemas import UsagePublic, error_responses
from api.services import usage as usage_service

router = APIRouter(prefix="/v1", tags=["usage"], responses=error_responses(401, 413, 422))


@router.get("/usage", name="get", response_model=UsagePublic)
def get_usage(
    session: SessionDep,
    tenant_id: TenantDep,
    start: Annotated[date | None, Query(description="First UTC day, YYYY-MM-DD (default: 29 days before end)")] = None,
    end: Annotated[date | None, Query(description="Last UTC day, included, YYYY-MM-DD (default: today)")] = None,
) -> UsagePublic:
    """What this tenant's jobs and pre-flights used from start to end (at most 366 days), by day, by job and in
    total: compute seconds by hardware class, tokens sampled and trained, reward calls and seconds. A job's steps
    count on the UTC day each was recorded; a step run again after a resume counts once. storage_bytes is what the
    tenant stores now (datasets, uploaded rewards, checkpoints), whatever the range."""
    start, end = usage_service.usage_range(start, end)
    return usage_service.tenant_usage(session, tenant_id=tenant_id, start=start, end=end)
