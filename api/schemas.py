"""Request and response models of the REST API, apart from the ORM classes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, in words a person can act on")
    errors: list[str] = Field(default_factory=list, description="Each problem, when there are several")


# Largest value an integer query or path parameter takes: the database's 32-bit INTEGER. Past it PostgreSQL (and
# SQLite past 64 bits) fail the query itself, which would be a 500, not the 422 a bad parameter gets.
MAX_INT = 2**31 - 1

ERROR_DESCRIPTIONS = {
    400: "The body could not be parsed at all (for instance JSON that is not UTF-8)",
    401: "Missing or invalid API key (header WWW-Authenticate: Bearer)",
    404: "No such object for this tenant: another tenant's id answers exactly like one that does not exist",
    409: "The Idempotency-Key was already used for a job with another spec",
    413: "Request body larger than the limit (GRPO_MAX_BODY_KB; uploads GRPO_MAX_UPLOAD_MB)",
    422: "Invalid request: `detail` says what is wrong, `errors` lists each problem",
    429: "Too many event streams open: this tenant's (GRPO_MAX_STREAMS_PER_TENANT) or this API process's "
    "(GRPO_MAX_STREAMS); `detail` names the cap, header Retry-After says when to try again",
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


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


class RewardPublic(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any] = Field(description="JSON schema of the reward's params")
    fields: list[str] = Field(description="Dataset fields the reward reads with its default params")


class RewardsPublic(BaseModel):
    data: list[RewardPublic]


class RewardRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="A registered reward name (GET /v1/rewards)", examples=["numeric_answer"])
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(description="A model name from GET /v1/models", examples=["tiny-random-llama"])
    dataset_id: str
    eval_dataset_id: str | None = Field(None, description="Held-out prompts for evaluation (never trained on)")
    rewards: list[RewardRef] = Field(min_length=1, max_length=16)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="GRPOConfig fields (group_size, epsilon, beta, learning_rate, max_steps, lora, ...); "
        "omitted ones take their defaults",
        examples=[{"group_size": 8, "max_steps": 20, "beta": 0.0}],
    )


class Progress(BaseModel):
    step: int
    max_steps: int
    fraction: float


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    base_model: str
    dataset_id: str
    eval_dataset_id: str | None
    rewards: list[RewardRef]
    hyperparameters: dict[str, Any] = Field(description="The full config the job runs with, defaults filled in")
    progress: Progress
    cancel_requested: bool
    worker_host: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


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


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool | None = None
    broker: bool | None = None
