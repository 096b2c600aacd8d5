"""Request and response models of the REST API, apart from the ORM classes."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model, field_validator

from grpo_core.config import GRPOConfig, LoraSettings, RewardSpec, declared_kind, field_docs
from grpo_core.guardrails import StopWhen
from grpo_core.preflight import VerdictLevel
from service_core.models import MAX_INT, JobStatus, PreflightStatus


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, in words a person can act on")
    errors: list[str] = Field(default_factory=list, description="Each problem, when there are several")


ERROR_DESCRIPTIONS = {
    400: "The body could not be parsed at all (for instance JSON that is not UTF-8)",
    401: "Missing or invalid API key (header WWW-Authenticate: Bearer)",
    404: "No such object for this tenant: another tenant's id answers exactly like one that does not exist",
    409: "Conflict with the current state: an Idempotency-Key already used for a job with another spec, or a reward "
    "that queued or running jobs use (`detail` names them)",
    413: "Request body larger than the limit (GRPO_MAX_BODY_KB; dataset uploads GRPO_MAX_UPLOAD_MB; reward uploads "
    "and dry runs 1 MiB)",
    422: "Invalid request: `detail` says what is wrong, `errors` lists each problem",
    429: "Too many at once: event streams open (GRPO_MAX_STREAMS_PER_TENANT, GRPO_MAX_STREAMS), reward checks "
    "running (GRPO_MAX_REWARD_CHECKS_PER_TENANT, GRPO_MAX_REWARD_CHECKS), this tenant's or this API process's, or "
    "pre-flights queued or running (GRPO_MAX_PREFLIGHTS_PER_TENANT), jobs queued (GRPO_MAX_QUEUED_JOBS_PER_TENANT, or "
    "the tenant's own limit); "
    "`detail` names the cap, header Retry-After says when to try again",
    503: "The server cannot do this at the moment (for reward code: no sandbox can run here, an operator's problem); "
    "`detail` says why",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses: every error the API sends has the ErrorBody shape (main.py's
    handlers), including 422, which FastAPI would otherwise document as its own HTTPValidationError."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in status_codes}


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    rows: int
    fields: list[str] = Field(description="Fields present in every row")
    sha256: str
    bytes: int
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class ModelPublic(BaseModel):
    name: str
    description: str
    context_length: int = Field(description="Longest prompt plus completion, in tokens")
    linear_modules: list[str] = Field(description="What lora.target_modules may name")
    parameters: int = Field(description="Number of parameters (tied weights counted once)")
    has_chat_template: bool = Field(
        description="Whether prompts are rendered with a chat template; without one the prompt text is used as it is"
    )
    default_target_modules: list[str] = Field(description="lora.target_modules of a job that names none")
    builtin: bool = Field(description="Ships with the service (false: registered by the operator)")


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


RewardShape = Literal["per_sample", "batch"]
STRING_BYTES = 64 * 1024  # a dry run's prompt, completion and fields: each at most this (characters, or JSON bytes)
PARAMS_BYTES = 16 * 1024  # an uploaded reward's params, as JSON (a dry run's and a job's)
SAMPLE_PAGE = 100  # most samples in one page of GET /v1/jobs/{id}/samples


class RewardPublic(BaseModel):
    kind: Literal["builtin", "plugin", "uploaded"] = Field(
        description="builtin: ships with the service; plugin: installed by the operator; uploaded: this tenant's "
        "own code (POST /v1/rewards), run only in a sandbox"
    )
    name: str = Field(
        description="Built-ins and plugins: the name a job's rewards[].name takes. Uploads: the label given at "
        "upload; a job names an upload by its `id`"
    )
    description: str
    params_schema: dict[str, Any] = Field(description="JSON schema of the reward's params")
    fields: list[str] = Field(
        description="Dataset fields the reward reads with its default params (uploads: the keyword names it "
        "requires, each a dataset field or a param)"
    )
    id: str | None = Field(None, description="Uploads only: what a job's rewards[].name takes (rwd_<hex>)")
    sha256: str | None = Field(None, description="Uploads only: sha256 of the source (UTF-8)")
    shape: RewardShape | None = Field(None, description="Uploads only: per_sample or batch")
    created_at: datetime | None = Field(None, description="Uploads only")


class RewardsPublic(BaseModel):
    data: list[RewardPublic]


class RewardCodePublic(BaseModel):
    """A tenant's uploaded reward, without its source."""

    model_config = ConfigDict(from_attributes=True)
    id: str = Field(description="What a job's rewards[].name takes", examples=["rwd_0123456789abcdef0123456789abcdef"])
    name: str = Field(description="A label: the `name` form field, or the file's name")
    sha256: str = Field(description="sha256 of the source (UTF-8)")
    bytes: int = Field(description="Size of the source in UTF-8 bytes")
    shape: RewardShape = Field(
        description="per_sample: reward(prompt, completion, **fields) -> float, called once per completion; batch: "
        "reward(prompts, completions, **kwargs) -> list[float], TRL's convention, dataset columns as keyword lists"
    )
    parameters: list[str] | None = Field(
        description="Keyword names `reward` accepts besides prompt(s) and completion(s); null when it takes "
        "**kwargs (any name)"
    )
    required: list[str] = Field(
        description="Keyword parameters without a default: each must be a dataset field or a param of the job"
    )
    created_at: datetime


