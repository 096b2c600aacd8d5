"""Rewards: the catalog a job names (built-ins, the operator's plugins, this tenant's uploads), tenants' own reward
code (checked in the sandbox at upload, immutable afterwards), dry runs of any reward, and the samples a job's
steps stored.

Tenant code never runs in this process: an upload's check and a dry run start a sandbox (grpo_core.sandbox), and a
built-in's or plugin's dry run the trusted reward process (grpo_core.reward_process), each under the operator's
time limits. Both block for up to that long, so the routes call them in a worker thread, holding a slot of the
app's reward_checks (api/limits.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

import grpo_core.rewards as rewards_module
from api.schemas import (
    PARAMS_BYTES,
    RewardItemResult,
    RewardPublic,
    RewardRef,
    RewardTestItem,
    RewardTestRequest,
    RewardTestResult,
    SamplePublic,
    SamplesPublic,
)
from api.services import InvalidInput, NotFound, Unavailable
from grpo_core.config import RewardSpec
from grpo_core.data import row_problem
from grpo_core.reward_process import RewardFailure, RewardProcess, RewardResults
from grpo_core.rewards import RewardFunction, RewardSpecError, is_tenant_reward, resolve_rewards, reward_registry
from grpo_core.sandbox import (
    MAX_SOURCE_BYTES,
    CheckResult,
    RewardSandbox,
    RewardSourceError,
    SandboxRestartsExhausted,
    SandboxUnavailable,
)
from service_core import artifacts
from service_core.models import TERMINAL_STATUSES, Job, RewardCode, RewardOutput, SampleRow
from service_core.settings import Settings, get_settings

# Names the service passes to `reward` itself: no param or dry-run field may take them.
RESERVED_NAMES = frozenset({"prompt", "prompts", "completion", "completions", "messages"})


# --- the catalog and uploads ----------------------------------------------------------------------------------------


def list_rewards(session: Session, *, tenant_id: str) -> list[RewardPublic]:
    """Built-ins and plugins by name, then this tenant's uploads, newest first."""
    data = [_registered_public(fn) for fn in reward_registry().values()]
    uploads = session.scalars(
        select(RewardCode).where(RewardCode.tenant_id == tenant_id).order_by(RewardCode.created_at.desc())
    )
    return data + [_uploaded_public(code) for code in uploads]


def _registered_public(fn: RewardFunction) -> RewardPublic:
    try:
        fields = list(fn.fields(fn.params_model()))
    except Exception:  # params without defaults: the fields depend on what the job passes
        fields = []
    # Built-ins are defined in grpo_core.rewards; an operator's plugin comes from its own package.
    kind = "builtin" if getattr(fn.score, "__module__", None) == rewards_module.__name__ else "plugin"
    return RewardPublic(
        kind=kind, name=fn.name, description=fn.description, params_schema=fn.params_schema(), fields=fields
    )


def _uploaded_public(code: RewardCode) -> RewardPublic:
    accepted = code.parameters or []
    return RewardPublic(
        kind="uploaded",
        name=code.name,
        description=f"this tenant's own reward code ({code.shape.replace('_', '-')} shape), run in a sandbox",
        params_schema={
            "type": "object",
            "properties": {name: {} for name in accepted},
            # **kwargs takes any keyword; otherwise only the names `reward` declares.
            "additionalProperties": code.parameters is None,
        },
        fields=list(code.required),
        id=code.id,
        sha256=code.sha256,
        shape=code.shape,  # type: ignore[arg-type]
        created_at=code.created_at,
    )


def source_text(content: bytes) -> str:
    """An upload's bytes as source text, or InvalidInput naming why they cannot be (too large, not UTF-8, NUL)."""
    if len(content) > MAX_SOURCE_BYTES:
        raise InvalidInput(
            f"the reward source is {len(content)} bytes; the limit is {MAX_SOURCE_BYTES} bytes "
            f"({MAX_SOURCE_BYTES // 1024} KiB)"
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"the reward source is not UTF-8: byte 0x{content[error.start]:02x} at offset {error.start} "
            f"({error.reason}); save the file as UTF-8"
        ) from None
    if "\x00" in text:
        # Python refuses to compile it, and PostgreSQL cannot store it in text.
        raise InvalidInput(f"the reward source holds a NUL character at offset {text.index(chr(0))}")
    return text.removeprefix("\ufeff")  # an editor's byte-order mark, which compile() would refuse


