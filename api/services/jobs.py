"""Jobs: validating a spec, creating, reading, listing, cancelling and deleting jobs, and every status change with the
event that records it (the worker records its outcomes through set_status too)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import HTTPException
from sqlalchemy import bindparam, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.schemas import CHILDREN_SHOWN, JobChild, JobCreate, JobPublic, Progress, StoppedEarly, StoredRewardRef
from api.services import InvalidInput, NotFound
from api.services import datasets as datasets_service
from api.services import rewards as rewards_service
from api.services.catalog import model_catalog
from grpo_core.catalog import default_target_modules
from grpo_core.checkpoint_layout import FORK_FILES
from grpo_core.config import GRPOConfig, RewardSpec
from grpo_core.guardrails import StopWhen
from grpo_core.rewards import RewardFunction, RewardSpecError, is_tenant_reward, resolve_rewards
from grpo_core.spec import BaseModelSpec
from service_core import artifacts
from service_core.job_state import record_event, set_status
from service_core.models import (
    TERMINAL_STATUSES,
    CheckpointRow,
    Dataset,
    Event,
    Job,
    MetricRow,
    PromptStats,
    PromptStatStep,
    RewardOutput,
    SampleRow,
    Tenant,
    utcnow,
)
from service_core.settings import Settings, get_settings


def stop_when_of(spec: JobCreate) -> StopWhen:
    """The spec's guardrails, defaults filled in (its pydantic model checked the types and ranges already)."""
    return StopWhen.from_dict(spec.stop_when.model_dump() if spec.stop_when is not None else None)


def _guardrail_problems(spec: JobCreate, config: GRPOConfig) -> list[str]:
    """Conditions that could never fire with this spec: accepted, they would look like protection and be none."""
    stop_when, problems = stop_when_of(spec), []
    if stop_when.kl_above is not None and config.beta == 0:
        problems.append(
            "stop_when.kl_above: the KL to the reference is only measured with hyperparameters.beta > 0 (beta is 0)"
        )
    if stop_when.eval_patience is not None and (spec.eval_dataset_id is None or config.eval_every == 0):
        problems.append(
            "stop_when.eval_patience: early stopping needs held-out evaluations: set eval_dataset_id and "
            "hyperparameters.eval_every > 0"
        )
    return problems


def validate_job_spec(session: Session, *, tenant_id: str, spec: JobCreate) -> GRPOConfig:
    """Check a spec against the catalog, the datasets, the ranges, the operator's limits and the reward registry
    before anything is queued, so what is accepted runs. Raises InvalidInput listing every problem."""
    problems: list[str] = []
    catalog = model_catalog()
    model = catalog.get(spec.base_model)
    if model is None:
        problems.append(f"unknown base_model {spec.base_model!r}; valid: {', '.join(sorted(catalog))}")
    datasets: list[tuple[str, Dataset]] = []
    for key in ("dataset_id", "eval_dataset_id"):
        dataset_id = getattr(spec, key)
        if dataset_id is None:
            continue
        try:
            datasets.append((key, datasets_service.get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)))
        except NotFound as error:
            problems.append(f"{key}: {error}")
    fields = set.intersection(*(set(d.fields) for _, d in datasets)) if datasets else None
    served = get_settings().served_hardware
    if model is not None and job_hardware(spec) not in served:
        problems.append(
            f"hardware {job_hardware(spec)!r}: this service's workers serve {', '.join(served)} "
            "(GRPO_HARDWARE_CLASSES); the job would wait for ever"
        )
    config = None
    try:
        config = GRPOConfig.from_dict(spec.hyperparameters.model_dump())
    except (ValueError, TypeError) as error:
        problems.append(str(error))
    lora = spec.hyperparameters.lora
    if config is not None and model is not None and (lora is None or "target_modules" not in lora.model_fields_set):
        # The model's own default LoRA targets (a models-file entry may name others than the attention projections).
        config = dataclasses.replace(
            config, lora=dataclasses.replace(config.lora, target_modules=default_target_modules(model))
        )
    if config is not None:
        problems += _limit_problems(config, get_settings(), fork=spec.init_from is not None)
        if spec.init_from is not None:
            problems += _fork_problems(session, tenant_id=tenant_id, spec=spec, config=config)
        if model is not None:
            problems += _model_problems(config, model, spec.base_model, datasets, get_settings())
    # An uploaded reward is named by its id and checked against this tenant's uploads; the rest by the registry.
    uploaded = [r for r in spec.rewards if is_tenant_reward(r.name)]
    registered = [r for r in spec.rewards if not is_tenant_reward(r.name)]
    taken = set.union(*(set(d.fields) for _, d in datasets)) if datasets else None  # a param must not shadow any
    problems += rewards_service.tenant_reward_problems(
        session, tenant_id=tenant_id, refs=uploaded, fields=fields, taken=taken
    )
    resolved = []
    if registered:
        try:
            resolved = resolve_rewards([RewardSpec(r.name, r.weight, r.params) for r in registered], fields)
        except RewardSpecError as error:
            problems.extend(error.problems)
        else:
            problems += _reward_problems(resolved, datasets)
    if spec.rewards and all(r.weight == 0 for r in spec.rewards) and len(resolved) == len(registered):
        problems.append("rewards: every weight is 0, so every advantage would be 0 and nothing would train")
    if config is not None:
        problems += _guardrail_problems(spec, config)
    if problems:
        raise InvalidInput("the job spec is invalid; nothing was queued", problems)
    assert config is not None
    return config


