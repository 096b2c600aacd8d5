"""The API's bodies as the client returns them: TypedDicts over the JSON (api/schemas.py is the source of truth),
so a field the server adds later passes through untouched. Times are ISO 8601 strings, as sent.
tests/api/test_client_types.py holds each one's fields to the API's OpenAPI schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

# The client imports nothing of the server: these copy service_core/models.py's, and tests/api/test_status_contract.py
# holds them equal to what the API's schema says.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
RewardShape = Literal["per_sample", "batch"]


class Dataset(TypedDict):
    id: str
    name: str
    rows: int
    fields: list[str]
    sha256: str
    bytes: int
    created_at: str


class Model(TypedDict):
    name: str
    description: str
    context_length: int
    linear_modules: list[str]
    parameters: int
    has_chat_template: bool
    default_target_modules: list[str]
    builtin: bool


class Reward(TypedDict):
    kind: Literal["builtin", "plugin", "uploaded"]
    name: str
    description: str
    params_schema: dict[str, Any]
    fields: list[str]
    id: str | None
    sha256: str | None
    shape: RewardShape | None
    created_at: str | None


class RewardRef(TypedDict):
    """One of a job's rewards: a built-in or plugin name, or an uploaded reward's id."""

    name: str
    weight: NotRequired[float]
    params: NotRequired[dict[str, Any]]


class JobReward(TypedDict):
    """One of a job's rewards as the job stores it: every field filled in."""

    name: str
    weight: float
    params: dict[str, Any]


class Progress(TypedDict):
    step: int
    max_steps: int
    fraction: float


class JobChild(TypedDict):
    """A job forked from another: `step` is the parent's checkpoint it started from."""

    id: str
    step: int
    status: JobStatus


class StoppedEarly(TypedDict):
    """What ended a job before max_steps: a stop_when condition (`reason`), at `step`, with the figures behind it."""

    reason: str
    step: int
    values: dict[str, float | None]
    message: str


class Job(TypedDict):
    id: str
    status: JobStatus
    base_model: str
    hardware: str
    dataset_id: str
    eval_dataset_id: str | None
    rewards: list[JobReward]
    hyperparameters: dict[str, Any]
    parent_job_id: str | None
    """A fork's parent job; None for a job that started from a fresh adapter."""
    parent_step: int | None
    parent_optimizer: bool
    children: list[JobChild] | None
    """Jobs forked from this one (the first 100); None in lists and in a cancel's answer."""
    children_count: int | None
    progress: Progress
    cancel_requested: bool
    worker_host: str | None
    error: str | None
    stop_when: dict[str, Any]
    stopped_early: StoppedEarly | None
    adapter_step: int | None
    """The step GET .../adapter serves when a guardrail picked the best evaluation's; None: the last checkpoint."""
    created_at: str
    started_at: str | None
    finished_at: str | None


class Metric(TypedDict):
    step: int
    kind: Literal["train", "eval"]
    values: dict[str, float | None]


class Checkpoint(TypedDict):
    step: int
    bytes: int
    sha256: str
    created_at: str


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: `type` is status, metrics, checkpoint or warning; `data` the parsed JSON."""

    id: int | None
    type: str
    data: Any

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.type, "data": self.data}


@dataclass(frozen=True)
class Download:
    """An adapter archive written to `path`, its sha256 checked against the one the API sent."""

    path: Path
    step: int
    sha256: str
    bytes: int