class RewardSourcePublic(RewardCodePublic):
    source: str = Field(description="The Python source as uploaded")


class RewardTestItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | list[dict[str, Any]] = Field(
        description="The row's prompt: a string, or chat messages [{role, content}, ...]; at most 65536 characters "
        "(messages: as JSON)",
        examples=["What is 2 + 3?"],
    )
    completion: str = Field(
        max_length=STRING_BYTES, description="The completion to score; at most 65536 characters", examples=["5"]
    )
    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="The row's other columns, such as `answer`; at most 65536 bytes as JSON",
        examples=[{"answer": 5}],
    )

    @field_validator("prompt")
    @classmethod
    def _bounded_prompt(cls, prompt: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        size = len(prompt) if isinstance(prompt, str) else _json_bytes(prompt)
        if size > STRING_BYTES:
            raise ValueError(f"the prompt is {size} characters; the limit is {STRING_BYTES}")
        return prompt

    @field_validator("fields")
    @classmethod
    def _bounded_fields(cls, fields: dict[str, Any]) -> dict[str, Any]:
        size = _json_bytes(fields)
        if size > STRING_BYTES:
            raise ValueError(f"the fields are {size} bytes as JSON; the limit is {STRING_BYTES}")
        return fields


class RewardTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[RewardTestItem] = Field(
        min_length=1, description="What to score, one call per item; at most GRPO_MAX_REWARD_TEST_ITEMS (16)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The reward's params, as a job would pass them (uploads: keyword arguments, at most 16384 "
        "bytes as JSON)",
    )


class RewardItemResult(BaseModel):
    score: float | None = Field(description="The reward, or null when the call failed")
    error: str | None = Field(description="Why the call failed (raised, timed out, not a finite number); else null")


class RewardTestResult(BaseModel):
    results: list[RewardItemResult] = Field(description="One per item, in order")
    output: str = Field(description="What the reward printed (uploads: while loading and scoring), bounded")
    seconds: float = Field(description="Wall time of the dry run, the sandbox's or reward process's start included")
    shape: RewardShape | None = Field(None, description="Uploads only: how `reward` was called")


def _json_bytes(value: Any) -> int:
    """Size as JSON; ValueError for NaN or Infinity, which JSON (and PostgreSQL's json type) cannot carry."""
    try:
        return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
    except ValueError:
        raise ValueError("holds NaN or Infinity, which JSON cannot carry: use finite numbers") from None


class SamplePublic(BaseModel):
    id: int = Field(description="Pass as `after` to read the samples after this one")
    step: int
    position: int = Field(description="group x group_size + index")
    group: int = Field(description="The prompt's group within the step's stored groups")
    index: int = Field(description="The completion's index within its group")
    prompt: str | list[dict[str, Any]] = Field(
        description="The row's prompt or chat messages (long strings cut, with a marker)"
    )
    completion: str
    reward: float | None = Field(description="Weighted sum of the scores; null where it was not finite")
    advantage: float | None
    scores: dict[str, float | None] = Field(description="Each reward's score, by the name the job gave it")
    errors: dict[str, str] = Field(description="Rewards whose call failed for this sample (they scored 0), and why")


class SamplesPublic(BaseModel):
    data: list[SamplePublic]
    outputs: dict[str, dict[str, str]] = Field(
        description="Step (as a string) to reward name to what that reward printed during the step, for the steps "
        "in this page (tenant code only)"
    )
    next_cursor: int | None = Field(description="Pass as `after` for the next page; null when none is left")


_REWARD_WEIGHT = next(f for f in dataclasses.fields(RewardSpec) if f.name == "weight")


class RewardRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        description="A built-in or plugin reward's name, or the id of this tenant's uploaded reward (GET /v1/rewards)",
        examples=["numeric_answer"],
    )
    weight: float = Field(
        1.0,
        allow_inf_nan=False,
        ge=_REWARD_WEIGHT.metadata["ge"],
        le=_REWARD_WEIGHT.metadata["le"],
        description=field_docs(RewardSpec)["weight"] + " 0 is allowed: the reward is then scored and reported with "
        "the step's metrics (reward/<name>) but does not train; all weights 0 is refused.",
    )
    params: dict[str, Any] = Field(default_factory=dict)