def check_source(source: str) -> CheckResult:
    """Load `source` in the sandbox and inspect its `reward`, as a job will. InvalidInput naming the problem
    (syntax error with line and column, no `reward`, a signature of neither shape, an import or run failure,
    a load past GRPO_REWARD_START_TIMEOUT_SECONDS); Unavailable when no sandbox can run here. Blocking."""
    settings = get_settings()
    # Not check_reward_source: that one starts its sandbox without the operator's packages and limits, and an upload
    # that imports one of GRPO_REWARD_PACKAGES must load here as it will in a job.
    try:
        with RewardSandbox.from_limits(source, settings.sandbox_limits()) as sandbox:
            return sandbox.start()
    except RewardSourceError as error:
        raise InvalidInput(f"the reward source was refused: {error}") from None
    except SandboxUnavailable as error:
        raise Unavailable(f"reward code cannot be checked on this server: {error}") from None


def ensure_room(session: Session, *, tenant_id: str) -> None:
    """InvalidInput when the tenant already keeps GRPO_MAX_REWARDS_PER_TENANT uploads."""
    limit = get_settings().max_rewards_per_tenant
    count = session.scalar(select(func.count()).select_from(RewardCode).where(RewardCode.tenant_id == tenant_id))
    if (count or 0) >= limit:
        raise InvalidInput(
            f"this tenant keeps {count} uploaded rewards, the operator's limit (GRPO_MAX_REWARDS_PER_TENANT is "
            f"{limit}); delete one first"
        )


def create_reward(session: Session, *, tenant_id: str, name: str, source: str, check: CheckResult) -> RewardCode:
    """Store a source that check_source accepted, with what the check found."""
    ensure_room(session, tenant_id=tenant_id)  # again: uploads may have raced while this one was checked
    encoded = source.encode()
    code = RewardCode(
        tenant_id=tenant_id,
        name=name,
        source=source,
        sha256=hashlib.sha256(encoded).hexdigest(),
        bytes=len(encoded),
        shape=check.shape,
        parameters=check.parameters,
        required=list(check.required),
    )
    session.add(code)
    session.flush()
    return code


def get_reward(session: Session, *, tenant_id: str, reward_id: str) -> RewardCode:
    if not artifacts.is_server_id(reward_id):  # as in get_dataset
        raise NotFound("reward", reward_id)
    code = session.scalar(select(RewardCode).where(RewardCode.id == reward_id, RewardCode.tenant_id == tenant_id))
    if code is None:
        raise NotFound("reward", reward_id)
    return code


def delete_reward(session: Session, *, tenant_id: str, reward_id: str) -> None:
    """Delete an upload, unless a queued or running job of the tenant names it (409 naming them): their worker
    loads the source when it starts, or again after a restart. Finished jobs keep only its id."""
    code = get_reward(session, tenant_id=tenant_id, reward_id=reward_id)
    active = session.execute(
        select(Job.id, Job.rewards)
        .where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
        .order_by(Job.created_at)
    )
    users = [job_id for job_id, rewards in active if any(r.get("name") == reward_id for r in rewards)]
    if users:
        raise InvalidInput(
            f"reward {reward_id!r} is used by {len(users)} queued or running job(s): {', '.join(users)}; cancel "
            "them or wait until they end, then delete it",
            status_code=409,
        )
    session.delete(code)


# --- a job's rewards ------------------------------------------------------------------------------------------------


def tenant_reward_problems(
    session: Session,
    *,
    tenant_id: str,
    refs: Sequence[RewardRef],
    fields: set[str] | None,
    taken: set[str] | None,
) -> list[str]:
    """What is wrong with a job's references to uploaded rewards (names starting rwd_): each must be one of this
    tenant's uploads (another tenant's id reads exactly like a missing one), with params it can take. `fields`:
    the dataset fields every row of the job's datasets has; `taken`: those any of them has (None when a dataset is
    unknown: not checked then)."""
    ids = [ref.name for ref in refs if artifacts.is_server_id(ref.name)]
    found = {}
    if ids:
        query = select(RewardCode).where(RewardCode.tenant_id == tenant_id, RewardCode.id.in_(ids))
        found = {code.id: code for code in session.scalars(query)}
    problems = []
    for ref in refs:
        code = found.get(ref.name)
        if code is None:
            problems.append(
                f"unknown reward {ref.name!r}: no reward this tenant uploaded has that id (GET /v1/rewards)"
            )
        else:
            subject = f"reward {ref.name!r}"
            problems += params_problems(code, ref.params, fields=fields, taken=taken, subject=subject)
    return problems


