"""A worker's own Prometheus metrics, served by the worker process on GRPO_WORKER_METRICS_PORT (0: not served), as
prometheus-client documents for separate processes: each process its own registry and port, each scraped apart.
The solo pool runs jobs in this very process; a job's ranks (processes > 1) send rank 0's step figures here
through the supervisor (worker/runner.py).

Series are labelled by job id. A worker runs one job at a time and keeps its latest job's series until it starts the
next one, so a job shorter than the scrape interval is still seen, and the series stay bounded by the fleet.

Usage totals (UsageCounters) are counters by hardware class only, so they stay few however many tenants there are;
GRPO_METRICS_TENANT_LABELS adds a `tenant` label (the tenant's name). They count the work this worker did: a step
run again after a resume counts again here, as it used the machine again, while a tenant's usage in the database
counts each step once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from grpo_core.step import USAGE_FIGURES as STEP_USAGE_FIGURES
from service_core.settings import get_settings
from worker.writes import USAGE_FIGURES, step_usage

log = logging.getLogger(__name__)

STEP_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

job_active = Gauge("grpo_worker_job_active", "1 while this worker trains the job, 0 once it has stopped", ["job_id"])
steps = Counter("grpo_worker_steps", "Training steps this worker finished for the job", ["job_id"])
step_seconds = Histogram(
    "grpo_worker_step_seconds", "Seconds each training step took", ["job_id"], buckets=STEP_SECONDS_BUCKETS
)
tokens_per_second = Gauge(
    "grpo_worker_generated_tokens_per_second", "Completion tokens per second of sampling in the latest step", ["job_id"]
)
reward_errors = Counter("grpo_worker_reward_errors", "Reward calls that failed (each one scored 0)", ["job_id"])
JOB_SERIES = (job_active, steps, step_seconds, tokens_per_second, reward_errors)

_lock = threading.Lock()
_current_job: str | None = None


def serve(port: int) -> None:
    """Serve this process's metrics on `port` (every interface) from a daemon thread; 0 does nothing. A port
    already taken is logged and the worker goes on without metrics: they are not worth failing jobs for."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as error:
        log.error("worker metrics not served: port %d (GRPO_WORKER_METRICS_PORT): %s", port, error)


def job_started(job_id: str) -> None:
    """Forget the previous job's series and start this one's."""
    global _current_job
    with _lock:
        if _current_job is not None and _current_job != job_id:
            for metric in JOB_SERIES:
                try:
                    metric.remove(_current_job)
                except KeyError:  # a series the previous job never reached (no step, no error)
                    pass
        _current_job = job_id
        job_active.labels(job_id).set(1)
        # Present from the start at 0, so rate() has a first point before the first step ends.
        steps.labels(job_id)
        reward_errors.labels(job_id)


def job_stopped(job_id: str) -> None:
    job_active.labels(job_id).set(0)


class UsageCounters:
    """The usage totals: compute seconds, tokens sampled and trained, reward calls and seconds (worker/writes.py
    USAGE_FIGURES), labelled by hardware class, and by tenant too when `tenant_labels`."""

    HELP = {
        "compute_seconds": "Seconds of steps and pre-flights times the devices they held",
        "tokens_sampled": "Completion tokens generated, dropped groups of dynamic sampling included",
        "tokens_trained": "Completion tokens trained on, once per update (num_iterations)",
        "reward_calls": "Completions scored, once per reward function",
        "reward_seconds": "Seconds spent scoring completions",
    }

    def __init__(self, *, tenant_labels: bool, registry: CollectorRegistry = REGISTRY):
        self.tenant_labels = tenant_labels
        labels = ["hardware", "tenant"] if tenant_labels else ["hardware"]
        self.counters = {
            key: Counter(f"grpo_{key}", self.HELP[key], labels, registry=registry) for key in USAGE_FIGURES
        }

    def observe(self, figures: Mapping[str, float], *, hardware: str, tenant: str) -> None:
        labels = (hardware, tenant) if self.tenant_labels else (hardware,)
        for key, counter in self.counters.items():
            value = figures.get(key, 0.0)
            if value > 0:
                counter.labels(*labels).inc(value)


_usage: UsageCounters | None = None


def usage_counters() -> UsageCounters:
    """This process's usage counters, made on first use as GRPO_METRICS_TENANT_LABELS says."""
    global _usage
    with _lock:
        if _usage is None:
            _usage = UsageCounters(tenant_labels=get_settings().metrics_tenant_labels, registry=REGISTRY)
        return _usage


def observe_usage(figures: Mapping[str, float], *, hardware: str, tenant: str) -> None:
    """Add a step's or a pre-flight's usage (worker/writes.py USAGE_FIGURES) to the totals."""
    usage_counters().observe(figures, hardware=hardware, tenant=tenant)


def step_figures(metrics: dict[str, float]) -> dict[str, float]:
    """The figures of a step's metrics (grpo_core's on_step) shown here: all a rank needs to send."""
    return {
        key: float(metrics[key])
        for key in ("step_seconds", "generated_tokens_per_second", "reward_errors", *STEP_USAGE_FIGURES)
        if isinstance(metrics.get(key), int | float)
    }


def observe_step(job_id: str, figures: dict[str, float], *, hardware: str, tenant: str, processes: int) -> None:
    """A step's figures (step_figures) into the job's series and the usage totals of its tenant and hardware."""
    observe_usage(step_usage(figures, processes), hardware=hardware, tenant=tenant)
    steps.labels(job_id).inc()
    if "step_seconds" in figures:
        step_seconds.labels(job_id).observe(figures["step_seconds"])
    if "generated_tokens_per_second" in figures:
        tokens_per_second.labels(job_id).set(figures["generated_tokens_per_second"])
    if figures.get("reward_errors", 0) > 0:
        reward_errors.labels(job_id).inc(figures["reward_errors"])