def _over(field: str, value: int, limit: int, setting: str, what: str = "") -> str:
    return f"hyperparameters.{field}: {value}{what} is above the operator's limit of {limit} (GRPO_{setting.upper()})"


def _limit_problems(config: GRPOConfig, settings: Settings, fork: bool = False) -> list[str]:
    """The operator's upper bounds on the sizes a spec sets (service_core/settings.py). A fork saves one checkpoint more
    (step 0, the parent's adapter)."""
    single = [
        ("group_size", config.group_size, "max_group_size"),
        ("prompts_per_step", config.prompts_per_step, "max_prompts_per_step"),
        ("num_iterations", config.num_iterations, "max_num_iterations"),
        ("eval_samples_per_prompt", config.eval_samples_per_prompt, "max_eval_samples_per_prompt"),
        ("max_steps", config.max_steps, "max_steps"),
        ("max_new_tokens", config.max_new_tokens, "max_new_tokens"),
        ("lora.r", config.lora.r, "max_lora_rank"),
        ("processes", config.processes, "max_processes_per_job"),
    ]
    problems = [
        _over(field, value, getattr(settings, setting), setting)
        for field, value, setting in single
        if value > getattr(settings, setting)
    ]
    completions = config.group_size * config.prompts_per_step
    if completions > settings.max_completions_per_step:
        problems.append(
            _over(
                "group_size x prompts_per_step",
                completions,
                settings.max_completions_per_step,
                "max_completions_per_step",
                " completions per step",
            )
        )
    # Every checkpoint is kept while the job runs (each is downloadable), so their number bounds the job's disk.
    saves = (config.max_steps - 1) // config.checkpoint_every + 1 if config.checkpoint_every else 1
    saves += fork
    if saves > settings.max_checkpoints_per_job:
        problems.append(
            f"hyperparameters.checkpoint_every: {config.checkpoint_every} with max_steps {config.max_steps} saves "
            f"{saves} checkpoints, above the operator's limit of {settings.max_checkpoints_per_job} "
            "(GRPO_MAX_CHECKPOINTS_PER_JOB); checkpoint less often"
        )
    updates = config.max_steps * config.num_iterations
    if config.warmup_steps > updates:
        problems.append(
            f"hyperparameters.warmup_steps: {config.warmup_steps} is more than the run's {updates} optimizer updates "
            f"(max_steps x num_iterations): the learning rate would never reach learning_rate"
        )
    return problems