def params_problems(
    code: RewardCode,
    params: Mapping[str, Any],
    *,
    fields: set[str] | None,
    taken: set[str] | None,
    subject: str,
    source: tuple[str, str] = ("a dataset field", "a dataset field (in every row)"),
) -> list[str]:
    """An upload's params are keyword arguments of its `reward`: at most PARAMS_BYTES as JSON, each an identifier
    it accepts and not a name the service passes itself (prompt, a field of a row: `taken`); and every keyword it
    requires comes from a param or a field every row has (`fields`). None: not checked. `source` names a field in
    the messages (one field, a field of every row)."""
    try:
        size = len(json.dumps(params, ensure_ascii=False, allow_nan=False).encode())
    except ValueError:
        return [f"{subject}: params hold NaN or Infinity, which JSON cannot carry: use finite numbers"]
    if size > PARAMS_BYTES:
        return [f"{subject}: params are {size} bytes as JSON; the limit is {PARAMS_BYTES}"]
    problems = []
    for key in params:
        if not key.isidentifier():
            problems.append(f"{subject}: param {key!r} is not a Python identifier, so `reward` cannot take it")
        elif key in RESERVED_NAMES:
            problems.append(f"{subject}: param {key!r} is passed by the service itself (prompt(s), completion(s))")
        elif code.parameters is not None and key not in code.parameters:
            accepted = ", ".join(code.parameters) or "no other keyword"
            problems.append(f"{subject}: param {key!r} is not a parameter of its `reward`, which accepts {accepted}")
        elif taken is not None and key in taken:
            problems.append(f"{subject}: param {key!r} is also {source[0]}; `reward` would get it twice")
    if fields is not None:
        missing = [name for name in code.required if name not in fields and name not in params]
        if missing:
            problems.append(
                f"{subject}: its `reward` requires {', '.join(missing)}, which is neither {source[1]} nor a param"
            )
    return problems


# --- dry runs -------------------------------------------------------------------------------------------------------


def find_reward(session: Session, *, tenant_id: str, name: str) -> RewardCode | RewardFunction:
    """A reward by what a job names it: an upload's id (this tenant's only), or a built-in's or plugin's name."""
    if is_tenant_reward(name):
        return get_reward(session, tenant_id=tenant_id, reward_id=name)
    fn = reward_registry().get(name)
    if fn is None:
        raise NotFound("reward", name)
    return fn


def check_dry_run(
    session: Session, *, tenant_id: str, name: str, request: RewardTestRequest
) -> RewardCode | RewardFunction:
    """The reward a dry run names (find_reward), once the request is one it can run: InvalidInput listing every
    problem otherwise (too many items, a prompt that is not a dataset's, fields the service passes itself, params
    the reward cannot take, a field or keyword it needs that the items lack)."""
    reward = find_reward(session, tenant_id=tenant_id, name=name)
    limit = get_settings().max_reward_test_items
    problems = []
    if len(request.items) > limit:
        problems.append(
            f"items: {len(request.items)} items, the operator's limit is {limit} (GRPO_MAX_REWARD_TEST_ITEMS)"
        )
    for i, item in enumerate(request.items):
        problem = row_problem(_prompt_row(item))
        if problem:
            problems.append(f"items.{i}.prompt: {problem}")
        reserved = sorted(RESERVED_NAMES & item.fields.keys())
        if reserved:
            problems.append(f"items.{i}.fields: {', '.join(reserved)} are passed by the service, not as fields")
    fields = set.intersection(*(set(item.fields) for item in request.items))  # items: at least one
    if isinstance(reward, RewardCode):
        problems += params_problems(
            reward,
            request.params,
            fields=fields,
            taken=set().union(*(item.fields for item in request.items)),
            subject="params",
            source=("a field of an item", "a field of every item"),
        )
    else:
        try:
            resolve_rewards([RewardSpec(reward.name, 1.0, request.params)], fields)
        except RewardSpecError as error:
            problems += error.problems
    if problems:
        raise InvalidInput("the dry run is invalid; nothing was scored", problems)
    return reward


def _prompt_row(item: RewardTestItem) -> dict[str, Any]:
    return {"messages" if isinstance(item.prompt, list) else "prompt": item.prompt}