# --- the hyperparameters, generated from GRPOConfig ----------------------------------------------------------------

_FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# JSON has no tuple: a list of strings is what a client sends (strict, so a string is not split into letters).
_KINDS: dict[str, Any] = {
    "int": StrictInt,
    "float": _FiniteFloat,
    "float | None": _FiniteFloat | None,
    "int | None": StrictInt | None,
    "str": StrictStr,
    "bool": StrictBool,
    "tuple[str, ...]": list[StrictStr],
}
_RANGE_KEYS = ("ge", "gt", "le", "lt", "min_length")


def _typed_fields(cls: type) -> dict[str, Any]:
    """pydantic (annotation, Field) pairs for a config dataclass's fields: type, default, range and description all
    read from the dataclass (its field metadata and the docstring under each field), so the two cannot drift.
    Strict types: 2.5, "8" and true are not integers. Every integer stays within the database's INTEGER."""
    docs = field_docs(cls)
    prefix = "lora." if cls is LoraSettings else ""
    typed: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name == "lora":
            continue
        kind = declared_kind(prefix + spec.name, spec)
        annotation = _KINDS[kind]
        if "choices" in spec.metadata:
            annotation = Literal[tuple(spec.metadata["choices"])]  # type: ignore[valid-type]
        bounds = {key: spec.metadata[key] for key in _RANGE_KEYS if key in spec.metadata}
        if kind == "int":
            bounds["le"] = min(bounds.get("le", MAX_INT), MAX_INT)
            if "ge" not in bounds and "gt" not in bounds:
                bounds["ge"] = -MAX_INT - 1
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        default = list(default) if isinstance(default, tuple) else default
        typed[spec.name] = (annotation, Field(default, description=docs.get(spec.name), **bounds))
    return typed


_STRICT_OBJECT = ConfigDict(extra="forbid")
LoraHyperparameters = create_model(
    "LoraHyperparameters", __config__=_STRICT_OBJECT, __doc__=LoraSettings.__doc__, **_typed_fields(LoraSettings)
)
Hyperparameters = create_model(
    "Hyperparameters",
    __config__=_STRICT_OBJECT,
    __doc__="GRPOConfig's fields (grpo_core/config.py), each with its type, range, default and meaning.",
    **_typed_fields(GRPOConfig),
    lora=(
        LoraHyperparameters | None,
        Field(default_factory=lambda: LoraHyperparameters(), description=field_docs(GRPOConfig).get("lora")),
    ),
)


Hardware = Literal["cpu", "gpu"]


