"""A worker's own Prometheus series, fed by its job runner in this process: steps, step time, tokens per second and
reward errors by job, and only the latest job's series kept. (A job on two processes, whose rank 0 sends its figures
to the supervising worker, is checked in test_runner.py's cancel test.)"""

from prometheus_client import REGISTRY

from tests.worker.helpers import make_job
from worker.runner import run_job


def sample(name: str, job_id: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"job_id": job_id})


def test_a_job_on_one_process_feeds_the_worker_series_and_the_next_job_replaces_them(tenant_and_dataset):  # noqa: F811
    first = make_job(*tenant_and_dataset, max_steps=3)
    assert run_job(first) == "succeeded"
    assert sample("grpo_worker_steps_total", first) == 3
    assert sample("grpo_worker_step_seconds_count", first) == 3
    assert sample("grpo_worker_step_seconds_sum", first) > 0
    assert sample("grpo_worker_generated_tokens_per_second", first) > 0
    assert sample("grpo_worker_reward_errors_total", first) == 0
    assert sample("grpo_worker_job_active", first) == 0  # kept after the job, marked stopped

    second = make_job(*tenant_and_dataset, max_steps=1)
    assert run_job(second) == "succeeded"
    assert sample("grpo_worker_steps_total", second) == 1
    for name in ("grpo_worker_steps_total", "grpo_worker_step_seconds_count", "grpo_worker_job_active"):
        assert sample(name, first) is None
