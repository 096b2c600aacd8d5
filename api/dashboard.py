"""The web dashboard: static files (api/static/) served by the API process itself, no build step. The page talks to
the same REST API as any client, with the key the user pastes (see api/static/app.js for how the event stream
authenticates without the key ever appearing in a URL)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service_core.models import JOB_STATUSES, TERMINAL_STATUSES

STATIC_DIR = Path(__file__).parent / "static"
STATUSES_MODULE = STATIC_DIR / "statuses.js"
# Everything the page loads comes from this origin (the chart library is vendored), so the browser may refuse the
# rest: an injected script or a request to another host. Inline style attributes are allowed: uPlot sizes its
# canvas and legend with them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag): a new version of the service shows at the next load
}


class _DashboardFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount_dashboard(app: FastAPI) -> None:
    """`/` answers the page, `/static/...` its scripts, styles and the vendored chart library; none is in the
    OpenAPI, and none needs a key (they hold no tenant data)."""

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=HEADERS)

    app.mount("/static", _DashboardFiles(directory=STATIC_DIR), name="static")


def statuses_module() -> str:
    """The text of api/static/statuses.js: the job statuses of service_core.models written out for the page, which
    has no build step to import them with. tests/api/test_status_contract.py fails while the file differs."""
    return (
        "// Generated from service_core/models.py by `python -m api.dashboard`; do not edit.\n"
        f"export const STATUSES = {json.dumps(list(JOB_STATUSES))};\n"
        f"export const TERMINAL_STATUSES = {json.dumps(list(TERMINAL_STATUSES))};\n"
    )


if __name__ == "__main__":
    STATUSES_MODULE.write_text(statuses_module())
    print(f"wrote {STATUSES_MODULE}")