CHILDREN_SHOWN = 100  # most children GET /v1/jobs/{id} lists (children_count counts them all)


class InitFrom(BaseModel):
    """A checkpoint of one of this tenant's jobs to start from (a fork)."""

    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(max_length=40, description="The parent job: one of this tenant's", examples=["job_0123"])
    step: StrictInt = Field(
        ge=0, le=MAX_INT, description="A step the parent saved a checkpoint at (GET /v1/jobs/{id}/checkpoints)"
    )
    optimizer: StrictBool = Field(
        False,
        description="Carry the checkpoint's AdamW moments and update count (false: a fresh optimizer). The "
        "learning rate, its schedule and weight decay are always this job's own",
    )


StopWhenSettings = create_model(
    "StopWhenSettings", __config__=_STRICT_OBJECT, __doc__=StopWhen.__doc__, **_typed_fields(StopWhen)
)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(description="A model name from GET /v1/models", examples=["tiny-random-llama"])
    hardware: Hardware | None = Field(
        None,
        description="The workers that may run the job: `gpu` (a GPU worker) or `cpu` (any worker: GPU workers take "
        "these too). Default: the model's (GET /v1/models), else cpu",
    )
    dataset_id: str
    eval_dataset_id: str | None = Field(None, description="Held-out prompts for evaluation (never trained on)")
    rewards: list[RewardRef] = Field(min_length=1, max_length=16)
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters(),
        description="GRPOConfig fields; omitted ones take their defaults. The operator's limits (GRPO_MAX_*) may "
        "refuse values inside these ranges.",
        examples=[{"group_size": 8, "max_steps": 20, "beta": 0.0}],
    )
    init_from: InitFrom | None = Field(
        None,
        description="Fork: start from this checkpoint's adapter instead of a fresh one, with this spec's own rewards, "
        "datasets and hyperparameters. base_model, lora.r, lora.alpha and lora.target_modules must be the parent's. "
        "The adapter is copied into this job's step-0 checkpoint when it starts",
    )
    stop_when: StopWhenSettings | None = Field(
        None,
        description="Guardrails: conditions that end the job before max_steps (each off unless set); null or "
        "omitted: none, and a run fails at 3 steps that are not finite.",
        examples=[{"kl_above": 0.5, "kl_steps": 3, "eval_patience": 3}],
    )


class StoredRewardRef(BaseModel):
    """A reward as a job stores it: read back without the submit-time bounds, so a row stored under other rules
    still serialises (a bound tightened later must not turn a read into a 500)."""

    name: str
    weight: float
    params: dict[str, Any]


class Progress(BaseModel):
    step: int
    max_steps: int
    fraction: float


class JobChild(BaseModel):
    id: str
    step: int = Field(description="The parent's checkpoint step it forked from")
    status: JobStatus


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    base_model: str
    hardware: str = Field(description="The workers that may run it: cpu (any) or gpu")
    dataset_id: str
    eval_dataset_id: str | None
    rewards: list[StoredRewardRef]
    hyperparameters: dict[str, Any] = Field(description="The full config the job runs with, defaults filled in")
    parent_job_id: str | None = Field(None, description="A fork's parent job (its init_from.job_id); else null")
    parent_step: int | None = Field(None, description="The parent's checkpoint step a fork started from; else null")
    parent_optimizer: bool = Field(False, description="Whether a fork carried the parent checkpoint's optimizer state")
    children: list[JobChild] | None = Field(
        None,
        description=f"Jobs forked from this one, oldest first, at most {CHILDREN_SHOWN}. In the answers of GET "
        "/v1/jobs/{id} and POST /v1/jobs; null in lists and in a cancel's answer",
    )
    children_count: int | None = Field(
        None, description="How many jobs were forked from this one (null where children is)"
    )
    progress: Progress
    cancel_requested: bool
    worker_host: str | None
    error: str | None
    stop_when: dict[str, Any] = Field(description="The guardrails the job runs with, defaults filled in")
    stopped_early: StoppedEarly | None = Field(
        None, description="Set when a stop_when condition ended the job (it then succeeded) before max_steps"
    )
    adapter_step: int | None = Field(
        None,
        description="The step of the job's adapter (GET .../adapter): the best evaluation's when a guardrail ended "
        "it with stop_when.adapter best; null: its last checkpoint",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class StoppedEarly(BaseModel):
    """What ended a job before max_steps (grpo_core.guardrails.StopReason)."""

    reason: str = Field(description="The stop_when condition: kl_above, reward_drop, eval_patience, flat_steps or "
                        "truncated_steps")  # fmt: skip
    step: int
    values: dict[str, float | None] = Field(description="The figures that decided it")
    message: str


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="Jobs matching the filter, over all pages")


