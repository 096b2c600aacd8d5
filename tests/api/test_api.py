"""The REST API against a real database, SQLite and PostgreSQL (see conftest.py). No worker runs here: jobs stay
queued, and the embedded broker's folder shows what was sent."""

import json

import pytest

from service_core.settings import get_settings
from tests.api.helpers import ROWS, job_spec, jsonl, new_key, queued_messages, sent_turns, upload


def test_upload_lists_and_describes_a_dataset(service, alice):
    response = upload(service, alice, jsonl(ROWS))
    assert response.status_code == 201
    body = response.json()
    assert body["rows"] == 5 and body["fields"] == ["answer", "prompt"] and len(body["sha256"]) == 64
    assert service.get(f"/v1/datasets/{body['id']}", headers=alice).json()["id"] == body["id"]
    assert [d["id"] for d in service.get("/v1/datasets", headers=alice).json()["data"]] == [body["id"]]


def test_create_get_list_and_cancel_a_job(service, alice, dataset_id):
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == {"step": 0, "max_steps": 3, "fraction": 0.0}
    assert job["hyperparameters"]["group_size"] == 4 and job["hyperparameters"]["epsilon"] == 0.2  # defaults filled
    assert queued_messages() == 1
    assert sent_turns() == [get_settings().queue]  # a turn for its queue: the worker picks whose job runs

    assert service.get(f"/v1/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]
    listed = service.get("/v1/jobs", headers=alice, params={"status": "queued"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]
    assert service.get("/v1/jobs", headers=alice, params={"status": "running"}).json()["count"] == 0

    cancelled = service.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None


def test_list_paginates_newest_first(service, alice, dataset_id):
    ids = [service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"] for _ in range(5)]
    first = service.get("/v1/jobs", headers=alice, params={"limit": 2}).json()
    rest = service.get("/v1/jobs", headers=alice, params={"limit": 10, "offset": 2}).json()
    assert first["count"] == 5
    assert [j["id"] for j in first["data"] + rest["data"]] == ids[::-1]


def test_idempotency_key_returns_the_same_job_and_queues_once(service, alice, dataset_id):
    headers = {**alice, "Idempotency-Key": "retry-me"}
    first = service.post("/v1/jobs", headers=headers, json=job_spec(dataset_id))
    second = service.post("/v1/jobs", headers=headers, json=job_spec(dataset_id))
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert queued_messages() == 1
    # The same key from another tenant is another job.
    bob = new_key("bob")
    other_dataset = upload(service, bob, jsonl(ROWS)).json()["id"]
    third = service.post("/v1/jobs", headers={**bob, "Idempotency-Key": "retry-me"}, json=job_spec(other_dataset))
    assert third.json()["id"] != first.json()["id"]


def test_an_idempotency_key_reused_with_another_spec_is_a_409_and_an_empty_key_a_422(service, alice, dataset_id):
    headers = {**alice, "Idempotency-Key": "once"}
    first = service.post("/v1/jobs", headers=headers, json=job_spec(dataset_id, hyperparameters={"max_steps": 3}))
    # The same spec written out with a default filled in is the same job.
    same = job_spec(dataset_id, hyperparameters={"max_steps": 3, "group_size": 8})
    assert service.post("/v1/jobs", headers=headers, json=same).json()["id"] == first.json()["id"]
    other = service.post("/v1/jobs", headers=headers, json=job_spec(dataset_id, hyperparameters={"max_steps": 4}))
    assert other.status_code == 409
    assert "hyperparameters differ" in other.json()["detail"] and first.json()["id"] in other.json()["detail"]
    empty = service.post("/v1/jobs", headers={**alice, "Idempotency-Key": ""}, json=job_spec(dataset_id))
    assert empty.status_code == 422 and "idempotency-key" in empty.json()["detail"].lower()
    assert service.get("/v1/jobs", headers=alice).json()["count"] == 1
    assert queued_messages() == 1


def test_metrics_page_by_step_with_an_after_step_cursor(service, alice, dataset_id):
    from service_core.db import session_scope
    from worker import writes

    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    with session_scope() as session:
        writes.record_metrics(session, job_id=job_id, kind="eval", step=0, values={"eval_reward_sampled": 0.1})
        for step in range(1, 6):
            writes.record_metrics(session, job_id=job_id, kind="train", step=step, values={"reward_mean": step / 10})
        assert not writes.record_metrics(session, job_id=job_id, kind="train", step=3, values={"reward_mean": 9.0})
    page = service.get(f"/v1/jobs/{job_id}/metrics", headers=alice, params={"limit": 3}).json()
    assert [(r["step"], r["kind"]) for r in page["data"]] == [(0, "eval"), (1, "train"), (2, "train")]
    assert page["next_after_step"] == 2
    rest = service.get(f"/v1/jobs/{job_id}/metrics", headers=alice, params={"after_step": 2}).json()
    assert [r["step"] for r in rest["data"]] == [3, 4, 5] and rest["next_after_step"] is None
    assert rest["data"][0]["values"] == {"reward_mean": 0.3}  # the replayed step did not overwrite


def test_the_hot_reads_send_the_bytes_their_schemas_serialise(service, alice, dataset_id):
    """GET /v1/jobs/{id} and its metrics page build their bodies without FastAPI's response_model (the metrics
    page spliced from the stored JSON): the bytes must still be the public schemas' own serialisation."""
    from api.schemas import JobPublic, MetricPublic, MetricsPublic
    from service_core.db import session_scope
    from worker import writes

    job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()
    recorded = [
        ("eval", 0, {"eval_reward_sampled": 0.1}),
        ("train", 1, {"learning_rate": 1e-05, "reward_mean": 1, "loss": 0.1 + 0.2, "kl": -2.5e-17}),
        ("eval", 1, {"eval_reward_sampled": 1e22}),
        ("train", 2, {"reward_mean": 0.5}),
    ]
    with session_scope() as session:
        for kind, step, values in recorded:
            writes.record_metrics(session, job_id=job["id"], kind=kind, step=step, values=values)
    response = service.get(f"/v1/jobs/{job['id']}/metrics", headers=alice, params={"limit": 1})
    first_page = [MetricPublic(step=step, kind=kind, values=values) for kind, step, values in recorded[:1]]  # type: ignore[arg-type]
    assert response.content == MetricsPublic(data=first_page, next_after_step=0).model_dump_json().encode()
    response = service.get(f"/v1/jobs/{job['id']}/metrics", headers=alice, params={"after_step": 0})
    rest = [MetricPublic(step=step, kind=kind, values=values) for kind, step, values in recorded[1:]]  # type: ignore[arg-type]
    assert response.content == MetricsPublic(data=rest, next_after_step=None).model_dump_json().encode()
    assert b'"learning_rate":0.00001' in response.content and response.headers["content-type"] == "application/json"
    response = service.get(f"/v1/jobs/{job['id']}", headers=alice)
    assert response.content == JobPublic.model_validate(job).model_dump_json().encode()


def test_the_event_stream_of_a_finished_job_replays_its_events_and_ends(service, alice, dataset_id):
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    service.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    response = service.get(f"/v1/jobs/{job_id}/events", headers=alice)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in response.text.strip().split("\n\n")]
    assert [(lines[1], json.loads(lines[2].removeprefix("data: "))["status"]) for lines in events] == [
        ("event: status", "queued"),
        ("event: status", "cancelled"),
    ]
    last_id = events[0][0].removeprefix("id: ")
    resumed = service.get(f"/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": last_id})
    assert resumed.text.count("event: status") == 1 and '"cancelled"' in resumed.text


def id_routes(job_id, dataset_id):
    """Every (method, path) that takes an id."""
    return [
        ("get", f"/v1/datasets/{dataset_id}"),
        ("get", f"/v1/jobs/{job_id}"),
        ("post", f"/v1/jobs/{job_id}/cancel"),
        ("get", f"/v1/jobs/{job_id}/metrics"),
        ("get", f"/v1/jobs/{job_id}/events"),
        ("get", f"/v1/jobs/{job_id}/checkpoints"),
        ("get", f"/v1/jobs/{job_id}/checkpoints/1/adapter"),
        ("get", f"/v1/jobs/{job_id}/adapter"),
    ]


def test_every_v1_call_needs_a_key(service, alice, dataset_id):
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    calls = [
        ("get", "/v1/datasets"),
        ("post", "/v1/datasets"),
        ("get", "/v1/models"),
        ("get", "/v1/rewards"),
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        *id_routes(job_id, dataset_id),
    ]
    for headers in ({}, {"Authorization": "Bearer grpo_not-a-real-key"}, {"Authorization": "Basic abc"}):
        for method, path in calls:
            response = getattr(service, method)(path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert "API key" in response.json()["detail"]
    assert service.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"  # nothing was cancelled


def test_another_tenants_ids_answer_404_like_missing_ones(service, alice, bob, dataset_id):
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    paths = id_routes(job_id, dataset_id)
    for method, path in paths:
        theirs = getattr(service, method)(path, headers=bob)
        missing = getattr(service, method)(
            path.replace(job_id, "job_" + "0" * 32).replace(dataset_id, "ds_" + "0" * 32), headers=bob
        )
        assert theirs.status_code == 404 == missing.status_code, (method, path)
        assert theirs.json()["detail"].replace(job_id, "X").replace(dataset_id, "X") == missing.json()[
            "detail"
        ].replace("job_" + "0" * 32, "X").replace("ds_" + "0" * 32, "X")
    assert service.get("/v1/datasets", headers=bob).json()["count"] == 0
    assert service.get("/v1/jobs", headers=bob).json()["count"] == 0
    # Bob cannot train on Alice's dataset either.
    response = service.post("/v1/jobs", headers=bob, json=job_spec(dataset_id))
    assert response.status_code == 422 and "not found" in response.text
    assert service.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"rewards": [{"name": "os:system"}]}, "unknown reward 'os:system'; valid: exact_match, format_tags"),
        (
            {"hyperparameters": {"group_size": 1}},
            "hyperparameters.group_size: Input should be greater than or equal to 2, got 1",
        ),
        (
            {"hyperparameters": {"epsilon": 1.5, "beta": -1}},
            "hyperparameters.epsilon: Input should be less than 1, got 1.5",
        ),
        ({"hyperparameters": {"max_step": 3}}, "hyperparameters.max_step: Extra inputs are not permitted, got 3"),
        (
            {"base_model": "gpt-9"},
            "unknown base_model 'gpt-9'; valid: gemma3-270m, smollm2-135m-instruct, tiny-random-llama",
        ),
        ({"rewards": [{"name": "regex_match", "params": {}}]}, "param pattern: Field required"),
        ({"rewards": []}, "rewards"),
        ({"dataset_id": "ds_" + "1" * 32}, "not found"),
    ],
)
def test_bad_job_specs_are_refused_and_nothing_is_queued(service, alice, dataset_id, change, expected):
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id, **change))
    assert response.status_code == 422, response.text
    assert expected in response.text
    assert queued_messages() == 0
    assert service.get("/v1/jobs", headers=alice).json()["count"] == 0


