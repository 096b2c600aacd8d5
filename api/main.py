"""The FastAPI app: routers, error bodies, body-size caps."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.dashboard import mount_dashboard
from api.limits import REWARD_BODY_BYTES, BodySizeLimit, TenantSlots
from api.metrics import add_metrics
from api.routes import catalog, datasets, health, jobs, preflights, rewards, usage
from api.services import InvalidInput, NotFound, Unavailable
from api.services.catalog import model_catalog
from grpo_core.config import json_repr
from service_core.settings import get_settings

_OBJECT_TYPES = ("model_type", "model_attributes_type", "dict_type")


def _describe(error: dict) -> str:
    """One pydantic error as `field: what is wrong, got <the value as JSON>` (the value is left out where the field
    is missing, as pydantic's input is then the whole enclosing object)."""
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    # pydantic names the model class for a nested object ("a valid dictionary or instance of LoraHyperparameters")
    what = "Input should be a JSON object" if error.get("type") in _OBJECT_TYPES else str(error.get("msg"))
    message = f"{where}: {what}" if where else what
    if error.get("type") != "missing" and "input" in error:
        # The value as JSON, shortened: the message then names the field, the value and the limit (a header, query
        # or path parameter's too).
        message += f", got {json_repr(error['input'])}"
    return message


def _operation_id(route: APIRoute) -> str:
    """`<tag>-<route name>`, such as jobs-create: the method names a generated client gets (FastAPI's own are
    list_jobs_v1_jobs_get). A route without a tag keeps its name; tests/api/test_openapi.py catches one in the schema."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _allowed_methods(request: Request) -> list[str]:
    """The methods of this request's path, and HEAD wherever GET is (HeadAsGet). A documented path lists what the
    OpenAPI schema documents for it, a literal path (/v1/jobs/preflight) before a template that also matches it
    (/v1/jobs/{job_id}), so Allow and the schema agree; any other path, what the router itself routes."""
    path = request.url.path
    documented = request.app.openapi()["paths"]
    templates = [key for key in documented if "{" in key and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", key), path)]
    operations = documented.get(path) or (documented[templates[0]] if templates else None)
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    if operations is not None:
        allowed = [method for method in methods if method.lower() in operations]
    else:
        allowed = [
            method
            for method in methods
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in request.app.router.routes
            )
        ]
    return [*allowed[:1], "HEAD", *allowed[1:]] if "GET" in allowed else allowed


class _HeadersSent(Exception):
    """Raised into the app once a HEAD answer is complete, to stop it producing a body nobody reads."""


class HeadAsGet:
    """HEAD answered wherever GET is, as GET would answer (status and headers, Content-Length included) with no
    body. FastAPI routes GET alone (Starlette's own routes add HEAD), and a HEAD route per GET would double the
    OpenAPI. A body the app goes on sending (an event stream never ends by itself, a file comes in chunks) is cut
    off by raising into it: the stream gives back its slot as on any other end."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def headers_only(message: Message) -> None:
            nonlocal done
            if done:
                raise _HeadersSent
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                if message.get("more_body", False):
                    raise _HeadersSent

        try:
            await self.app({**scope, "method": "GET"}, receive, headers_only)
        except _HeadersSent:
            pass


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # Without torch the app still holds ~95k long-lived objects after start-up (FastAPI, pydantic, SQLAlchemy,
    # Celery's modules), and every full collection walks them all: a metrics page makes enough objects to set one
    # off, and that pause showed as its p99 (benchmarks/README.md, the API). Frozen, they are never walked again.
    model_catalog()  # a bad models file stops the API here, naming its problems
    gc.freeze()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="grpo-service",
        version="0.1.0",
        lifespan=_lifespan,
        # No redirect from /v1/jobs/ to /v1/jobs: Starlette builds its Location from the Host header the client
        # sent, so any host could be made to appear there (an open redirect). A path with a stray slash is a 404.
        redirect_slashes=False,
        generate_unique_id_function=_operation_id,
        description="GRPO fine-tuning jobs with LoRA adapters. Every /v1 call needs `Authorization: Bearer <key>`.",
    )
    for router in (
        health.router,
        datasets.router,
        catalog.router,
        rewards.router,
        preflights.router,
        jobs.router,
        usage.router,
    ):
        app.include_router(router)
    mount_dashboard(app)

    def body_limit(path: str) -> int:
        # Uploads have their own cap (the route answers 413 with the exact figure); every other body is a small
        # JSON document. Counted as the body arrives, so a chunked body without Content-Length is capped too.
        settings = get_settings()
        if path == "/v1/datasets":
            return int(settings.max_upload_mb * 2**20) + 64 * 1024  # room for the multipart envelope
        if path.startswith("/v1/rewards"):
            # A reward's source (MAX_SOURCE_BYTES, 256 KiB: the route names that limit with a 422) and a dry run's
            # items (each string up to 64 KiB) are larger than a job spec; past this the body is not worth reading.
            return REWARD_BODY_BYTES
        return settings.max_body_kb * 1024

    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    add_metrics(app)  # its timing middleware sits inside HeadAsGet, which hands the app a copy of the scope
    app.add_middleware(HeadAsGet)
    # Open event streams of this process. A slot frees when its job ends or its client leaves, which nothing
    # predicts: a short, fixed wait. (A browser's EventSource does not retry after a 429 at all; it reports an error
    # and the page decides.)
    app.state.event_streams = TenantSlots(
        "event streams",
        "open",
        per_tenant_setting="max_streams_per_tenant",
        total_setting="max_streams",
        retry_after_seconds=5,
        advice="close one, or ",
    )
    # Reward uploads and dry runs: each holds a worker thread and a sandbox (or reward process) for up to its
    # timeout (what they usually take: benchmarks/README.md).
    app.state.reward_checks = TenantSlots(
        "reward checks",
        "running",
        per_tenant_setting="max_reward_checks_per_tenant",
        total_setting="max_reward_checks",
        retry_after_seconds=2,
    )

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error), "errors": []}, status_code=404)

    @app.exception_handler(InvalidInput)
    async def invalid_input(_request: Request, error: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": str(error), "errors": error.errors}, status_code=error.status_code)

    @app.exception_handler(Unavailable)
    async def unavailable(_request: Request, error: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(error), "errors": []}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_describe(e) for e in error.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems), "errors": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the methods of the first route that matched the path; a resource such as
            # /v1/jobs is served by several routes (GET and POST), and Allow must list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"detail": str(error.detail), "errors": []}, status_code=error.status_code, headers=headers)

    return app


app = create_app()
