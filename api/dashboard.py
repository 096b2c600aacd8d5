"""The web dashboard: static files (api/static/) served by the API process itself, no build step. The page talks to
the same REST API as any client, with the key the user pastes (see api/static/app.js for how the event stream
authenticates without the key ever appearing in a URL)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
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