def test_a_dataset_without_the_field_a_reward_needs_is_refused(service, alice):
    no_answer = upload(service, alice, jsonl([{"prompt": "hi"}])).json()["id"]
    response = service.post("/v1/jobs", headers=alice, json=job_spec(no_answer))
    assert response.status_code == 422
    assert "reward 'numeric_answer' needs dataset field(s) answer" in response.json()["errors"][0]
    assert queued_messages() == 0


def test_malformed_jsonl_is_refused_naming_each_line(service, alice):
    content = b'{"prompt": "ok", "answer": 1}\n{broken\n{"answer": 2}\n'
    response = upload(service, alice, content)
    assert response.status_code == 422
    body = response.json()
    assert "2 bad line(s)" in body["detail"]
    assert body["errors"][0].startswith("line 2: invalid JSON") and body["errors"][1].startswith(
        "line 3: needs exactly one of"
    )
    assert service.get("/v1/datasets", headers=alice).json()["count"] == 0


def test_an_oversized_upload_is_refused_with_413(service, alice):
    big = jsonl([{"prompt": "x" * 100, "answer": i} for i in range(200)])  # ~25 KB, over the 0.01 MiB cap set here
    response = upload(service, alice, big)
    assert response.status_code == 413
    assert "MiB limit" in response.json()["detail"]
    assert service.get("/v1/datasets", headers=alice).json()["count"] == 0