def dry_run_reward(*, reward: RewardCode | RewardFunction, request: RewardTestRequest) -> RewardTestResult:
    """Score each item of a request check_dry_run accepted with `reward`, as a job would, and say what each call gave.
    Uploads run in a fresh sandbox, built-ins and plugins in the trusted reward process; both under the operator's
    time limits. Blocking."""
    settings = get_settings()
    prompts = [item.prompt for item in request.items]
    completions = [item.completion for item in request.items]
    started = time.monotonic()
    if isinstance(reward, RewardCode):
        fields_only = [dict(item.fields) for item in request.items]
        scores, shape = _sandbox_scores(reward, prompts, completions, fields_only, request.params, settings)
    else:
        rows = [{**item.fields, **_prompt_row(item)} for item in request.items]
        scores, shape = _builtin_scores(reward, request.params, completions, rows, settings), None
    return RewardTestResult(
        results=[RewardItemResult(score=score, error=error) for score, error in scores.results],
        output=scores.output,
        seconds=round(time.monotonic() - started, 3),
        shape=shape,  # type: ignore[arg-type]
    )


def _sandbox_scores(
    code: RewardCode,
    prompts: list[Any],
    completions: list[str],
    rows: list[dict[str, Any]],
    params: Mapping[str, Any],
    settings: Settings,
) -> tuple[RewardResults, str | None]:
    """The upload's scores in a fresh sandbox, with what it printed while loading, then scoring; and its shape."""
    try:
        with RewardSandbox.from_limits(code.source, settings.sandbox_limits(), name=code.id) as sandbox:
            loaded = sandbox.start()
            try:
                scores = sandbox.score(prompts, completions, rows, dict(params))
            except SandboxRestartsExhausted as error:  # a job would fail here; a dry run shows each item's error
                scores = error.scores or RewardResults([(None, str(error))] * len(completions))
    except RewardSourceError as error:
        raise InvalidInput(f"reward {code.id!r} no longer loads: {error}") from None
    except SandboxUnavailable as error:
        raise Unavailable(f"reward code cannot run on this server: {error}") from None
    return dataclasses.replace(scores, output=loaded.output + scores.output), loaded.shape


def _builtin_scores(
    fn: RewardFunction,
    params: Mapping[str, Any],
    completions: list[str],
    rows: list[dict[str, Any]],
    settings: Settings,
) -> RewardResults:
    """A built-in's or plugin's scores, in the reward process a job scores it in (a plugin may hang)."""
    spec = RewardSpec(fn.name, 1.0, dict(params))
    with RewardProcess([spec], timeout_seconds=settings.reward_timeout_seconds) as process:
        try:
            return process.score(0, completions, rows)
        except RewardFailure as error:  # timed out, or the process died or could not start
            return RewardResults([(None, str(error))] * len(completions))


# --- samples --------------------------------------------------------------------------------------------------------


def list_samples(session: Session, *, job_id: str, step: int | None, after: int | None, limit: int) -> SamplesPublic:
    """A page of a job's stored samples in (step, position) order, after the sample whose id is `after`, with what
    the rewards printed during the page's steps. The caller checked the job is the tenant's."""
    query = select(SampleRow).where(SampleRow.job_id == job_id)
    if step is not None:
        query = query.where(SampleRow.step == step)
    if after is not None:
        last = session.execute(
            select(SampleRow.step, SampleRow.position).where(SampleRow.id == after, SampleRow.job_id == job_id)
        ).first()
        if last is None:
            raise InvalidInput(f"after: {after} is not the id of a sample of job {job_id}")
        query = query.where(
            or_(SampleRow.step > last.step, and_(SampleRow.step == last.step, SampleRow.position > last.position))
        )
    rows = list(session.scalars(query.order_by(SampleRow.step, SampleRow.position).limit(limit + 1)))
    page = rows[:limit]
    steps = sorted({row.step for row in page})
    outputs: dict[str, dict[str, str]] = {}
    if steps:
        printed = session.execute(
            select(RewardOutput.step, RewardOutput.reward, RewardOutput.text)
            .where(RewardOutput.job_id == job_id, RewardOutput.step.in_(steps))
            .order_by(RewardOutput.step, RewardOutput.reward)
        )
        for output_step, reward, text in printed:
            outputs.setdefault(str(output_step), {})[reward] = text
    return SamplesPublic(
        data=[_sample_public(row) for row in page],
        outputs=outputs,
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


def _sample_public(row: SampleRow) -> SamplePublic:
    data = row.data
    return SamplePublic(
        id=row.id,
        step=row.step,
        position=row.position,
        group=data.get("group", 0),
        index=data.get("index", 0),
        prompt=data.get("prompt", ""),
        completion=data.get("completion", ""),
        reward=data.get("reward"),
        advantage=data.get("advantage"),
        scores=data.get("scores") or {},
        errors=data.get("errors") or {},
    )
