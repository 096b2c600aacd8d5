import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, WithJsonSchema

from api.deps import SessionDep, TenantDep
from api.limits import TenantSlots
from api.schemas import (
    MAX_INT,
    PROMPT_PAGE,
    SAMPLE_PAGE,
    CheckpointPublic,
    CheckpointsPublic,
    JobCreate,
    JobPromptsPublic,
    JobPublic,
    JobsPublic,
    JobStatus,
    MetricsPublic,
    PromptOrder,
    SamplesPublic,
    error_responses,
)
from api.services import NotFound
from api.services import jobs as jobs_service
from api.services import progress as progress_service
from api.services import prompts as prompts_service
from api.services import rewards as rewards_service
from service_core import artifacts
from service_core.db import run_read, session_scope
from service_core.models import TERMINAL_STATUSES, Event
from service_core.queue import queue_for, send_turn
from service_core.settings import get_settings

# Every route here takes a body, a query or an id, so each can answer 422 (in the ErrorBody shape, like all errors).
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 413, 422))
NOT_FOUND = error_responses(404)
KEEPALIVE_SECONDS = 15
log = logging.getLogger(__name__)


@router.post("", name="create", status_code=201, response_model=JobPublic, responses=error_responses(400, 409, 429))
def create_job(
    spec: JobCreate,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobPublic:
    """Validate a job spec and queue it. With an Idempotency-Key header, a retry with the same spec returns the
    job the first request made (header Idempotent-Replayed: true) instead of making a second one; the same key
    with another spec answers 409. A tenant with as many jobs queued as it may have gets 429 (naming the limit and
    its setting); running jobs never refuse one: past the tenant's cap on those, a job waits its turn."""
    job, created = jobs_service.create_job(session, tenant_id=tenant_id, spec=spec, idempotency_key=idempotency_key)
    session.commit()  # the message goes to the broker only once the row is durable
    if created:
        try:
            # A turn for the job's queue, not the job: the worker that takes it starts whichever tenant's job is next.
            send_turn(queue_for(job.hardware, processes=job.processes))
        except Exception:
            # The job is durable and queued in the database; a worker's reconciler sends its queue a turn once the
            # broker is back (GRPO_REQUEUE_QUEUED_AFTER_SECONDS). Failing the request would make the client retry for
            # nothing.
            log.warning("broker unreachable; job %s stays queued for the reconciler to send", job.id, exc_info=True)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    children = jobs_service.job_children(session, tenant_id=tenant_id, job_id=job.id)
    return jobs_service.job_public(job, children)


@router.get("", name="list", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> JobsPublic:
    """Newest first, optionally filtered by status."""
    jobs, count = jobs_service.list_jobs(session, tenant_id=tenant_id, status=status, limit=limit, offset=offset)
    return JobsPublic(data=[jobs_service.job_public(j) for j in jobs], count=count)


def _json(model: BaseModel) -> Response:
    """The model as a JSON response, serialised once: a route that returns a Response skips FastAPI's validation
    of its return value against response_model (for a sync route, a second trip to the thread pool), while the
    response_model still documents the body in the OpenAPI."""
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


# The hot reads below are async routes that take no SessionDep: each does all its blocking work (a session of its
# own, the queries, the commit, the connection back to the pool) in one trip to a worker thread, run_read's.


def _job(tenant_id: str, job_id: str) -> Response:
    with session_scope() as session:
        job = jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
        children = jobs_service.job_children(session, tenant_id=tenant_id, job_id=job.id)
    return _json(jobs_service.job_public(job, children))


@router.get("/{job_id}", name="get", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: str, tenant_id: TenantDep) -> Response:
    """The job, with its progress, its lineage when it is a fork, and the jobs forked from it."""
    return await run_read(_job, tenant_id, job_id)


@router.delete(
    "/{job_id}",
    name="delete",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, **error_responses(409)},
)
def delete_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Delete a finished job: its checkpoints and adapter archives, its metrics, events and samples. Refused (409)
    while it is queued or running (cancel it first), or while a queued or running fork has yet to copy the
    checkpoint it starts from (naming the forks). Its usage stays in GET /v1/usage."""
    jobs_service.delete_job(session, tenant_id=tenant_id, job_id=job_id)
    session.commit()
    artifacts.remove_tree(artifacts.job_dir(job_id))
    return Response(status_code=204)


@router.post("/{job_id}/cancel", name="cancel", response_model=JobPublic, responses=NOT_FOUND)
def cancel_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> JobPublic:
    """Stop a queued job at once, or a running one before its next step; its last checkpoint stays downloadable."""
    job = jobs_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
    session.commit()
    return jobs_service.job_public(job)


def _metrics(tenant_id: str, job_id: str, after_step: int, limit: int) -> Response:
    with session_scope() as session:
        jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
        rows, next_after_step = progress_service.list_metrics(
            session, job_id=job_id, after_step=after_step, limit_steps=limit
        )
    # The page is spliced from the stored JSON and validated and serialised once, by pydantic's core: no model per
    # row in Python, no second validation by FastAPI. Not written out by json.dumps: pydantic's is the wire format
    # (1e-05 is 0.00001, an integer value 3.0, NaN null), the same bytes as before. Rows are written finite
    # (worker/writes.py), but SQLite keeps NaN written before that; pydantic reads it and sends null, so every
    # stored row serialises.
    data = ",".join(f'{{"step":{step},"kind":{json.dumps(kind)},"values":{values}}}' for step, kind, values in rows)
    page = f'{{"data":[{data}],"next_after_step":{json.dumps(next_after_step)}}}'
    return _json(MetricsPublic.model_validate_json(page))


@router.get("/{job_id}/metrics", name="metrics", response_model=MetricsPublic, responses=NOT_FOUND)
async def get_metrics(
    job_id: str,
    tenant_id: TenantDep,
    after_step: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000, description="Steps per page")] = 200,
) -> Response:
    """Metric rows by step: kind "train" (one per step) and "eval" (held-out reward; step 0 is before training)."""
    return await run_read(_metrics, tenant_id, job_id, after_step, limit)


def _samples(tenant_id: str, job_id: str, step: int | None, after: int | None, limit: int) -> SamplesPublic:
    with session_scope() as session:
        jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
        return rewards_service.list_samples(session, job_id=job_id, step=step, after=after, limit=limit)


@router.get("/{job_id}/samples", name="samples", response_model=SamplesPublic, responses=NOT_FOUND)
async def get_samples(
    job_id: str,
    tenant_id: TenantDep,
    step: Annotated[int | None, Query(ge=0, le=MAX_INT, description="Only this step's samples")] = None,
    after: Annotated[
        int | None, Query(ge=1, le=MAX_INT, description="A sample's id (next_cursor): the page starts after it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=SAMPLE_PAGE)] = 50,
) -> SamplesPublic:
    """Completions sampled during training (the first GRPO_SAMPLE_GROUPS_PER_STEP groups of each step), in step
    and position order, each with its reward, advantage, per-reward scores and errors; `outputs` holds what
    tenant reward code printed during the page's steps."""
    return await run_read(_samples, tenant_id, job_id, step, after, limit)


def _prompts(tenant_id: str, job_id: str, order: PromptOrder, limit: int, offset: int) -> JobPromptsPublic:
    with session_scope() as session:
        job = jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
        page, count = prompts_service.list_prompt_stats(session, job_id=job.id, order=order, limit=limit, offset=offset)
        dataset_id = job.dataset_id
    return prompts_service.prompts_public(page, count, dataset_id=dataset_id)


@router.get("/{job_id}/prompts", name="prompts", response_model=JobPromptsPublic, responses=NOT_FOUND)
async def get_prompts(
    job_id: str,
    tenant_id: TenantDep,
    order: PromptOrder = "hardest",
    limit: Annotated[int, Query(ge=1, le=PROMPT_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> JobPromptsPublic:
    """Per-prompt difficulty over the run so far: each training row the job sampled, with how often, its mean
    reward, the share of its groups that were flat (every reward equal), and its reward at first and latest sight.
    `hardest` orders by mean reward, lowest first; `easiest` highest first; `most_improved` by latest minus first
    reward, largest first; ties by row. A step's figures count once, even when a resumed job runs it again."""
    return await run_read(_prompts, tenant_id, job_id, order, limit, offset)


class _EventStream(StreamingResponse):
    """A streaming response that gives its stream slot back however the response ends: the job finished, the
    client left (Starlette cancels the stream), the server shut down (uvicorn cancels it), or an error. The route
    takes the slot just before it returns this response, which FastAPI then awaits at once."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


# One event of the stream, as OpenAPI 3.2's itemSchema (FastAPI's own event streams use it, and schemathesis checks
# each event against it). A `schema` would be read as the whole stream by some tools and as each event by others.
SSE_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "An integer; send it back as Last-Event-ID to resume after it"},
        "event": {"type": "string", "enum": ["status", "metrics", "checkpoint", "warning"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


@router.get(
    "/{job_id}/events",
    name="events",
    summary="Stream events",
    # _EventStream names no media type as a class, so FastAPI documents no JSON body for the 200 (the stream is
    # documented below) and the errors stay JSON.
    response_class=_EventStream,
    status_code=200,  # _EventStream's constructor does not say it
    responses={
        200: {"content": {"text/event-stream": {"itemSchema": SSE_EVENT}}, "description": "Server-Sent Events"},
        **NOT_FOUND,
        **error_responses(429),
    },
)
async def stream_events(
    job_id: str,
    request: Request,
    tenant_id: TenantDep,
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0,
            le=MAX_INT,
            description="The `id` of the last event received: the stream resumes after it. Any other value (not an "
            "integer, negative, or above 2147483647, the largest id there can be) is a 422 naming the header",
        ),
        # Documented as the integer it is: a header is absent or a value, never null (a client reading "null" in
        # the schema would send the text "null").
        WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_INT}),
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: `status`, `metrics`, `checkpoint` and `warning`, each with an `id`. Reconnect with the
    Last-Event-ID header to resume after the last event seen. The stream ends once the job is finished and every
    event has been sent. `data` is always valid JSON: a metric that was not finite (NaN, Infinity) is null.

    A stream holds no database connection while it is open: each poll (every GRPO_EVENTS_POLL_SECONDS) reads in a
    worker thread and gives its connection back. Open streams are capped per tenant (GRPO_MAX_STREAMS_PER_TENANT)
    and in all (GRPO_MAX_STREAMS), counted in each API process: past a cap the answer is 429 with Retry-After."""
    settings = get_settings()
    slots: TenantSlots = request.app.state.event_streams
    # Checked before the job is read: a tenant past its cap costs the database nothing.
    slots.acquire(tenant_id, per_tenant=settings.max_streams_per_tenant, total=settings.max_streams)
    try:
        await run_read(_status_and_events, tenant_id, job_id, None)  # a 404 before the stream starts
    except BaseException:
        slots.release(tenant_id)
        raise
    poll = settings.events_poll_seconds

    async def generate() -> AsyncIterator[str]:
        after_id = last_event_id or 0
        quiet_since = time.monotonic()
        while True:
            status, events = await run_read(_status_and_events, tenant_id, job_id, after_id)
            for event in events:
                after_id = event.id
                quiet_since = time.monotonic()
                yield f"id: {event.id}\nevent: {event.type}\ndata: {progress_service.event_json(event.data)}\n\n"
            if status in TERMINAL_STATUSES and not events:
                return
            if not events:
                if await request.is_disconnected():
                    return
                if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:  # keeps proxies from closing the stream
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll)

    return _EventStream(generate(), release=lambda: slots.release(tenant_id))


def _status_and_events(tenant_id: str, job_id: str, after_id: int | None) -> tuple[str, list[Event]]:
    """The job's status, then its next events after `after_id` (none when None). Blocking: called via run_read."""
    with session_scope() as session:
        # Read the status before the events: events written before a terminal status are then all seen.
        status = jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id).status
        if after_id is None:
            return status, []
        return status, progress_service.events_after(session, job_id=job_id, after_id=after_id)


@router.get("/{job_id}/checkpoints", name="checkpoints", response_model=CheckpointsPublic, responses=NOT_FOUND)
def list_checkpoints(job_id: str, session: SessionDep, tenant_id: TenantDep) -> CheckpointsPublic:
    jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    rows = progress_service.list_checkpoints(session, job_id=job_id)
    return CheckpointsPublic(
        data=[CheckpointPublic(step=r.step, bytes=r.bytes, sha256=r.sha256, created_at=r.created_at) for r in rows]
    )


def _adapter_download(session, tenant_id: str, job_id: str, step: int | None) -> FileResponse:
    job = jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    checkpoint = progress_service.get_checkpoint(session, job_id=job.id, step=step)
    try:
        path = artifacts.servable(artifacts.checkpoint_archive(job.id, checkpoint.step))
    except artifacts.OutsideArtifacts as error:
        # Never follow a link out of the artifacts folder; a missing archive is not a server error either.
        log.warning("refusing to serve checkpoint %s of job %s: %s", checkpoint.step, job.id, error)
        raise NotFound("adapter archive", f"{job.id} step {checkpoint.step}") from None
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{artifacts.adapter_folder_name(job.id, checkpoint.step)}.tar.gz",
        headers={"X-Checksum-SHA256": checkpoint.sha256, "X-Checkpoint-Step": str(checkpoint.step)},
    )


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Sent as application/gzip. application/octet-stream is listed too, for the same bytes: it is the binary type
# client generators know (openapi-python-client refuses application/gzip, and the download would be left out).
ARCHIVE = {
    200: {
        "content": {"application/gzip": _BINARY, "application/octet-stream": _BINARY},
        "description": "adapter folder as .tar.gz",
    },
    **NOT_FOUND,
}


@router.get(
    "/{job_id}/checkpoints/{step}/adapter",
    name="checkpoint-adapter",
    summary="Download a checkpoint's adapter",
    responses=ARCHIVE,
    response_class=FileResponse,
)
def download_checkpoint(
    job_id: str, step: Annotated[int, Path(ge=0, le=MAX_INT)], session: SessionDep, tenant_id: TenantDep
) -> FileResponse:
    """The adapter at `step` as a .tar.gz that unpacks to a folder PeftModel.from_pretrained loads; its sha256
    is in the X-Checksum-SHA256 header."""
    return _adapter_download(session, tenant_id, job_id, step)


@router.get(
    "/{job_id}/adapter",
    name="adapter",
    summary="Download the latest adapter",
    responses=ARCHIVE,
    response_class=FileResponse,
)
def download_adapter(job_id: str, session: SessionDep, tenant_id: TenantDep) -> FileResponse:
    """The job's adapter as a .tar.gz, sha256 in X-Checksum-SHA256, its step in X-Checkpoint-Step: the latest
    checkpoint (the final one once it succeeded), or the best evaluation's when a guardrail ended the job
    (adapter_step)."""
    job = jobs_service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    return _adapter_download(session, tenant_id, job_id, job.adapter_step)
