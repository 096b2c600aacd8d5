"""The Celery worker's entry module: `celery -A worker.app worker` (or `grpo worker`)."""

from api.queue import RUN_JOB_TASK, get_celery
from worker.runner import run_job

app = get_celery()


@app.task(name=RUN_JOB_TASK)
def run_job_task(job_id: str) -> str:
    # Thin on purpose: the job is re-read from the database by id inside run_job.
    return run_job(job_id)