def _fork_problems(session: Session, *, tenant_id: str, spec: JobCreate, config: GRPOConfig) -> list[str]:
    """What makes `spec.init_from` unusable: a parent that is not this tenant's job (another tenant's answers as
    one that does not exist), a step it saved no checkpoint at or whose files are gone, or a base model or LoRA
    shape the parent's adapter does not fit. lora.alpha must match too: it scales the adapter's output, so with
    another alpha the fork would not start from the parent's policy. lora.dropout may differ (GRPO's passes run
    without it)."""
    init = spec.init_from
    assert init is not None
    parent = None
    if artifacts.is_server_id(init.job_id):
        parent = session.scalar(_JOB_OF_TENANT, {"job_id": init.job_id, "tenant_id": tenant_id})
    if parent is None:
        return [f"init_from.job_id: job {init.job_id!r} not found"]
    problems = []
    if spec.base_model != parent.base_model:
        problems.append(
            f"base_model: {spec.base_model!r} is not the parent job's {parent.base_model!r}; a fork trains the "
            "parent's adapter, which fits only the base model it was trained on"
        )
    theirs = parent.hyperparameters["lora"]
    for name, mine, parents in [
        ("r", config.lora.r, theirs["r"]),
        ("alpha", f"{config.lora.alpha:g}", f"{theirs['alpha']:g}"),  # stored as a float: 8.0 is shown 8
        ("target_modules", sorted(config.lora.target_modules), sorted(theirs["target_modules"])),
    ]:
        if mine != parents:
            problems.append(
                f"hyperparameters.lora.{name}: {mine} is not the parent job's {parents}; a fork keeps the parent's "
                "adapter shape and scale (set it to the parent's)"
            )
    steps = session.scalars(
        select(CheckpointRow.step).where(CheckpointRow.job_id == parent.id).order_by(CheckpointRow.step)
    ).all()
    if init.step not in steps:
        shown = ", ".join(map(str, steps[:20])) + (", ..." if len(steps) > 20 else "")
        problems.append(
            f"init_from.step: job {parent.id} has no checkpoint at step {init.step}; "
            + (f"it has checkpoints at steps {shown}" if steps else "it has saved no checkpoint yet")
        )
    elif not all((artifacts.checkpoint_dir(parent.id, init.step) / name).is_file() for name in FORK_FILES):
        problems.append(
            f"init_from.step: the files of job {parent.id}'s checkpoint at step {init.step} are gone from the "
            "artifacts store; fork another step"
        )
    return problems


def _model_problems(
    config: GRPOConfig, model: BaseModelSpec, name: str, datasets: list[tuple[str, Dataset]], settings: Settings
) -> list[str]:
    """LoRA targets the model has, and prompts (as bounded from their bytes) plus max_new_tokens within its context
    and the operator's prompt and per-step token limits. A dataset uploaded before prompt sizes were recorded
    (max_prompt_bytes NULL) is not checked here."""
    problems = []
    unknown = [m for m in config.lora.target_modules if m not in model.linear_modules]
    if unknown:
        problems.append(
            f"hyperparameters.lora.target_modules: {unknown} are not linear layers of {name}; "
            f"valid: {', '.join(model.linear_modules)}"
        )
    for key, dataset in datasets:
        # An evaluation samples the whole eval set in one batch, as a step samples its prompts: the same bounds hold.
        completions = dataset.rows * config.eval_samples_per_prompt if key == "eval_dataset_id" else 0
        if completions > settings.max_completions_per_step:
            problems.append(
                f"eval_dataset_id {dataset.id}: its {dataset.rows} rows x hyperparameters.eval_samples_per_prompt "
                f"{config.eval_samples_per_prompt} is {completions} completions per evaluation, above the operator's "
                f"limit of {settings.max_completions_per_step} (GRPO_MAX_COMPLETIONS_PER_STEP); use fewer eval rows "
                "or samples"
            )
        if dataset.max_prompt_bytes is None or dataset.max_prompt_messages is None:
            continue
        prompt_tokens = model.prompt_token_bound(dataset.max_prompt_bytes, dataset.max_prompt_messages)
        where = f"{key} {dataset.id}: its longest prompt (at most {prompt_tokens} tokens, bounded by its UTF-8 bytes"
        if prompt_tokens > settings.max_prompt_tokens:
            problems.append(
                f"{where}) is above the operator's limit of {settings.max_prompt_tokens} prompt tokens "
                "(GRPO_MAX_PROMPT_TOKENS)"
            )
        if prompt_tokens + config.max_new_tokens > model.context_length:
            problems.append(
                f"{where}) plus hyperparameters.max_new_tokens {config.max_new_tokens} is "
                f"{prompt_tokens + config.max_new_tokens}, more than {name}'s context of {model.context_length} tokens; "
                "shorten the prompts or max_new_tokens"
            )
        if key == "dataset_id":
            sequences = config.group_size * config.prompts_per_step
            subject, per = "hyperparameters: group_size x prompts_per_step", "step"
        else:
            sequences = dataset.rows * config.eval_samples_per_prompt
            subject, per = f"eval_dataset_id {dataset.id}: rows x eval_samples_per_prompt", "evaluation"
        tokens = sequences * (prompt_tokens + config.max_new_tokens)
        if tokens > settings.max_tokens_per_step:
            problems.append(
                f"{subject} x (longest prompt + max_new_tokens) is {tokens} tokens per {per}, above the operator's "
                f"limit of {settings.max_tokens_per_step} (GRPO_MAX_TOKENS_PER_STEP)"
            )
    return problems


