"""The service's one settings object, read from environment variables prefixed GRPO_ (API, worker, migrations).

Embedded default: everything under `data_dir` (./.grpo): a SQLite database and a Celery broker kept as files in
a folder (kombu's filesystem transport: no server, each message one file, safe for several local processes, and
it stays out of SQLite so the broker never competes with the API for the database's write lock).
Scaled out: GRPO_DATABASE_URL=postgresql+psycopg://... and GRPO_BROKER_URL=redis://..., data_dir on a shared store.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from grpo_core.device import DEVICE_FORMS, check_device_name
from grpo_core.sandbox import DEFAULT_GID, DEFAULT_UID, SandboxLimits
from service_core.models import HARDWARE_CLASSES, MAX_INT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRPO_")

    data_dir: Path = Field(
        Path(".grpo"), description="Database, broker folder, datasets and adapters (embedded default)"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/grpo.db")
    broker_url: str | None = Field(None, description="Celery broker URL; default filesystem:// under <data_dir>/broker")
    queue: str = Field(
        "grpo",
        description="Celery queue name: jobs that need no GPU go to it, GPU jobs to <queue>-gpu (service_core/queue.py)",
    )
    hardware_classes: str = Field(
        "cpu,gpu",
        description="Hardware classes the operator's workers serve (comma-separated, of cpu and gpu): a job asking "
        "for another is refused at submit",
    )
    worker_hardware: str = Field(
        "auto",
        pattern="^(auto|cpu|gpu)$",
        description="What this worker serves: gpu (GPU jobs and jobs that need none), cpu (only jobs that need no "
        "GPU), or auto (gpu when an NVIDIA driver reports a GPU, else cpu)",
    )
    max_upload_mb: float = Field(50.0, gt=0, description="Largest dataset upload, in MiB (413 past it)")
    max_body_kb: int = Field(256, gt=0, description="Largest JSON request body, in KiB")
    sqlite_busy_timeout_ms: int = Field(30_000, description="How long a SQLite writer waits for the lock")
    events_poll_seconds: float = Field(0.5, gt=0, description="How often the event stream looks for new events")
    max_streams_per_tenant: int = Field(
        8, ge=1, description="Event streams one tenant may hold open at once, per API process (429 past it)"
    )
    max_streams: int = Field(256, ge=1, description="Event streams open at once in one API process (429 past it)")
    lease_seconds: float = Field(
        60.0, gt=0, description="A worker that has not renewed its job's lease for this long is taken for dead"
    )
    reconcile_every_seconds: float = Field(10.0, gt=0, description="How often each worker looks for lost jobs")
    requeue_queued_after_seconds: float = Field(
        300.0, gt=0, description="A job queued this long with no worker taking it is sent to the broker again"
    )
    reward_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest one reward call may take: a built-in or plugin scoring a step's batch (past it its "
        "process is killed and the job fails naming the reward), or one call of a tenant's reward (past it the "
        "sandbox is killed and restarted, the call's samples fail, and the job goes on)",
    )
    reward_start_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest a tenant reward's sandbox may take to start and load its source (imports included): "
        "past it an upload is refused, and a job whose reward cannot start fails naming it",
    )
    # The sandbox for tenants' reward code (grpo_core/sandbox.py): one per job and reward, limits set before the
    # tenant's code runs.
    reward_memory_mb: int = Field(1024, ge=64, le=MAX_INT, description="Address space of a reward sandbox, MiB")
    reward_cpu_seconds: int = Field(
        3600, ge=1, le=MAX_INT, description="CPU seconds a reward sandbox may use over its life (then restarted)"
    )
    reward_max_processes: int = Field(
        16,
        ge=4,
        le=MAX_INT,
        description="Processes and threads a reward sandbox may hold (pids.max; bubblewrap's two count)",
    )
    reward_cpus: float = Field(
        1.0, gt=0, le=1024, description="CPU cores a reward sandbox may use (its cgroup's bound)"
    )
    reward_max_open_files: int = Field(64, ge=16, le=MAX_INT, description="Open files in a reward sandbox")
    reward_max_file_mb: int = Field(64, ge=1, le=MAX_INT, description="Largest file a reward sandbox may write, MiB")
    reward_tmp_mb: int = Field(256, ge=1, le=MAX_INT, description="Size of a reward sandbox's private /tmp, MiB")
    reward_output_chars: int = Field(
        65_536, ge=1024, le=MAX_INT, description="Printed output kept per reward call (the rest is cut, with a marker)"
    )
    reward_packages: str = Field(
        "",
        description="Folders (':'-separated, e.g. made with `pip install --target`) mounted read-only in the "
        "sandbox and put on its sys.path: the packages tenant reward code may import besides the standard library",
    )
    reward_allow_unsandboxed: bool = Field(
        False,
        description="DANGEROUS. Where bubblewrap cannot sandbox, run tenant reward code anyway, as the worker's user "
        "with only rlimits. Off: such a worker fails jobs that use tenant rewards, and the API refuses uploads",
    )
    reward_allow_without_cgroup: bool = Field(
        False,
        description="Where no cgroup can be made for a reward sandbox (cgroup v1 without root, v2 without a delegated "
        "folder), run tenant code anyway with rlimits only: shared memory, memfd and (under root) threads are then "
        "unbounded. Off: such a worker fails jobs that use tenant rewards, and the API refuses uploads",
    )
    sandbox_uid: int = Field(
        DEFAULT_UID,
        ge=1,
        le=2**32 - 2,
        description="Host uid tenant code runs as when the service runs as root (a service run as another user runs "
        "it as that user). The default owns no file and belongs to no other service",
    )
    sandbox_gid: int = Field(DEFAULT_GID, ge=1, le=2**32 - 2, description="Host gid tenant code runs as, with the uid")
    sandbox_python: str = Field(
        "auto",
        description="Interpreter of the reward sandbox: auto (the service's own when the sandbox's uid can reach it, "
        "else python3 on PATH), or a path whose folders that uid can read",
    )
    sandbox_cgroup: str = Field(
        "auto",
        description="Where each reward sandbox's cgroup is made: auto (cgroup v1 under the service's own cgroups, as "
        "root; cgroup v2 in /sys/fs/cgroup/grpo-sandbox when delegated), off, or a delegated cgroup v2 folder",
    )
    reward_max_failure_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A job fails when more than this fraction of one step's samples fail for one reward (raised, "
        "timed out, or returned something other than a finite number)",
    )
    reward_max_restarts: int = Field(
        3,
        ge=1,
        le=MAX_INT,
        description="A job fails when its reward sandbox dies (or is killed) this many calls in a row without scoring "
        "one sample",
    )
    sample_groups_per_step: int = Field(
        2, ge=0, le=MAX_INT, description="Groups of each step whose completions and scores are stored for /samples"
    )
    max_reward_test_items: int = Field(16, ge=1, le=MAX_INT, description="Most items in one reward dry run")
    max_rewards_per_tenant: int = Field(1000, ge=1, le=MAX_INT, description="Most uploaded rewards one tenant keeps")
    max_reward_checks_per_tenant: int = Field(
        2,
        ge=1,
        le=MAX_INT,
        description="Reward uploads and dry runs one tenant may have running at once, per API process (429 past it)",
    )
    max_reward_checks: int = Field(
        8, ge=1, le=MAX_INT, description="Reward uploads and dry runs running at once in one API process (429 past it)"
    )
    cancel_poll_seconds: float = Field(
        2.0,
        gt=0,
        description="How often a worker reads its running job's cancel flag; a cancel takes effect within this "
        "plus one decoded token (or one poll of the rewards being scored)",
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a job is started before a job that keeps killing its worker fails"
    )
    shutdown_grace_seconds: float = Field(
        60.0,
        gt=0,
        description="`grpo serve`: how long its worker has, after SIGTERM, to checkpoint the running job and put it "
        "back in the queue before it is killed",
    )
    broker_visibility_timeout: float = Field(
        3600.0, gt=0, description="Redis: seconds before an unacknowledged message is redelivered"
    )
    auth_cache_seconds: float = Field(
        30.0,
        ge=0,
        description="How long an API process trusts a key it has checked before asking the database again (0: every call)",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="When set (not empty), GET /metrics asks for `Authorization: Bearer <this>`; unset, it is open "
        "to whoever reaches the API's port (it names every running job's id)",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A worker serves its Prometheus metrics on this port, on every interface (0: not at all)",
    )
    metrics_tenant_labels: bool = Field(
        False,
        description="Label the workers' usage totals (grpo_compute_seconds_total and the like) with each tenant's "
        "name as well as the hardware class: one series per tenant, which a service with many tenants may not want, "
        "and names whoever reaches a worker's metrics port can read",
    )
    model_cache: Path | None = Field(None, description="Converted base models; default ~/.cache/grpo-service/models")
    device: str = Field(
        "auto",
        description=f"Where a worker trains: {DEVICE_FORMS}. auto is the first CUDA GPU when torch sees one, else "
        "the CPU; a named GPU that is not there fails the worker's jobs saying so",
    )
    models_file: Path | None = Field(
        None,
        description="YAML file of the operator's own base models (grpo_core/catalog.py; `grpo models add` writes it), "
        "besides the built-in ones. The API, the workers and `grpo models` all read it: give them the same file",
    )

    # Operator limits on a job spec: one request must not be able to take a shared worker's memory or time. Each is
    # an upper bound (a refusal names the field, the value, the limit and the setting's variable, GRPO_<NAME>); none
    # can be set past the database's 32-bit INTEGER. They are checked when a job is created (datasets at upload).
    max_group_size: int = Field(64, ge=2, le=MAX_INT, description="Largest group_size")
    max_prompts_per_step: int = Field(64, ge=1, le=MAX_INT, description="Largest prompts_per_step")
    max_completions_per_step: int = Field(
        512, ge=2, le=MAX_INT, description="Largest group_size x prompts_per_step: completions sampled per step"
    )
    max_tokens_per_step: int = Field(
        2_000_000,
        ge=1,
        le=MAX_INT,
        description="Largest completions per step x (longest prompt's token bound + max_new_tokens): the step's "
        "sequences, in tokens, as the worker holds them",
    )
    checkpoint_retention_days: float = Field(
        7.0,
        ge=0,
        description="Days a finished job keeps its checkpoints other than its adapter and those a fork starts from; "
        "the reconciler deletes the rest after that (0: keep them for ever)",
    )
    max_checkpoints_per_job: int = Field(
        100,
        ge=1,
        le=MAX_INT,
        description="Most checkpoints one job may save (max_steps / checkpoint_every, and the final one): each is kept "
        "and downloadable while the job runs, so this bounds a job's disk",
    )
    max_num_iterations: int = Field(16, ge=1, le=MAX_INT, description="Largest num_iterations")
    max_eval_samples_per_prompt: int = Field(64, ge=1, le=MAX_INT, description="Largest eval_samples_per_prompt")
    max_steps: int = Field(100_000, ge=1, le=MAX_INT, description="Largest max_steps")
    max_processes_per_job: int = Field(
        8,
        ge=1,
        le=MAX_INT,
        description="Largest processes: ranks one job trains on (GPUs on a GPU worker, CPU processes on a CPU one)",
    )
    max_lora_rank: int = Field(256, ge=1, le=MAX_INT, description="Largest lora.r")
    max_new_tokens: int = Field(1024, ge=1, le=MAX_INT, description="Largest max_new_tokens")
    max_prompt_tokens: int = Field(
        8192,
        ge=1,
        le=MAX_INT,
        description="Largest prompt, in tokens, as bounded from its UTF-8 bytes with the chat template (conservative)",
    )
    max_dataset_rows: int = Field(1_000_000, ge=1, le=MAX_INT, description="Most rows in an uploaded dataset")
    preflight_prompts: int = Field(
        16, ge=1, le=256, description="Prompts a pre-flight samples its groups on (the first a job would train on)"
    )
    preflight_timeout_seconds: float = Field(
        600.0, gt=0, description="A pre-flight running longer than this is stopped and failed (model load included)"
    )
    max_preflights_per_tenant: int = Field(
        2, ge=1, le=MAX_INT, description="Pre-flights one tenant may have queued or running at once (429 past it)"
    )
    max_running_jobs_per_tenant: int = Field(
        4,
        ge=1,
        le=MAX_INT,
        description="Jobs one tenant may have running at once, where the operator set no limit of the tenant's own "
        "(`grpo tenants set NAME --max-running N`); its other jobs wait their turn in the queue (never a 429)",
    )
    max_queued_jobs_per_tenant: int = Field(
        100,
        ge=1,
        le=MAX_INT,
        description="Jobs one tenant may have queued at once, where the operator set no limit of the tenant's own "
        "(`grpo tenants set NAME --max-queued N`); a job submitted past it is refused (429)",
    )

    @field_validator("reward_packages")
    @classmethod
    def _package_folders_exist(cls, value: str) -> str:
        # Checked at start-up: bubblewrap cannot bind a missing folder, and every reward check would fail obscurely.
        missing = [path for path in value.split(":") if path and not Path(path).is_dir()]
        if missing:
            raise ValueError(f"GRPO_REWARD_PACKAGES names folders that do not exist: {', '.join(missing)}")
        return value

    @field_validator("hardware_classes")
    @classmethod
    def _known_hardware(cls, value: str) -> str:
        unknown = [name for name in value.split(",") if name.strip() not in HARDWARE_CLASSES]
        if unknown or not value.strip():
            raise ValueError(f"GRPO_HARDWARE_CLASSES: give some of {', '.join(HARDWARE_CLASSES)}, got {value!r}")
        return value

    @property
    def served_hardware(self) -> list[str]:
        return [name.strip() for name in self.hardware_classes.split(",")]

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        # Only the form is checked here: the API never loads torch. Whether the GPU is there, the worker finds out.
        try:
            return check_device_name(value)
        except ValueError as error:
            raise ValueError(f"GRPO_DEVICE: {error}") from None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'grpo.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def reward_package_dirs(self) -> list[str]:
        return [path for path in self.reward_packages.split(":") if path]

    def sandbox_limits(self) -> SandboxLimits:
        """The GRPO_REWARD_* settings as the limits of a reward sandbox (the API's checks and the worker's jobs)."""
        return SandboxLimits(
            timeout_seconds=self.reward_timeout_seconds,
            start_timeout_seconds=self.reward_start_timeout_seconds,
            memory_mb=self.reward_memory_mb,
            cpu_seconds=self.reward_cpu_seconds,
            max_processes=self.reward_max_processes,
            max_open_files=self.reward_max_open_files,
            max_file_mb=self.reward_max_file_mb,
            max_tmp_mb=self.reward_tmp_mb,
            output_chars=self.reward_output_chars,
            extra_paths=tuple(self.reward_package_dirs),
            allow_unsandboxed=self.reward_allow_unsandboxed,
            allow_without_cgroup=self.reward_allow_without_cgroup,
            max_restarts=self.reward_max_restarts,
            cpus=self.reward_cpus,
            uid=self.sandbox_uid,
            gid=self.sandbox_gid,
            python=self.sandbox_python,
            cgroup=self.sandbox_cgroup,
        )

    @property
    def artifacts_dir(self) -> Path:
        return (self.data_dir / "artifacts").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
