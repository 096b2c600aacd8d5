"""Prometheus metrics of the real API server and a real Celery worker while a tiny job trains: the API's /metrics
(behind GRPO_METRICS_TOKEN) and the worker's own port both parse with prometheus-client's parser, carry every
series, and move as the job goes from queued to running to cancelled."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import submit, upload_arithmetic
from tests.service_env import free_port

TOKEN = "scrape-token-for-tests"
WORKER_PORT = free_port()
SERVICE_ENV = {
    "GRPO_METRICS_TOKEN": TOKEN,
    "GRPO_WORKER_METRICS_PORT": str(WORKER_PORT),
    "GRPO_CANCEL_POLL_SECONDS": "0.2",
}
# One layout is enough here: the series are the same on both.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("running_service", ["embedded"], indirect=True)]


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_api(service) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(service.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return parse(response.text)


def scrape_worker() -> dict[tuple[str, frozenset], float]:
    """The worker's metrics port; it opens once the worker is ready (up to a minute after it starts)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return parse(httpx.get(f"http://127.0.0.1:{WORKER_PORT}/metrics", timeout=10).text)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the worker never served its metrics port"
            time.sleep(0.3)


def series(samples, name: str) -> dict[frozenset, float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def requests_served(samples) -> float:
    return sum(series(samples, "grpo_http_request_duration_seconds_count").values())


def test_api_and_worker_metrics_move_while_a_job_trains(running_service):
    assert httpx.get(running_service.base_url + "/metrics").status_code == 401
    worker_before = scrape_worker()
    before = scrape_api(running_service)
    assert {labels: value for labels, value in series(before, "grpo_jobs").items() if value} == {}
    assert not series(worker_before, "grpo_worker_steps_total")

    client = running_service.client("metrics")
    # Long enough that it is still training whenever the scrapes below look; cancelled once they have seen it.
    job_id = submit(client, upload_arithmetic(client), max_steps=1000, checkpoint_every=0)
    job = frozenset({("job_id", job_id)})

    # Scrape as Prometheus would until the API reports two finished steps of the running job.
    deadline = time.monotonic() + 240
    while (training := scrape_api(running_service)).get(("grpo_job_step", job), 0) < 2:
        assert time.monotonic() < deadline, client.get(f"/v1/jobs/{job_id}").json()
        time.sleep(0.2)
    assert series(training, "grpo_jobs")[frozenset({("status", "running")})] == 1
    assert training[("grpo_job_step_seconds", job)] > 0
    assert training[("grpo_job_generated_tokens_per_second", job)] > 0
    assert training[("grpo_job_reward_errors", job)] == 0
    # The worker process (`grpo worker` execs Celery, which runs the job itself: the solo pool) holds its lease.
    worker_name = f"{socket.gethostname()}:{running_service.processes[1].pid}"
    heartbeats = series(training, "grpo_worker_heartbeat_age_seconds")
    assert list(heartbeats) == [frozenset({("worker", worker_name)})]
    assert 0 <= heartbeats[frozenset({("worker", worker_name)})] < 60  # GRPO_LEASE_SECONDS
    assert requests_served(training) > requests_served(before)
    created = frozenset({("method", "POST"), ("route", "/v1/jobs"), ("status", "201")})
    assert series(training, "grpo_http_request_duration_seconds_count")[created] == 1

    worker = scrape_worker()
    assert worker[("grpo_worker_job_active", job)] == 1
    steps = worker[("grpo_worker_steps_total", job)]
    assert steps >= 2
    assert worker[("grpo_worker_step_seconds_count", job)] == steps
    assert worker[("grpo_worker_step_seconds_sum", job)] > 0
    assert worker[("grpo_worker_generated_tokens_per_second", job)] > 0
    assert worker[("grpo_worker_reward_errors_total", job)] == 0

    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    after = scrape_api(running_service)
    jobs = {dict(labels)["status"]: value for labels, value in series(after, "grpo_jobs").items()}
    assert jobs == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert not any(name.startswith(("grpo_job_", "grpo_worker_heartbeat")) for name, _ in after)
    # The worker keeps its latest job's series (until its next job), marked no longer active.
    worker_after = scrape_worker()
    assert worker_after[("grpo_worker_job_active", job)] == 0
    assert worker_after[("grpo_worker_steps_total", job)] >= steps
