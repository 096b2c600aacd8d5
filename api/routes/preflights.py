import logging
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep, TenantDep
from api.schemas import JobCreate, PreflightPublic, PreflightsPublic, error_responses
from api.services import preflights as preflights_service
from service_core.models import MAX_INT
from service_core.queue import enqueue_preflight

# Created and listed at /v1/jobs/preflight (it takes a job's body; the list also keeps GET /v1/jobs/{job_id} from
# answering for that path), read one by one at /v1/preflights/{id}, apart from the jobs' own /v1/jobs/{job_id}/...
router = APIRouter(tags=["preflights"], responses=error_responses(401, 413, 422))
log = logging.getLogger(__name__)


@router.post(
    "/v1/jobs/preflight",
    name="create",
    status_code=202,
    response_model=PreflightPublic,
    responses=error_responses(400, 429),
)
def create_preflight(spec: JobCreate, session: SessionDep, tenant_id: TenantDep) -> PreflightPublic:
    """Check a job spec before training on it: accepted exactly when POST /v1/jobs would accept it, then queued to a
    worker, which samples the base model at the job's temperature and G on the first GRPO_PREFLIGHT_PROMPTS prompts
    the job would train on, and times one real step of the job. Read the result at GET /v1/preflights/{id}: the
    reward spread, each reward's mean and errors, the groups with no learning signal, completion lengths and
    truncation, the measured seconds per step, the job's estimated duration, and a verdict in words."""
    preflight = preflights_service.create_preflight(session, tenant_id=tenant_id, spec=spec)
    session.commit()  # the message goes to the broker only once the row is durable
    try:
        enqueue_preflight(preflight.id, preflight.hardware)
    except Exception:
        # Queued in the database: a worker's reconciler sends it once the broker is back.
        log.warning("broker unreachable; pre-flight %s stays queued for the reconciler", preflight.id, exc_info=True)
    return preflights_service.preflight_public(preflight)


@router.get("/v1/jobs/preflight", name="list", response_model=PreflightsPublic)
def list_preflights(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> PreflightsPublic:
    """This tenant's pre-flights, newest first."""
    preflights, count = preflights_service.list_preflights(session, tenant_id=tenant_id, limit=limit, offset=offset)
    return PreflightsPublic(data=[preflights_service.preflight_public(p) for p in preflights], count=count)


@router.get("/v1/preflights/{preflight_id}", name="get", response_model=PreflightPublic, responses=error_responses(404))
def get_preflight(preflight_id: str, session: SessionDep, tenant_id: TenantDep) -> PreflightPublic:
    """A pre-flight's status and, once it succeeded, its result; `error` says why one failed."""
    preflight = preflights_service.get_preflight(session, tenant_id=tenant_id, preflight_id=preflight_id)
    return preflights_service.preflight_public(preflight)
