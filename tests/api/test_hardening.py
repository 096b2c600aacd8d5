"""What the fault suite's cases 8 and 9 (schemathesis, path traversal) found, kept in the fast suite: error
responses documented as they are sent, timestamps with their offset, odd ids and out-of-range integers answered
4xx (not a database error), and no download that leaves the artifacts folder."""

import re

from sqlalchemy import text

from tests.api.helpers import ROWS, job_spec, jsonl, upload
from tests.waiting import wait_for

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_the_openapi_documents_the_errors_the_api_sends(service):
    schema = service.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert responses["413"]["content"]["application/json"]["schema"] == error_body, (method, path)
            if path.startswith("/v1"):
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
                assert responses["401"]["content"]["application/json"]["schema"] == error_body, (method, path)
            if "{" in path:
                assert responses["404"]["content"]["application/json"]["schema"] == error_body, (method, path)
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == error_body, (method, path)


def test_timestamps_carry_their_offset(service, alice):
    dataset = upload(service, alice, jsonl(ROWS)).json()
    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset["id"])).json()
    cancelled = service.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    for value in (dataset["created_at"], job["created_at"], cancelled["finished_at"]):
        assert RFC3339.match(value), value


def test_odd_ids_and_huge_integers_are_client_errors(service, alice):
    for path in ("/v1/jobs/%00", "/v1/datasets/a%00b", "/v1/jobs/..%2f..%2fetc/adapter", "/v1/jobs/x%00/checkpoints"):
        response = service.get(path, headers=alice)
        assert response.status_code == 404 and response.json()["errors"] == [], path
    for path in ("/v1/jobs?offset=9223372036854775808", "/v1/jobs/job_1/checkpoints/9223372036854775808/adapter"):
        assert service.get(path, headers=alice).status_code == 422, path
    response = service.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=b"\xff")
    assert response.status_code in (400, 422) and "detail" in response.json()


def test_a_malformed_multipart_upload_is_a_422(service, alice):
    body = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n" * 6 + b"--b--\r\n"
    response = service.post(
        "/v1/datasets", headers={**alice, "Content-Type": "multipart/form-data; boundary=b"}, content=body
    )
    assert response.status_code == 422 and "multipart" in response.json()["detail"]


def test_upload_names_are_labels_without_paths(service, alice):
    for name, label in (("../../etc/passwd", "passwd"), ("..\\x.jsonl", "x.jsonl"), ("a\x00b.jsonl", "ab.jsonl")):
        response = upload(service, alice, jsonl(ROWS), name=name)
        assert response.status_code == 201 and response.json()["name"] in (label, "a%00b.jsonl"), response.text


def test_method_not_allowed_lists_every_method_of_the_resource(service, alice):
    response = service.delete("/v1/jobs", headers=alice)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_an_archive_that_links_outside_the_artifacts_folder_is_not_served(service, alice, tmp_path):
    from service_core import artifacts
    from service_core.db import session_scope
    from worker import writes

    dataset = upload(service, alice, jsonl(ROWS)).json()["id"]
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset)).json()["id"]
    outside = tmp_path / "outside.txt"
    outside.write_text("not an adapter")
    archive = artifacts.checkpoint_archive(job_id, 1)
    archive.parent.mkdir(parents=True)
    archive.symlink_to(outside)
    with session_scope() as session:
        writes.record_checkpoint(session, job_id=job_id, step=1, sha256="0" * 64, size=14)
    for path in (f"/v1/jobs/{job_id}/adapter", f"/v1/jobs/{job_id}/checkpoints/1/adapter"):
        response = service.get(path, headers=alice)
        assert response.status_code == 404 and "not an adapter" not in response.text, path
    archive.unlink()  # a missing archive is a 404 too, not a 500
    assert service.get(f"/v1/jobs/{job_id}/adapter", headers=alice).status_code == 404


def test_a_checked_key_is_trusted_for_a_while_and_a_wrong_key_is_looked_up_every_time(service, alice, monkeypatch):
    from sqlalchemy import delete, event
    from sqlalchemy.engine import Engine

    from service_core.db import session_scope
    from service_core.models import ApiKey
    from service_core.settings import get_settings

    lookups = []

    def count_key_lookups(_connection, _cursor, statement, *_args):
        if "FROM api_keys" in statement:
            lookups.append(statement)

    event.listen(Engine, "before_cursor_execute", count_key_lookups)
    try:
        assert service.get("/v1/jobs", headers=alice).status_code == 200
        assert service.get("/v1/jobs", headers=alice).status_code == 200
        assert len(lookups) == 1, "the second call with the same key must not query the keys table"
        wrong = {"Authorization": "Bearer grpo_notakey0000000000"}
        assert [service.get("/v1/jobs", headers=wrong).status_code for _ in range(2)] == [401, 401]
        assert len(lookups) == 3, "a key that failed is never remembered"
    finally:
        event.remove(Engine, "before_cursor_execute", count_key_lookups)

    with session_scope() as session:
        session.execute(delete(ApiKey))
    assert service.get("/v1/jobs", headers=alice).status_code == 200  # still within GRPO_AUTH_CACHE_SECONDS
    monkeypatch.setenv("GRPO_AUTH_CACHE_SECONDS", "0")
    get_settings.cache_clear()
    assert service.get("/v1/jobs", headers=alice).status_code == 401


