"""Prometheus metrics of the API process at GET /metrics (the text format; prometheus-client renders it).

- grpo_http_request_duration_seconds{method, route, status}: a histogram per route *template*
  (/v1/jobs/{job_id}), never the raw path: a label value per path would let any client grow the series without
  bound. Paths no route serves share route="unmatched". /metrics itself is left out.
- Read from the database at each scrape (ServiceCollector, in a worker thread as every read is): jobs by status,
  the oldest queued job's age, each busy worker's heartbeat age, and the latest step of each running job (step
  time, generated tokens per second, reward errors), labelled by job id: running jobs are bounded by the workers.

Open by default, as operators scrape from an internal network; GRPO_METRICS_TOKEN makes it ask for that bearer
token (job ids of every tenant show here, so set it wherever tenants can reach the API's port).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_core.db import new_session, run_read
from service_core.models import JOB_STATUSES, Job, MetricRow
from service_core.settings import get_settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
# A client may send any method token; the label keeps the ones HTTP defines, the rest are "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A bound on the running jobs one scrape reads (there are as many as busy workers, far fewer than this).
MAX_RUNNING_JOBS = 1000
# Per-step figures of the trainer's metrics row (grpo_core/step.py step_metrics) shown per running job.
STEP_FIGURES = {
    "step_seconds": ("grpo_job_step_seconds", "Seconds the running job's latest step took"),
    "generated_tokens_per_second": (
        "grpo_job_generated_tokens_per_second",
        "Completion tokens per second of sampling in the running job's latest step",
    ),
    "reward_errors": ("grpo_job_reward_errors", "Reward calls that failed in the running job's latest step"),
}


def route_template(scope: Scope) -> str:
    """The path template of the route that served (or would serve) this request, or UNMATCHED. Routing sets
    scope["route"]; a request answered before routing (a body over its cap) is matched here."""
    route = scope.get("route")
    if route is None and "app" in scope:
        route = next(
            (r for r in scope["app"].router.routes if r.matches(scope)[0] != Match.NONE),
            None,
        )
    # path_format: "/v1/jobs/{job_id}" for a route, "/static/{path}" for a mount (of static files, say).
    return getattr(route, "path_format", None) or UNMATCHED


class RequestMetrics:
    """ASGI middleware observing each request's duration in the histogram: to the end of its response's body, so an
    event stream's is how long it stayed open (its own route label keeps it apart from the rest)."""

    def __init__(self, app: ASGIApp, histogram: Histogram):
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what ServerErrorMiddleware answers if the app raises before it answers

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.histogram.labels(method, route_template(scope), str(status)).observe(time.perf_counter() - started)


def _age_seconds(now: datetime, then: datetime) -> float:
    return max((now - then).total_seconds(), 0.0)  # timestamps come back timezone-aware (UTCDateTime)


class ServiceCollector(Collector):
    """The service's state read from the database when Prometheus scrapes: a few bounded queries."""

    def describe(self) -> list:
        # Declared, so registering this collector does not run its queries.
        return [GaugeMetricFamily("grpo_database_up", "")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("grpo_database_up", "1 when the last scrape could read the database, else 0")
        try:
            families = self._read()
        except SQLAlchemyError:
            log.warning("metrics: the database could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        now = datetime.now(UTC)
        lease_seconds = get_settings().lease_seconds
        with new_session() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            oldest_queued = session.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
            running = session.execute(
                select(Job.id, Job.step, Job.lease_owner, Job.lease_expires_at)
                .where(Job.status == "running")
                .order_by(Job.id)
                .limit(MAX_RUNNING_JOBS)
            ).all()
            running_ids = [row.id for row in running]
            latest_step = (
                select(MetricRow.job_id, func.max(MetricRow.step).label("step"))
                .where(MetricRow.kind == "train", MetricRow.job_id.in_(running_ids))
                .group_by(MetricRow.job_id)
                .subquery()
            )
            latest = (
                session.execute(
                    select(MetricRow.job_id, MetricRow.values).join(
                        latest_step,
                        (MetricRow.job_id == latest_step.c.job_id)
                        & (MetricRow.step == latest_step.c.step)
                        & (MetricRow.kind == "train"),
                    )
                ).all()
                if running_ids
                else []
            )

        jobs = GaugeMetricFamily("grpo_jobs", "Jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        queued_age = GaugeMetricFamily(
            "grpo_queued_job_oldest_age_seconds", "Seconds since the oldest queued job was created (0: none queued)"
        )
        queued_age.add_metric([], _age_seconds(now, oldest_queued) if oldest_queued else 0.0)

        # A worker renews its job's lease every lease_seconds / 3, so its last heartbeat was lease_seconds before
        # the lease's expiry. The owner is "host:pid:attempt-tag"; host:pid names the worker process.
        heartbeats: dict[str, float] = {}
        for row in running:
            if row.lease_owner and row.lease_expires_at:
                worker = row.lease_owner.rsplit(":", 1)[0]
                age = _age_seconds(now, row.lease_expires_at - timedelta(seconds=lease_seconds))
                heartbeats[worker] = min(age, heartbeats.get(worker, age))
        heartbeat = GaugeMetricFamily(
            "grpo_worker_heartbeat_age_seconds",
            "Seconds since each busy worker last renewed its job's lease (past GRPO_LEASE_SECONDS it is taken for dead)",
            labels=["worker"],
        )
        for worker, age in sorted(heartbeats.items()):
            heartbeat.add_metric([worker], age)

        step = GaugeMetricFamily("grpo_job_step", "The running job's latest finished step", labels=["job_id"])
        for row in running:
            step.add_metric([row.id], row.step)
        figures = {key: GaugeMetricFamily(name, text, labels=["job_id"]) for key, (name, text) in STEP_FIGURES.items()}
        for job_id, values in latest:
            for key, family in figures.items():
                if isinstance(values.get(key), int | float):
                    family.add_metric([job_id], values[key])
        return [jobs, queued_age, heartbeat, step, *figures.values()]


def _authorized(request: Request) -> bool:
    token = get_settings().metrics_token
    if token is None or not token.get_secret_value():
        return True
    expected = f"Bearer {token.get_secret_value()}".encode()
    return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)


def add_metrics(app: FastAPI) -> None:
    """Serve /metrics on `app` and time its requests. Each app has a registry of its own (tests build several)."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    registry.register(ServiceCollector())
    histogram = Histogram(
        "grpo_http_request_duration_seconds",
        "Seconds from a request's arrival to the end of its response, by route template and status",
        ["method", "route", "status"],
        registry=registry,
    )
    app.add_middleware(RequestMetrics, histogram=histogram)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not _authorized(request):
            return JSONResponse(
                {
                    "detail": "this endpoint needs the metrics token: Authorization: Bearer <GRPO_METRICS_TOKEN>",
                    "errors": [],
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        # The collector reads the database: in a worker thread, never on the event loop.
        return Response(await run_read(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)