def test_a_missing_file_field_is_a_clear_error(service, alice):
    response = service.post("/v1/datasets", headers=alice, data={"other": "x"})
    assert response.status_code == 422 and "multipart field `file`" in response.json()["detail"]


def test_catalog_endpoints(service, alice):
    models = {m["name"] for m in service.get("/v1/models", headers=alice).json()["data"]}
    assert models == {"smollm2-135m-instruct", "gemma3-270m", "tiny-random-llama"}
    rewards = {r["name"]: r for r in service.get("/v1/rewards", headers=alice).json()["data"]}
    assert {"numeric_answer", "exact_match", "regex_match", "format_tags", "length_target"} <= set(rewards)
    assert rewards["numeric_answer"]["fields"] == ["answer"]
    assert "tolerance" in rewards["numeric_answer"]["params_schema"]["properties"]


def test_health_readiness_and_openapi(service):
    health = service.get("/healthz").json()
    sandbox = health.pop("sandbox")
    assert health == {"status": "ok", "database": None, "broker": None}
    # This machine runs the suite as root with bubblewrap and cgroup v1: tenant code gets everything, never as root.
    assert sandbox["level"] == "full" and sandbox["uid"] not in (0, None) and sandbox["bubblewrap"] == "ok", sandbox
    assert sandbox["cgroup"].startswith("cgroup v"), sandbox
    assert service.get("/readyz").json() == {"status": "ok", "database": True, "broker": True, "sandbox": None}
    schema = service.get("/openapi.json").json()
    assert {
        "JobCreate",
        "JobPublic",
        "JobsPublic",
        "DatasetPublic",
        "MetricsPublic",
        "CheckpointsPublic",
        "ErrorBody",
    } <= set(schema["components"]["schemas"])
    assert service.get("/docs").status_code == 200