class MetricPublic(BaseModel):
    step: int
    kind: Literal["train", "eval"]
    values: dict[str, float | None] = Field(description="Metric name to value; null where it was NaN or infinite")


class MetricsPublic(BaseModel):
    data: list[MetricPublic]
    next_after_step: int | None = Field(description="Pass as after_step for the next page; null when none is left")


class CheckpointPublic(BaseModel):
    step: int
    bytes: int
    sha256: str = Field(description="sha256 of the adapter archive this checkpoint downloads as")
    created_at: datetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


PROMPT_PAGE = 200  # most prompts in one page of GET /v1/jobs/{id}/prompts (each cut like a sample's)
PromptOrder = Literal["hardest", "easiest", "most_improved"]


class JobPromptPublic(BaseModel):
    row: int = Field(description="The prompt's row in the job's training dataset (0-based; blank lines not counted)")
    prompt: str | list[dict[str, Any]] | None = Field(
        description="The row's prompt or chat messages (long strings cut, with a marker); null when the dataset "
        "file cannot be read"
    )
    times_sampled: int = Field(description="Groups sampled from it (with dynamic_sampling, dropped groups too)")
    mean_reward: float | None = Field(
        description="Mean weighted reward of all its completions (finite ones); null when none was finite"
    )
    zero_variance_share: float = Field(
        description="Share of its groups whose rewards were all equal: groups that taught nothing"
    )
    first_step: int = Field(description="The step it was first sampled in")
    first_reward: float | None = Field(description="Mean reward of its group at first sight")
    latest_step: int = Field(description="The step it was last sampled in")
    latest_reward: float | None = Field(description="Mean reward of its group at latest sight")
    improvement: float | None = Field(description="latest_reward - first_reward")


class JobPromptsPublic(BaseModel):
    data: list[JobPromptPublic]
    count: int = Field(description="Prompts the job has sampled, over all pages")


class SandboxLevel(BaseModel):
    """How this API process isolates tenant reward code (its upload checks and dry runs; each worker logs its own)."""

    level: Literal["full", "without_cgroup", "unsandboxed", "refused"] = Field(
        description="full: bubblewrap, the seccomp filter and a cgroup per sandbox; without_cgroup and unsandboxed: "
        "weaker limits the operator opted into (GRPO_REWARD_ALLOW_WITHOUT_CGROUP, GRPO_REWARD_ALLOW_UNSANDBOXED); "
        "refused: tenant code is not run here"
    )
    uid: int | None = Field(description="Host uid tenant code runs as (never 0)")
    bubblewrap: str = Field(description="'ok', or why bubblewrap cannot sandbox here")
    cgroup: str = Field(description="Where sandbox cgroups are made, or why there are none")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool | None = None
    broker: bool | None = None
    sandbox: SandboxLevel | None = None


class PreflightRewardFigures(BaseModel):
    name: str
    mean: float = Field(description="Mean raw score of this reward over the sampled completions")
    errors: int = Field(description="Completions this reward failed on (raised, timed out, not a number; scored 0)")


