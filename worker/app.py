"""The Celery worker's entry module: `celery -A worker.app worker` (or `grpo worker`)."""

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from grpo_core.device import resolve_device
from service_core.queue import RUN_JOB_TASK, RUN_NEXT_JOB_TASK, RUN_PREFLIGHT_TASK, get_celery
from service_core.settings import get_settings
from worker import metrics as worker_metrics
from worker.preflight import run_preflight
from worker.reconciler import Reconciler
from worker.runner import run_job, run_next_job, shutting_down

app = get_celery()
# A worker told to train on a GPU it does not have would fail every job it takes: it refuses to start instead.
try:
    resolve_device(get_settings().device)
except ValueError as error:
    raise SystemExit(f"grpo worker: GRPO_DEVICE={get_settings().device}: {error}") from None
_reconciler: Reconciler | None = None


@app.task(name=RUN_NEXT_JOB_TASK)
def run_next_job_task(queue: str) -> str:
    # Thin on purpose: which job runs is read from the database, and claimed, inside run_next_job.
    return run_next_job(queue)


@app.task(name=RUN_JOB_TASK)
def run_job_task(job_id: str) -> str:
    # Messages sent before turns: the job is re-read from the database by id, and claimed, inside run_job.
    return run_job(job_id)


@app.task(name=RUN_PREFLIGHT_TASK)
def run_preflight_task(preflight_id: str) -> str:
    return run_preflight(preflight_id)


@worker_ready.connect
def start_reconciler(**_kwargs) -> None:
    global _reconciler
    _reconciler = Reconciler(get_settings().reconcile_every_seconds)
    _reconciler.start()
    worker_metrics.serve(get_settings().worker_metrics_port)


@worker_shutdown.connect
def stop_reconciler(**_kwargs) -> None:
    if _reconciler is not None:
        _reconciler.stopped.set()


@worker_shutting_down.connect
def stop_running_job(**_kwargs) -> None:
    # Sent from Celery's SIGTERM/SIGINT/SIGQUIT handler. The solo pool runs the job in this same main thread, so
    # the handler interrupts it between two bytecodes: only set a flag, which the trainer reads before each decoded
    # token and at each poll while rewards score (worker/runner.py states the bound). Celery's warm shutdown then
    # waits for the task to return (checkpointed and queued again) before the process exits.
    shutting_down.set()
