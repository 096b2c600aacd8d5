"""What the fault suite's cases 8 and 9 (schemathesis, path traversal) found, kept in the fast suite: error
responses documented as they are sent, timestamps with their offset, odd ids and out-of-range integers answered
4xx (not a database error), and no download that leaves the artifacts folder."""

import re

from tests.api.test_api import ROWS, job_spec, jsonl, upload

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
    from api import artifacts
    from api.db import session_scope
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

    from api.db import session_scope
    from api.models import ApiKey
    from api.settings import get_settings

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