def _reward_problems(
    resolved: list[tuple[RewardFunction, Any, float]], datasets: list[tuple[str, Dataset]]
) -> list[str]:
    """A reward that reads a field as a number, pointed at a field that is not a number in every row. (Rewards that
    all weigh 0 are refused in validate_job_spec: one of weight 0 is scored and reported, which is useful; all of
    them leave nothing to learn.)"""
    problems = []
    for fn, params, _weight in resolved:
        for param in params.numeric_fields:
            field = getattr(params, param)
            for key, dataset in datasets:
                row = (dataset.non_numeric_fields or {}).get(field)
                if row is not None:
                    problems.append(
                        f"reward {fn.name!r}: params.{param} {field!r} must name a field holding a number in every row; "
                        f"row {row} of {key} {dataset.id} holds something else"
                    )
    return problems


def job_hardware(spec: JobCreate) -> str:
    """The hardware class a job asks for: its own `hardware`, else its model's, else cpu."""
    if spec.hardware is not None:
        return spec.hardware
    model = model_catalog().get(spec.base_model)
    return model.hardware if model is not None else "cpu"


def create_job(session: Session, *, tenant_id: str, spec: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """Validate and insert a queued job; returns (job, created). The same Idempotency-Key from the same tenant
    with the same spec returns the job it made the first time; with another spec it is a 409 (as payment APIs
    answer a reused key), never the first job in place of the one asked for. The caller commits, then enqueues."""
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replayed(existing, spec, idempotency_key), False
    config = validate_job_spec(session, tenant_id=tenant_id, spec=spec)
    _refuse_past_queued_cap(session, tenant_id=tenant_id)
    job = Job(
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        base_model=spec.base_model,
        hardware=job_hardware(spec),
        dataset_id=spec.dataset_id,
        eval_dataset_id=spec.eval_dataset_id,
        rewards=[r.model_dump() for r in spec.rewards],
        hyperparameters=config.to_dict(),
        stop_when=stop_when_of(spec).to_dict(),
        max_steps=config.max_steps,
        status="queued",
    )
    if spec.init_from is not None:
        job.parent_job_id, job.parent_step = spec.init_from.job_id, spec.init_from.step
        job.parent_optimizer = spec.init_from.optimizer
    job.enqueued_at = utcnow()
    session.add(job)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert: return its job.
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _replayed(existing, spec, idempotency_key), False
    record_event(session, job_id=job.id, type="status", data={"status": "queued"})
    return job, True


QUEUED_RETRY_AFTER_SECONDS = 60  # a queue shortens as jobs start, and jobs run for minutes at least


def _refuse_past_queued_cap(session: Session, *, tenant_id: str) -> None:
    """429 when the tenant already has as many jobs queued as it may: its own limit where the operator set one
    (`grpo tenants set --max-queued`), else GRPO_MAX_QUEUED_JOBS_PER_TENANT. Running jobs do not count here: the cap
    on those makes a job wait its turn instead (worker/turns.py)."""
    own = session.scalar(select(Tenant.max_queued_jobs).where(Tenant.id == tenant_id))
    limit = get_settings().max_queued_jobs_per_tenant if own is None else own
    queued = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id, Job.status == "queued")) or 0
    if queued >= limit:
        source = (
            "GRPO_MAX_QUEUED_JOBS_PER_TENANT"
            if own is None
            else "this tenant's own limit, set by the operator with `grpo tenants set --max-queued`"
        )
        raise HTTPException(
            status_code=429,
            detail=f"too many queued jobs: this tenant has {queued} queued, the limit is {limit} ({source}); "
            f"retry after {QUEUED_RETRY_AFTER_SECONDS} s, or cancel a queued job",
            headers={"Retry-After": str(QUEUED_RETRY_AFTER_SECONDS)},
        )


