"""The Celery app: broker wiring and the settings for long GPU jobs. The database, not the broker, is the source of
truth. For training jobs the broker carries turns, not job ids: "a worker of queue Q may start the next job" (the
API sends one per job it queues); the worker that takes a turn asks the database which job is next (worker/turns.py),
so tenants take turns however many jobs each has queued. The worker (worker/app.py) registers the tasks by name."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from service_core.settings import get_settings

RUN_NEXT_JOB_TASK = "grpo.run_next_job"
# Messages from before turns name a job; the worker still runs them, so none in a broker is lost by an upgrade.
RUN_JOB_TASK = "grpo.run_job"
RUN_PREFLIGHT_TASK = "grpo.run_preflight"


@lru_cache
def get_celery() -> Celery:
    settings = get_settings()
    app = Celery("grpo")
    transport_options: dict = {}
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            # One folder for both directions: producer and consumers share it on this machine.
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
        }
    else:
        # Redis hands an unacknowledged message to another worker after the visibility timeout, even while the
        # first still runs it. GRPO jobs run for hours, so that will happen; it is harmless because a second
        # delivery finds the job's lease held and backs off. The timeout only bounds how long a message whose
        # worker died waits before it is delivered again (the reconciler usually requeues it sooner).
        transport_options = {"visibility_timeout": settings.broker_visibility_timeout}
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # One job per worker process at a time: take one message, acknowledge it only when the job is done, so a
        # worker that dies mid-job leaves the message to be delivered again (Redis) rather than dropping it. With
        # the folder broker a message is gone once taken; there the reconciler requeues the job from the database.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        # A child process lost mid-task (prefork pool): requeue its message instead of acknowledging it.
        task_reject_on_worker_lost=True,
        # No time limits: a job's length is its max_steps, and cancel is how a user stops one. A hung worker
        # stops renewing its lease, and that, not a timer, hands the job on.
        task_time_limit=None,
        task_soft_time_limit=None,
        # A broker that goes away mid-job must not abort hours of training: the job keeps its lease in the
        # database, finishes, and the worker reconnects afterwards.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def queue_for(hardware: str, queue: str | None = None, processes: int = 1) -> str:
    """The Celery queue of a hardware class: jobs that need no GPU on GRPO_QUEUE, GPU jobs on GRPO_QUEUE-gpu, and
    GPU jobs on N > 1 processes (one GPU each) on GRPO_QUEUE-gpu-xN. A CPU worker consumes the first only, so it
    never takes a GPU job; a GPU worker with N GPUs consumes the GPU queues up to xN and the CPU one. A CPU job on
    several processes stays on the CPU queue: any worker can run its gloo ranks."""
    queue = queue or get_settings().queue
    if hardware == "cpu":
        return queue
    return f"{queue}-{hardware}" if processes == 1 else f"{queue}-{hardware}-x{processes}"


def worker_queues(hardware: str, queue: str | None = None, gpus: int = 1) -> list[str]:
    """The queues a worker of this hardware class, with `gpus` GPUs when it is a GPU worker, consumes (see
    queue_for): the jobs it has the GPUs for."""
    cpu = queue_for("cpu", queue)
    if hardware != "gpu":
        return [cpu]
    return [queue_for("gpu", queue, processes) for processes in range(1, max(1, gpus) + 1)] + [cpu]


def send_turn(queue: str) -> None:
    """Send one turn to `queue`: the worker that takes it starts the job that is next there, if any. Call only after
    the rows that make a job runnable are committed. A turn too many is harmless (it finds nothing to run, or the job's
    lease refuses a second worker); a turn too few leaves a job waiting until a worker's reconciler sends one."""
    get_celery().send_task(RUN_NEXT_JOB_TASK, args=[queue], queue=queue)


def enqueue_preflight(preflight_id: str, hardware: str) -> None:
    """Send "run pre-flight X" to the queue its job would go to (on one process: a pre-flight times one rank's
    step). Call only after the pre-flight row is committed."""
    get_celery().send_task(RUN_PREFLIGHT_TASK, args=[preflight_id], queue=queue_for(hardware))


def broker_reachable() -> bool:
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
