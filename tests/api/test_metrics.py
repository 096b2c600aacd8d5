"""GET /metrics on the real app and database: the Prometheus text parses, requests are labelled by route template
(never by raw path), the database's state shows at each scrape, and GRPO_METRICS_TOKEN guards it."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import new_key

HISTOGRAM = "grpo_http_request_duration_seconds"


def scrape(client, headers=None) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, by (name, labels), parsed with prometheus-client's own parser."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def routes_seen(samples) -> set[str]:
    return {dict(labels)["route"] for name, labels in samples if name == f"{HISTOGRAM}_count"}


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_requests_are_counted_by_route_template_and_status(service, alice):
    for job_id in ("job_first", "job_second"):
        assert service.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert service.get("/v1/jobs/job_third").status_code == 401
    unknown = ("/nothing/here", "/nor/here/either", "/v1/jobs/job_x/nope")
    for path in unknown:
        assert service.get(path).status_code == 404
    service.head("/healthz")

    samples = scrape(service)
    count = f"{HISTOGRAM}_count"
    assert value(samples, count, method="GET", route="/v1/jobs/{job_id}", status="404") == 2
    assert value(samples, count, method="GET", route="/v1/jobs/{job_id}", status="401") == 1
    # Paths no route serves share one label value ("unmatched"), however many there are.
    assert value(samples, count, method="GET", route="unmatched", status="404") == len(unknown)
    assert value(samples, count, method="GET", route="/healthz", status="200") == 1  # HEAD is answered as GET
    assert routes_seen(samples) == {"/v1/jobs/{job_id}", "unmatched", "/healthz"}  # /metrics itself is not timed
    assert value(samples, f"{HISTOGRAM}_sum", method="GET", route="/v1/jobs/{job_id}", status="404") > 0

    # A second scrape sees the requests made since.
    service.get("/v1/jobs/job_fourth", headers=alice)
    later = scrape(service)
    assert value(later, count, method="GET", route="/v1/jobs/{job_id}", status="404") == 3
    assert routes_seen(later) == routes_seen(samples)


def test_jobs_queue_age_heartbeats_and_running_jobs_come_from_the_database(service, alice, dataset_id):
    from service_core import job_state
    from service_core.db import session_scope
    from service_core.models import Job
    from service_core.settings import get_settings
    from worker import leases, writes

    before = scrape(service)
    assert value(before, "grpo_database_up") == 1
    assert all(value(before, "grpo_jobs", status=status) == 0 for status in ("queued", "running", "succeeded"))
    assert value(before, "grpo_queued_job_oldest_age_seconds") == 0

    spec = {"base_model": "tiny-random-llama", "dataset_id": dataset_id, "rewards": [{"name": "numeric_answer"}]}
    job_ids = [service.post("/v1/jobs", json=spec, headers=alice).json()["id"] for _ in range(2)]
    queued = scrape(service)
    assert value(queued, "grpo_jobs", status="queued") == 2
    assert value(queued, "grpo_queued_job_oldest_age_seconds") > 0
    assert not any(name.startswith("grpo_job_") for name, _ in queued)  # nothing runs yet

    # A worker takes the first job the way worker/runner.py does (its lease, its status, one step's metrics row).
    owner = f"{socket.gethostname()}:4242:0123abcd"
    with session_scope() as session:
        assert leases.claim_job(session, job_id=job_ids[0], owner=owner, lease_seconds=60, max_attempts=3) == 1
        job = session.get(Job, job_ids[0])
        job_state.set_status(session, job=job, status="running", worker_host=socket.gethostname())
    step = {"step_seconds": 1.5, "generated_tokens_per_second": 120.0, "reward_errors": 3.0, "reward_mean": 0.5}
    with session_scope() as session:
        writes.record_metrics(session, job_id=job_ids[0], kind="train", step=1, values=step)
        session.get(Job, job_ids[0]).step = 1

    running = scrape(service)
    assert value(running, "grpo_jobs", status="queued") == 1
    assert value(running, "grpo_jobs", status="running") == 1
    heartbeat = value(running, "grpo_worker_heartbeat_age_seconds", worker=f"{socket.gethostname()}:4242")
    assert 0 <= heartbeat < get_settings().lease_seconds
    assert value(running, "grpo_job_step", job_id=job_ids[0]) == 1
    assert value(running, "grpo_job_step_seconds", job_id=job_ids[0]) == 1.5
    assert value(running, "grpo_job_generated_tokens_per_second", job_id=job_ids[0]) == 120
    assert value(running, "grpo_job_reward_errors", job_id=job_ids[0]) == 3
    # Only running jobs get a series of their own.
    assert not any(dict(labels).get("job_id") == job_ids[1] for _, labels in running)

    with session_scope() as session:
        job = session.get(Job, job_ids[0])
        job_state.set_status(session, job=job, status="succeeded", lease_owner=None, lease_expires_at=None)
    done = scrape(service)
    assert value(done, "grpo_jobs", status="succeeded") == 1 and value(done, "grpo_jobs", status="running") == 0
    assert not any(name.startswith(("grpo_job_", "grpo_worker_heartbeat")) for name, _ in done)


def test_a_metrics_token_is_required_once_set(service, monkeypatch):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_METRICS_TOKEN", "scrape-secret")
    get_settings.cache_clear()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, new_key("carol")):  # a tenant's key is not it either
            response = service.get("/metrics", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "GRPO_METRICS_TOKEN" in response.json()["detail"]
        assert value(scrape(service, {"Authorization": "Bearer scrape-secret"}), "grpo_database_up") == 1
    finally:
        get_settings.cache_clear()


@pytest.mark.unit
def test_the_compose_prometheus_scrapes_the_ports_the_services_serve():
    from pathlib import Path

    import yaml

    top = Path(__file__).resolve().parents[2]
    services = yaml.safe_load((top / "docker-compose.yml").read_text())["services"]
    prometheus = services["prometheus"]
    config_file = next(
        v.split(":")[0] for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    )
    jobs = {job["job_name"]: job for job in yaml.safe_load((top / config_file).read_text())["scrape_configs"]}

    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert jobs["grpo-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert jobs["grpo-api"]["metrics_path"] == "/metrics"
    workers = [name for name, service in services.items() if service.get("command") == ["grpo", "worker"]]
    discovery = jobs["grpo-worker"]["dns_sd_configs"][0]
    assert sorted(discovery["names"]) == sorted(workers) and workers
    for name in workers:
        assert int(services[name]["environment"]["GRPO_WORKER_METRICS_PORT"]) == discovery["port"]