def test_a_large_json_body_is_refused(service, alice, dataset_id):
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id, rewards=[{"name": "x" * 300_000}]))
    assert response.status_code == 413


def test_a_chunked_body_without_content_length_is_capped_too(service, alice):
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000  # 400 KB in all, over the 256 KiB JSON cap

    response = service.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=chunks())
    assert response.status_code == 413 and "KiB limit" in response.json()["detail"]


def test_a_job_submitted_while_the_broker_is_down_is_accepted_and_stays_queued(service, alice, dataset_id, monkeypatch):
    from tests.service_env import clear_service_caches

    monkeypatch.setenv("GRPO_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    clear_service_caches()
    response = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert response.status_code == 201 and response.json()["status"] == "queued"
    assert service.get("/readyz").status_code == 503


def test_a_tenant_past_its_queued_jobs_cap_gets_a_429_naming_the_cap_and_its_setting(
    service, alice, bob, dataset_id, monkeypatch
):
    monkeypatch.setenv("GRPO_MAX_QUEUED_JOBS_PER_TENANT", "2")
    get_settings.cache_clear()
    first = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    assert service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).status_code == 201
    refused = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"].isdigit()
    assert "this tenant has 2 queued, the limit is 2 (GRPO_MAX_QUEUED_JOBS_PER_TENANT)" in refused.json()["detail"]
    assert queued_messages() == 2
    # Another tenant is not held to alice's queue; a queued job cancelled makes room again.
    bob_dataset = upload(service, bob, jsonl(ROWS)).json()["id"]
    assert service.post("/v1/jobs", headers=bob, json=job_spec(bob_dataset)).status_code == 201
    service.post(f"/v1/jobs/{first}/cancel", headers=alice)
    assert service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).status_code == 201
    # The operator's limit for the tenant takes the place of the setting, and the refusal says so.
    from api.cli import main as grpo

    assert grpo(["tenants", "set", "alice", "--max-queued", "3"]) == 0
    assert service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).status_code == 201
    refused = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id))
    assert refused.status_code == 429
    assert "the limit is 3 (this tenant's own limit, set by the operator" in refused.json()["detail"]