def _replayed(job: Job, spec: JobCreate, idempotency_key: str) -> Job:
    """`job`, made earlier under `idempotency_key`, if `spec` asks for that same job; InvalidInput (409) naming
    what differs otherwise. Hyperparameters compare with their defaults filled in, as the job stores them."""
    try:
        hyperparameters = GRPOConfig.from_dict(spec.hyperparameters.model_dump()).to_dict()
    except (ValueError, TypeError):
        hyperparameters = spec.hyperparameters.model_dump()  # invalid now, so unlike the stored (valid) ones
    requested = {
        "base_model": spec.base_model,
        "hardware": job_hardware(spec),
        "dataset_id": spec.dataset_id,
        "eval_dataset_id": spec.eval_dataset_id,
        "rewards": [reward.model_dump() for reward in spec.rewards],
        "hyperparameters": hyperparameters,
        "init_from": spec.init_from.model_dump() if spec.init_from is not None else None,
        "stop_when": stop_when_of(spec).to_dict(),
    }
    differing = [name for name, value in requested.items() if getattr(job, name) != value]
    if differing:
        raise InvalidInput(
            f"Idempotency-Key {idempotency_key!r} was already used for job {job.id} with another spec "
            f"({', '.join(differing)} differ); use a new key for a new job",
            status_code=409,
        )
    return job


# Built once: building the statement (the ORM's comparisons, then its cache key) cost a third of the query.
# A deleted job reads as one that does not exist, here and wherever a tenant names a job.
_JOB_OF_TENANT = select(Job).where(
    Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"), Job.deleted_at.is_(None)
)


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    if not artifacts.is_server_id(job_id):  # as in get_dataset
        raise NotFound("job", job_id)
    job = session.scalar(_JOB_OF_TENANT, {"job_id": job_id, "tenant_id": tenant_id})
    if job is None:
        raise NotFound("job", job_id)
    return job