class PreflightResult(BaseModel):
    """The base model at the job's temperature and G on the first `prompts` prompts the job would train on, and one
    real GRPO step of the job timed on the worker (grpo_core/preflight.py)."""

    prompts: int
    group_size: int
    reward_mean: float
    reward_std: float
    rewards: list[PreflightRewardFigures] = Field(description="Each reward function of the spec, in its order")
    flat_groups: int = Field(description="Groups whose rewards were all equal: zero advantage, nothing learned")
    flat_fraction: float
    flat_low_groups: int = Field(description="Flat groups at the lowest reward seen")
    flat_high_groups: int = Field(description="Flat groups at the highest reward seen")
    at_lowest_fraction: float = Field(description="Samples at the lowest reward seen (0 when all scored the same)")
    at_highest_fraction: float = Field(description="Samples at the highest reward seen (0 when all scored the same)")
    completion_length_mean: float = Field(description="Tokens")
    truncated_fraction: float = Field(description="Completions cut at max_new_tokens")
    seconds_per_step: float = Field(description="One GRPO step of this job, measured on the worker")
    load_seconds: float = Field(description="Loading the model on the worker, measured")
    evaluations: int = Field(description="Held-out evaluations the job would run")
    seconds_per_evaluation: float = Field(description="Estimated from the measured sampling pace")
    estimated_job_seconds: float = Field(
        description="max_steps x seconds_per_step + evaluations x seconds_per_evaluation + load_seconds"
    )
    verdict: VerdictLevel = Field(
        description="ok; too_hard (almost every group, or answer, at the lowest reward); too_easy (at the "
        "highest); no_signal (almost every group flat otherwise); reward_errors (a reward failed on many samples)"
    )
    message: str = Field(description="The verdict in words, with the numbers behind it")
    warnings: list[str] = Field(description="Problems that do not decide the verdict, such as truncation")


class PreflightPublic(BaseModel):
    id: str
    status: PreflightStatus
    base_model: str
    hardware: str
    dataset_id: str
    eval_dataset_id: str | None
    rewards: list[StoredRewardRef]
    hyperparameters: dict[str, Any] = Field(description="The full config, defaults filled in, as the job would run")
    prompts: int = Field(description="Prompts sampled (GRPO_PREFLIGHT_PROMPTS, at most the dataset's rows)")
    result: PreflightResult | None = Field(description="Set once status is succeeded")
    worker_host: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PreflightsPublic(BaseModel):
    data: list[PreflightPublic]
    count: int = Field(description="Pre-flights of this tenant, over all pages")


class UsageFigures(BaseModel):
    """What was used: the figures each job step and pre-flight records (worker/writes.py)."""

    compute_seconds: float = Field(
        description="Wall-clock seconds of training steps times the processes (devices) each ran on, and of "
        "pre-flights; model loading, evaluations and checkpoints are not counted"
    )
    compute_seconds_by_hardware: dict[str, float] = Field(
        description="compute_seconds by hardware class (cpu, gpu), each class present"
    )
    tokens_sampled: int = Field(description="Completion tokens generated, groups dynamic sampling dropped included")
    tokens_trained: int = Field(description="Completion tokens of the groups trained on, times num_iterations")
    reward_calls: int = Field(description="Completions scored, once per reward function")
    reward_seconds: float = Field(description="Seconds spent scoring completions")


class UsageDay(UsageFigures):
    day: date = Field(description="UTC")


class UsageSource(UsageFigures):
    id: str = Field(description="The job's or pre-flight's id")
    kind: Literal["job", "preflight"]
    hardware: str


class UsagePublic(BaseModel):
    start: date = Field(description="First day counted (UTC)")
    end: date = Field(description="Last day counted (UTC), inclusive")
    by_day: list[UsageDay] = Field(description="Each day with any usage, in order")
    by_job: list[UsageSource] = Field(description="Each job and pre-flight with usage in the range, by id")
    totals: UsageFigures
    storage_bytes: int = Field(
        description="Bytes stored for this tenant now, whatever the range: datasets, uploaded rewards, and its jobs' "
        "checkpoints as their adapter archives; deleting a dataset or a job, and checkpoint expiry, lower it"
    )
    storage_bytes_by_kind: dict[str, int] = Field(
        description="storage_bytes by what is stored: datasets, rewards, checkpoints (each present)"
    )
