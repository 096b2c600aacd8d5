from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from api.deps import SessionDep, TenantDep
from api.limits import REWARD_BODY_BYTES, TenantSlots
from api.schemas import (
    RewardCodePublic,
    RewardSourcePublic,
    RewardsPublic,
    RewardTestRequest,
    RewardTestResult,
    error_responses,
)
from api.services import InvalidInput
from api.services import rewards as rewards_service
from api.services.datasets import display_name
from grpo_core.rewards import RewardFunction
from grpo_core.sandbox import MAX_SOURCE_BYTES, CheckResult
from service_core.db import run_read, session_scope
from service_core.models import RewardCode
from service_core.settings import get_settings

router = APIRouter(prefix="/v1/rewards", tags=["rewards"], responses=error_responses(401, 413, 422))
NOT_FOUND = error_responses(404)
RewardId = Annotated[str, Path(description="An uploaded reward's id (rwd_<hex>)")]
MAX_NAME_CHARS = 200


@router.get("", name="list", response_model=RewardsPublic)
def list_rewards(session: SessionDep, tenant_id: TenantDep) -> RewardsPublic:
    """Reward functions a job can name, each with its `kind`: built-ins, those the operator installed as entry
    points (plugins), and this tenant's uploads (named in a job by their `id`; no source here)."""
    return RewardsPublic(data=rewards_service.list_rewards(session, tenant_id=tenant_id))


@router.post(
    "",
    name="upload",
    status_code=201,
    response_model=RewardCodePublic,
    responses=error_responses(429, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": f"Python source, UTF-8, at most {MAX_SOURCE_BYTES} bytes, defining "
                                "`reward`",
                            },
                            "name": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_NAME_CHARS,
                                "description": "A label (default: the file's name)",
                            },
                        },
                    },
                    "example": {"file": "def reward(prompt, completion, answer, **fields):\n    return 1.0\n"},
                }
            },
        }
    },
)
async def upload_reward(request: Request, tenant_id: TenantDep) -> RewardCodePublic:
    """Upload a reward function as the multipart field `file`: Python source defining `reward`, either
    `reward(prompt, completion, **fields) -> float` (called per sample, with the row's other columns as keywords)
    or TRL's `reward(prompts, completions, **kwargs) -> list[float]` (called per batch, columns as keyword lists).
    The source is loaded and inspected in the sandbox (no network, no files of the service, bounded time and
    memory) before it is stored; a refusal names the problem. A job then names it by its `id`, with `params`
    passed to `reward` as keyword arguments."""
    content, name = await _read_upload(request)
    source = rewards_service.source_text(content)
    await run_read(_ensure_room, tenant_id)  # before the sandbox: a tenant at its limit costs no check
    with _reward_check(request, tenant_id):
        check = await run_in_threadpool(rewards_service.check_source, source)
    return await run_in_threadpool(_create_reward, tenant_id, name, source, check)


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The `file` part's bytes and the reward's label, or InvalidInput saying what is missing or malformed."""
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
    except (MultiPartException, HTTPException) as error:
        # Inside an app Starlette turns MultiPartException into HTTPException(400): both mean a malformed upload.
        message = error.message if isinstance(error, MultiPartException) else str(error.detail)
        raise InvalidInput(f"could not read the multipart upload: {message}") from None
    upload = form.get("file")
    if not isinstance(upload, StarletteUploadFile):
        raise InvalidInput("send the Python source as the multipart field `file` (curl -F file=@reward.py)")
    name = form.get("name")
    if name is None:
        name = display_name(upload.filename or "", default="reward.py")
    elif not isinstance(name, str):
        raise InvalidInput("the form field `name` must be text, not a file")
    else:
        name = "".join(c for c in name if c.isprintable()).strip()  # a label: no control characters, no NUL
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidInput(f"name: give 1 to {MAX_NAME_CHARS} printable characters, got {len(name)}")
    # The body is at most REWARD_BODY_BYTES (the app's body cap): read it all, so a refusal gives its size.
    return await upload.read(REWARD_BODY_BYTES + 1), name


def _ensure_room(tenant_id: str) -> None:
    with session_scope() as session:
        rewards_service.ensure_room(session, tenant_id=tenant_id)


def _create_reward(tenant_id: str, name: str, source: str, check: CheckResult) -> RewardCodePublic:
    # In a worker thread: the commit (which on SQLite may wait for the write lock) would hold up the event loop.
    with session_scope() as session:
        code = rewards_service.create_reward(session, tenant_id=tenant_id, name=name, source=source, check=check)
        return RewardCodePublic.model_validate(code)


def _reward_check(request: Request, tenant_id: str):
    """A slot of the app's reward checks (uploads and dry runs) for the block, or a 429 naming the full cap."""
    settings = get_settings()
    slots: TenantSlots = request.app.state.reward_checks
    return slots.hold(tenant_id, per_tenant=settings.max_reward_checks_per_tenant, total=settings.max_reward_checks)


@router.get("/{reward_id}", name="get", response_model=RewardSourcePublic, responses=NOT_FOUND)
def get_reward(reward_id: RewardId, session: SessionDep, tenant_id: TenantDep) -> RewardSourcePublic:
    """An uploaded reward with its source."""
    return RewardSourcePublic.model_validate(
        rewards_service.get_reward(session, tenant_id=tenant_id, reward_id=reward_id)
    )


@router.delete(
    "/{reward_id}",
    name="delete",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, **error_responses(409)},
)
def delete_reward(reward_id: RewardId, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Delete an uploaded reward. Refused (409, naming the jobs) while a queued or running job uses it; finished
    jobs that used it keep its id."""
    rewards_service.delete_reward(session, tenant_id=tenant_id, reward_id=reward_id)
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{reward}/test",
    name="test",
    response_model=RewardTestResult,
    responses={**NOT_FOUND, **error_responses(400, 429, 503)},
)
async def dry_run_reward(
    reward: Annotated[str, Path(description="An uploaded reward's id, or a built-in's or plugin's name")],
    body: RewardTestRequest,
    request: Request,
    tenant_id: TenantDep,
) -> RewardTestResult:
    """Dry run: score a few (prompt, completion, fields) items with a reward, as a job would, and see each score or
    error and what the reward printed. An upload runs in a fresh sandbox, a built-in or plugin in the reward
    process, under the operator's time limits; params go to the reward as a job's would."""
    target = await run_read(_check_dry_run, tenant_id, reward, body)  # a 404 or 422 before a slot is taken
    with _reward_check(request, tenant_id):
        return await run_in_threadpool(rewards_service.dry_run_reward, reward=target, request=body)


def _check_dry_run(tenant_id: str, name: str, body: RewardTestRequest) -> RewardCode | RewardFunction:
    with session_scope() as session:
        return rewards_service.check_dry_run(session, tenant_id=tenant_id, name=name, request=body)