def list_jobs(
    session: Session, *, tenant_id: str, status: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job).where(Job.tenant_id == tenant_id, Job.deleted_at.is_(None))
    if status:
        query = query.where(Job.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return list(jobs), count or 0


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops before its next step (the worker
    checks between steps). Cancelling a finished job changes nothing."""
    if not artifacts.is_server_id(job_id):
        raise NotFound("job", job_id)
    # Flag first, read after: the UPDATE holds the write lock (SQLite) or the row (PostgreSQL) until the commit, so
    # the step read below is the last one the worker finished before the request took effect, and the job ends at
    # most one step later. Reading first let the worker finish steps between the read and the write.
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    job = session.scalar(
        _JOB_OF_TENANT.execution_options(populate_existing=True), {"job_id": job_id, "tenant_id": tenant_id}
    )
    if job is None:
        raise NotFound("job", job_id)
    if job.status == "queued":
        set_status(session, job=job, status="cancelled")
    return job


# What a deleted job leaves no reader for (every read goes through get_job): removed with it. Usage rows stay, as usage
# is history, and so does the job's own row (see delete_job).
_JOB_RECORDS = (CheckpointRow, MetricRow, Event, SampleRow, RewardOutput, PromptStats, PromptStatStep)


def delete_job(session: Session, *, tenant_id: str, job_id: str) -> None:
    """Mark a finished job deleted and remove the rows about it (its checkpoints, metrics, events, samples, reward
    output, prompt statistics). Refused (409) while it is queued or running (cancel it first), and while a queued or
    running fork starts from one of its checkpoints and has not saved its own step 0 yet (naming the forks). The job
    row itself stays, marked: forks name it as their parent and usage counts it. The caller commits, then removes its
    folder (checkpoints and adapter archives) with artifacts.remove_tree(artifacts.job_dir(job_id))."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status not in TERMINAL_STATUSES:
        raise InvalidInput(
            f"job {job_id} is {job.status}; cancel it first (POST /v1/jobs/{job_id}/cancel), then delete it once it "
            "has ended",
            status_code=409,
        )
    own_step_0 = exists().where(CheckpointRow.job_id == Job.id, CheckpointRow.step == 0)
    waiting_forks = session.scalars(
        select(Job.id)
        .where(
            Job.parent_job_id == job_id,
            Job.status.not_in(TERMINAL_STATUSES),
            Job.deleted_at.is_(None),
            ~own_step_0,
        )
        .order_by(Job.created_at, Job.id)
    ).all()
    if waiting_forks:
        raise InvalidInput(
            f"job {job_id} has checkpoints that queued or running fork(s) {', '.join(waiting_forks)} start from and "
            "have not copied yet; wait until they have started (saved their step 0) or cancel them, then delete it",
            status_code=409,
        )
    # Compare-and-set on a finished, undeleted job: a second delete at the same time finds nothing to do.
    marked = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(TERMINAL_STATUSES), Job.deleted_at.is_(None))
        .values(deleted_at=utcnow(), idempotency_key=None)  # the key may be used again for a new job
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).first()
    if marked is None:
        raise NotFound("job", job_id)
    for table in _JOB_RECORDS:
        session.execute(delete(table).where(table.job_id == job_id).execution_options(synchronize_session=False))


_CHILDREN = (
    select(Job.id, Job.parent_step, Job.status)
    .where(Job.parent_job_id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"), Job.deleted_at.is_(None))
    .order_by(Job.created_at, Job.id)
    .limit(CHILDREN_SHOWN)
)


def job_children(session: Session, *, tenant_id: str, job_id: str) -> tuple[list[JobChild], int]:
    """The jobs forked from `job_id` (the first CHILDREN_SHOWN, oldest first) and how many there are."""
    rows = session.execute(_CHILDREN, {"job_id": job_id, "tenant_id": tenant_id}).all()
    children = [JobChild(id=row.id, step=row.parent_step, status=row.status) for row in rows]
    count = len(children)
    if count == CHILDREN_SHOWN:  # there may be more: count them (a fork's parent is always the same tenant's)
        count = session.scalar(select(func.count()).where(Job.parent_job_id == job_id, Job.deleted_at.is_(None))) or 0
    return children, count


def job_public(job: Job, children: tuple[list[JobChild], int] | None = None) -> JobPublic:
    """The job as the API shows it; `children` (job_children's answer) only where GET /v1/jobs/{id} lists them."""
    return JobPublic(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        base_model=job.base_model,
        hardware=job.hardware,
        dataset_id=job.dataset_id,
        eval_dataset_id=job.eval_dataset_id,
        rewards=[StoredRewardRef(**r) for r in job.rewards],
        hyperparameters=job.hyperparameters,
        parent_job_id=job.parent_job_id,
        parent_step=job.parent_step,
        parent_optimizer=job.parent_optimizer,
        children=children[0] if children is not None else None,
        children_count=children[1] if children is not None else None,
        progress=Progress(step=job.step, max_steps=job.max_steps, fraction=round(job.step / job.max_steps, 4)),
        cancel_requested=job.cancel_requested,
        worker_host=job.worker_host,
        error=job.error,
        # Jobs from before guardrails ran with none: the defaults.
        stop_when=job.stop_when or StopWhen().to_dict(),
        stopped_early=StoppedEarly(**job.stopped_early) if job.stopped_early else None,
        adapter_step=job.adapter_step,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
