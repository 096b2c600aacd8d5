"""A worker's own Prometheus series, fed by its job runner in this process: steps, step time, tokens per second and
reward errors by job, and only the latest job's series kept. (A job on two processes, whose rank 0 sends its figures
to the supervising worker, is checked in test_runner.py's cancel test.)"""

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from tests.service_env import clear_service_caches
from tests.worker.helpers import make_job
from worker import metrics as worker_metrics
from worker.metrics import UsageCounters
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


def test_a_job_adds_its_steps_to_the_usage_totals_by_hardware(tenant_and_dataset):  # noqa: F811
    before = REGISTRY.get_sample_value("grpo_tokens_sampled_total", {"hardware": "cpu"}) or 0.0
    seconds = REGISTRY.get_sample_value("grpo_compute_seconds_total", {"hardware": "cpu"}) or 0.0
    assert run_job(make_job(*tenant_and_dataset, max_steps=2)) == "succeeded"
    assert REGISTRY.get_sample_value("grpo_tokens_sampled_total", {"hardware": "cpu"}) > before
    assert REGISTRY.get_sample_value("grpo_compute_seconds_total", {"hardware": "cpu"}) > seconds


FIGURES = {
    "compute_seconds": 4.0,
    "tokens_sampled": 10.0,
    "tokens_trained": 20.0,
    "reward_calls": 6.0,
    "reward_seconds": 0.5,
}


@pytest.mark.unit
def test_usage_totals_have_no_tenant_label_unless_asked_for():
    registry = CollectorRegistry()
    counters = UsageCounters(tenant_labels=False, registry=registry)
    counters.observe(FIGURES, hardware="gpu", tenant="acme")
    counters.observe(FIGURES, hardware="gpu", tenant="globex")
    for key, value in FIGURES.items():
        assert registry.get_sample_value(f"grpo_{key}_total", {"hardware": "gpu"}) == 2 * value
    assert "acme" not in generate_latest(registry).decode()

    registry = CollectorRegistry()
    counters = UsageCounters(tenant_labels=True, registry=registry)
    counters.observe(FIGURES, hardware="gpu", tenant="acme")
    counters.observe({"tokens_sampled": 5.0}, hardware="cpu", tenant="globex")
    assert registry.get_sample_value("grpo_tokens_sampled_total", {"hardware": "gpu", "tenant": "acme"}) == 10
    assert registry.get_sample_value("grpo_tokens_sampled_total", {"hardware": "cpu", "tenant": "globex"}) == 5
    assert registry.get_sample_value("grpo_compute_seconds_total", {"hardware": "cpu", "tenant": "globex"}) is None


@pytest.mark.unit
def test_the_setting_turns_the_tenant_label_on(monkeypatch):
    monkeypatch.setattr(worker_metrics, "_usage", None)
    registry = CollectorRegistry()
    monkeypatch.setattr(worker_metrics, "REGISTRY", registry)
    monkeypatch.setenv("GRPO_METRICS_TENANT_LABELS", "true")
    clear_service_caches()
    try:
        worker_metrics.observe_usage({"reward_calls": 3.0}, hardware="cpu", tenant="acme")
        assert registry.get_sample_value("grpo_reward_calls_total", {"hardware": "cpu", "tenant": "acme"}) == 3
    finally:
        clear_service_caches()