def test_head_answers_wherever_get_does_with_headers_and_no_body(service, live, alice, dataset_id):
    import httpx

    base_url, app, _server = live
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    paths = [
        "/healthz",
        "/openapi.json",
        "/v1/datasets",
        f"/v1/datasets/{dataset_id}",
        "/v1/models",
        "/v1/jobs",
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/metrics",
        f"/v1/jobs/{job_id}/checkpoints",
        f"/v1/jobs/{job_id}/adapter",  # 404: no checkpoint yet, answered alike
        "/v1/jobs/job_" + "0" * 32,
    ]
    with httpx.Client(base_url=base_url, headers=alice, timeout=10) as http:
        for path in paths:
            get, head = http.get(path), http.head(path)
            assert head.status_code == get.status_code and head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.headers.get("content-length") == get.headers.get("content-length"), path
        # The event stream of a queued job never ends, but its HEAD does, and gives back its stream slot.
        head = http.head(f"/v1/jobs/{job_id}/events")
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        assert head.content == b""
        wait_for(lambda: app.state.event_streams.total == 0, "a HEAD of an event stream kept its slot")
        assert http.head("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        cancel = http.head(f"/v1/jobs/{job_id}/cancel")  # POST only: HEAD is not GET there
        assert cancel.status_code == 405 and cancel.headers["allow"] == "POST"


def test_a_path_with_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(service, alice):
    for path in ("/v1/jobs/", "/v1/datasets/", "/healthz/"):
        response = service.get(path, headers={**alice, "Host": "evil.example"}, follow_redirects=False)
        assert response.status_code == 404 and "location" not in response.headers, (path, response.headers)
        assert response.json()["errors"] == []


def test_the_database_and_the_data_folder_are_private(tmp_path, monkeypatch):
    """`grpo migrate` on a fresh data folder, as an operator runs it: the folder is 0700; its SQLite database and
    the -wal and -shm files beside it are 0600. A database an older version left 0644 is tightened when opened."""
    import os
    import stat
    import subprocess
    import sys

    from tests.service_env import clear_service_caches

    data = tmp_path / "data"
    monkeypatch.setenv("GRPO_DATA_DIR", str(data))
    monkeypatch.delenv("GRPO_DATABASE_URL", raising=False)
    done = subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=dict(os.environ), capture_output=True)
    assert done.returncode == 0, done.stderr

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    database = data / "grpo.db"
    files = [database, data / "grpo.db-wal", data / "grpo.db-shm"]
    clear_service_caches()
    from service_core.db import get_engine, session_scope

    try:
        assert mode(data) == 0o700 and mode(database) == 0o600
        with session_scope() as session:  # an open connection: SQLite has made its -wal and -shm files
            session.execute(text("SELECT 1 FROM jobs"))
            assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
        get_engine().dispose()

        database.chmod(0o644)
        clear_service_caches()
        with session_scope() as session:
            session.execute(text("SELECT 1 FROM jobs"))
        assert mode(database) == 0o600
    finally:
        get_engine().dispose()
        clear_service_caches()


def test_the_access_log_never_prints_a_query_string(service, tmp_path):
    """`grpo api`, as an operator starts it: a key sent in a query string (or anything else there) stays out of
    the access log, which still shows the request."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "api.log"
    with open(log, "w") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=dict(os.environ), stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz?api_key=grpo_secret_one", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert api.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        httpx.get(f"http://127.0.0.1:{port}/v1/jobs?api_key=grpo_secret_two&limit=5", timeout=5)
    finally:
        api.terminate()
        api.wait(timeout=30)
    text_logged = log.read_text()
    assert "secret" not in text_logged and "api_key" not in text_logged, text_logged
    assert '"GET /healthz HTTP/1.1" 200' in text_logged and '"GET /v1/jobs HTTP/1.1" 401' in text_logged, text_logged
