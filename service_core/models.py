"""Database tables. The schema changes only through Alembic migrations (migrations/versions)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from grpo_core import config


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator):
    """A timestamp that always comes back timezone-aware, in UTC. PostgreSQL keeps the offset; SQLite drops it and
    returns naive datetimes, which the API would then print without one ("2026-01-01T12:00:00", not RFC 3339
    date-time as its OpenAPI says). Values are written in UTC, so a naive one read back is UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fair turns (worker/turns.py): the tenant's share of the workers against other tenants', and its own caps on
    # running and queued jobs (NULL: the service's GRPO_MAX_RUNNING_JOBS_PER_TENANT and
    # GRPO_MAX_QUEUED_JOBS_PER_TENANT). The operator sets them with `grpo tenants set`.
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    # When a job of this tenant last took a turn: between tenants equally served, the one served longest ago (or
    # never) goes first.
    last_turn_at: Mapped[datetime | None] = mapped_column()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # Looked up by prefix, then the sha256 of the whole key is compared in constant time.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    rows: Mapped[int] = mapped_column(Integer)
    fields: Mapped[list[Any]] = mapped_column()
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    # Recorded at upload so a job spec is checked without the file (grpo_core.data.DatasetSummary); NULL for
    # datasets uploaded before they were recorded.
    max_prompt_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_prompt_messages: Mapped[int | None] = mapped_column(Integer)
    non_numeric_fields: Mapped[dict[str, Any] | None] = mapped_column()  # field -> first row (1-based) not a number
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by DELETE /v1/datasets/{id}, which removes the file: the row stays because finished jobs and pre-flights
    # still name it (their foreign key), and every read of the tenant's datasets skips it.
    deleted_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    base_model: Mapped[str] = mapped_column(String(200))
    # The queue it goes to (service_core/queue.py). A column added after jobs existed keeps the server default its
    # migration filled them with (here and below): the ORM states the schema as the migrations leave it.
    hardware: Mapped[str] = mapped_column(String(20), default="cpu", server_default="cpu")
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    rewards: Mapped[list[Any]] = mapped_column()
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()
    # A fork's lineage: the job and checkpoint step it started from, and whether it carried that checkpoint's
    # optimizer state. NULL (and false) for a job trained from a fresh adapter.
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    parent_step: Mapped[int | None] = mapped_column(Integer)
    parent_optimizer: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    @property
    def init_from(self) -> dict[str, Any] | None:
        """The `init_from` the job was submitted with (None for a job that is not a fork)."""
        if self.parent_job_id is None:
            return None
        return {"job_id": self.parent_job_id, "step": self.parent_step, "optimizer": self.parent_optimizer}

    @property
    def processes(self) -> int:
        """Processes the job trains on (its hyperparameters' `processes`; jobs from before it had one)."""
        return int(self.hyperparameters.get("processes", 1))

    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)  # one of JOB_STATUSES
    step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Lease: the worker that claimed the job (compare-and-set on attempt and owner) renews lease_expires_at while
    # it trains; an expired lease means the worker died and the reconciler queues the job again.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    steps_computed: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0"
    )  # training steps run over all attempts
    worker_host: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Guardrails (grpo_core.guardrails): the spec's conditions, what ended the job early, and the step of its adapter
    # when that is not its last checkpoint (the best evaluation's). Null on jobs from before them: the defaults.
    stop_when: Mapped[dict[str, Any] | None] = mapped_column()
    stopped_early: Mapped[dict[str, Any] | None] = mapped_column()
    adapter_step: Mapped[int | None] = mapped_column(Integer)
    # Set by DELETE /v1/jobs/{id}, which removes its folder and the rows about it: the row stays because forks still
    # name it as their parent (their lineage then points at a job that reads as gone) and usage names it.
    deleted_at: Mapped[datetime | None] = mapped_column()


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "step", name="uq_metrics_job_kind_step"),
        # The metrics endpoint pages by step across both kinds: (job_id, step) serves its range scan in order.
        Index("ix_metrics_job_step", "job_id", "step"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))  # "train" (one per step) or "eval" (held-out evaluation)
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)  # size of the adapter archive served for download
    sha256: Mapped[str] = mapped_column(String(64))  # of that archive
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))  # "status", "metrics", "checkpoint", "warning"
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RewardCode(Base):
    """A tenant's own reward function: Python source checked in the sandbox at upload, immutable afterwards."""

    __tablename__ = "reward_functions"
    __table_args__ = (Index("ix_reward_functions_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rwd"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    shape: Mapped[str] = mapped_column(String(20))  # "per_sample" or "batch" (grpo_core/sandbox_child.py)
    # Keyword names `reward` accepts besides prompt(s) and completion(s); NULL when it takes **kwargs (any name).
    parameters: Mapped[list[Any] | None] = mapped_column()
    required: Mapped[list[Any]] = mapped_column()  # keyword parameters without a default: fields or params it needs
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SampleRow(Base):
    """One sampled completion of a step (the first GRPO_SAMPLE_GROUPS_PER_STEP groups), with its scores."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("job_id", "step", "position", name="uq_samples_job_step_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # group * group_size + index within the group
    # {group, index, prompt, completion, reward, advantage, scores: {reward: value}, errors: {reward: message}}
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RewardOutput(Base):
    """What one reward printed during one step (tenant code's print and stderr), bounded with a marker."""

    __tablename__ = "reward_outputs"
    __table_args__ = (UniqueConstraint("job_id", "step", "reward", name="uq_reward_outputs_job_step_reward"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    reward: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
"""Every status a job takes, in the order it goes through them: the one list the API's schema and metrics, the
dashboard (api/static/statuses.js, generated from it) and the client (grpo_client/types.py) are held to by
tests/api/test_status_contract.py."""
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
"""A job in one of these is finished for good: nothing moves it on."""
ACTIVE_STATUSES = tuple(status for status in JOB_STATUSES if status not in TERMINAL_STATUSES)

PreflightStatus = Literal["queued", "running", "succeeded", "failed"]
PREFLIGHT_STATUSES: tuple[str, ...] = get_args(PreflightStatus)

# Largest value an integer column, query or path parameter takes: the database's 32-bit INTEGER. Past it PostgreSQL
# (and SQLite past 64 bits) fail the query itself, which would be a 500, not the 422 a bad parameter gets. The same
# value caps every integer hyperparameter (grpo_core.config), so a spec the API accepts is one the worker runs.
MAX_INT = config.MAX_INT

HARDWARE_CLASSES = ("cpu", "gpu")  # a job's `hardware`: the queue it goes to (service_core/queue.py)


class PromptStats(Base):
    """Per-prompt difficulty: one dataset row's groups over a job's steps (worker/writes.py record_prompt_groups).
    A group's reward is the mean of its finite rewards (null when none was finite)."""

    __tablename__ = "prompt_stats"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)  # index in the job's training dataset
    groups: Mapped[int] = mapped_column(Integer)  # times sampled: one group of group_size completions each
    reward_sum: Mapped[float] = mapped_column()  # of every finite reward of its groups
    reward_count: Mapped[int] = mapped_column(Integer)  # how many rewards reward_sum adds
    zero_variance_groups: Mapped[int] = mapped_column(Integer)  # groups whose rewards were all equal
    first_step: Mapped[int] = mapped_column(Integer)
    first_reward: Mapped[float | None] = mapped_column()
    last_step: Mapped[int] = mapped_column(Integer)
    last_reward: Mapped[float | None] = mapped_column()


class PromptStatStep(Base):
    """A step whose groups are in prompt_stats: the same step run again after a resume adds nothing."""

    __tablename__ = "prompt_stat_steps"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)


class Preflight(Base):
    """A pre-flight: the base model sampled on a job spec's first prompts, its step timed, before any training. The
    spec is stored as a job's is; `result` holds grpo_core.preflight.report's figures once it succeeded."""

    __tablename__ = "preflights"
    __table_args__ = (
        Index("ix_preflights_tenant_status", "tenant_id", "status"),
        Index("ix_preflights_status_deadline", "status", "deadline_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pf"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    base_model: Mapped[str] = mapped_column(String(200))
    hardware: Mapped[str] = mapped_column(String(20))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    rewards: Mapped[list[Any]] = mapped_column()
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()
    prompts: Mapped[int] = mapped_column(Integer)  # how many prompts it samples (GRPO_PREFLIGHT_PROMPTS at submit)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # one of PREFLIGHT_STATUSES
    # A worker claims it (queued -> running, compare-and-set) with a deadline; the reconciler fails one still running
    # past it (its worker died or hung), so no pre-flight stays running forever.
    deadline_at: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    worker_host: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class Usage(Base):
    """What a job or a pre-flight used, one row per UTC day and hardware class, added to as it runs: by each training
    step the job records (worker/writes.py record_usage, in the transaction of the step's metric row, so a step run
    again after a resume adds nothing) and once by a pre-flight. GET /v1/usage and `grpo usage` sum these rows.

    compute_seconds: wall-clock seconds of the job's steps times the processes (devices) each ran on, or of the
    pre-flight's measurement; model loading, evaluations and checkpoints are not counted. The other figures are
    grpo_core.step.step_metrics' (see USAGE_FIGURES there)."""

    __tablename__ = "usage"
    # GET /v1/usage reads one tenant's rows over a range of days.
    __table_args__ = (Index("ix_usage_tenant_day", "tenant_id", "day"),)
    # A job's or a pre-flight's id (their prefixes tell them apart), with no foreign key: usage outlives what used it.
    source_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)  # UTC
    hardware: Mapped[str] = mapped_column(String(20), primary_key=True)  # one of HARDWARE_CLASSES
    kind: Mapped[str] = mapped_column(String(10))  # "job" or "preflight"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    compute_seconds: Mapped[float] = mapped_column(Float)
    tokens_sampled: Mapped[int] = mapped_column(BigInteger)
    tokens_trained: Mapped[int] = mapped_column(BigInteger)
    reward_calls: Mapped[int] = mapped_column(BigInteger)
    reward_seconds: Mapped[float] = mapped_column(Float)


USAGE_KINDS = ("job", "preflight")
