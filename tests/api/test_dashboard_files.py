"""The dashboard's files as the API serves them (no database needed): the page, everything it loads, the headers
that keep it to this origin, and the package data that puts them in a wheel."""

import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.dashboard import STATIC_DIR

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client():
    from api.main import create_app

    return TestClient(create_app())


def referenced_files() -> set[str]:
    """Every /static path the page names, and every module its scripts import."""
    html = (STATIC_DIR / "index.html").read_text()
    paths = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    for script in STATIC_DIR.glob("*.js"):
        paths |= {f"/static/{name}" for name in re.findall(r'from "\./([\w.]+)"', script.read_text())}
    return paths


def test_the_page_is_served_at_the_root_with_headers_that_keep_it_to_this_origin(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert client.head("/").status_code == 200


def test_everything_the_page_loads_is_served_from_the_package(client):
    paths = referenced_files()
    assert {"/static/app.js", "/static/api.js", "/static/charts.js", "/static/dom.js"} <= paths
    assert "/static/vendor/uplot/uPlot.iife.min.js" in paths
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" in response.headers
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert "MIT License" in client.get("/static/vendor/uplot/LICENSE").text
    # Nothing the page loads comes from elsewhere (a CDN): every script and stylesheet is a /static path.
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)


def test_no_file_outside_the_static_folder_is_served(client):
    assert client.get("/static/%2e%2e/dashboard.py").status_code == 404
    assert client.get("/static/..%2fdashboard.py").status_code == 404
    assert client.get("/static/missing.js").status_code == 404


def test_the_dashboard_is_not_part_of_the_rest_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_package_data_puts_every_dashboard_file_in_a_wheel():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    # Matched as setuptools globs them (a `*` stays within one folder).
    packaged = {path for pattern in patterns for path in STATIC_DIR.parent.glob(pattern)}
    files = {path for path in STATIC_DIR.rglob("*") if path.is_file()}
    assert files and files <= packaged, f"not in [tool.setuptools.package-data] api: {sorted(files - packaged)}"
