"""Event streams against a real server (uvicorn in this process, see conftest.live): capped per tenant and in all,
each slot given back however its stream ends; Last-Event-ID values that are not event ids; and event data and
metrics that are valid JSON even when the trainer recorded NaN."""

import json
import math
from contextlib import ExitStack

import httpx
import pytest

from tests.api.helpers import job_spec
from tests.waiting import wait_for


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as browsers' JSON.parse and every strict parser do."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON: {text}"))


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if fields:
            events.append({**fields, "data": strict_json(fields["data"])})
    return events


@pytest.fixture
def caps(monkeypatch):
    from service_core.settings import get_settings

    monkeypatch.setenv("GRPO_MAX_STREAMS_PER_TENANT", "2")
    monkeypatch.setenv("GRPO_MAX_STREAMS", "3")
    get_settings.cache_clear()


def test_streams_past_a_cap_get_429_and_every_end_of_a_stream_gives_its_slot_back(
    service, live, caps, alice, bob, dataset_id, monkeypatch
):
    from api.services import progress as progress_service

    base_url, app, server = live
    alice_job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    bob_dataset = service.post(
        "/v1/datasets", headers=bob, files={"file": ("b.jsonl", b'{"prompt": "1 + 1?", "answer": 2}\n')}
    ).json()["id"]
    bob_job = service.post("/v1/jobs", headers=bob, json=job_spec(bob_dataset)).json()["id"]

    with ExitStack() as stack, httpx.Client(base_url=base_url, timeout=10) as http:

        def open_stream(headers, job_id):
            return stack.enter_context(http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers))

        # A job that does not exist costs no slot, however often it is asked for.
        for _ in range(3):
            assert http.get("/v1/jobs/job_" + "0" * 32 + "/events", headers=alice).status_code == 404
        first, second = open_stream(alice, alice_job), open_stream(alice, alice_job)
        assert first.status_code == second.status_code == 200
        refused = open_stream(alice, alice_job)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        refused.read()
        assert "GRPO_MAX_STREAMS_PER_TENANT" in refused.json()["detail"] and "limit is 2" in refused.json()["detail"]
        assert open_stream(bob, bob_job).status_code == 200  # another tenant is not held up by alice's cap
        refused = open_stream(bob, bob_job)
        assert refused.status_code == 429
        refused.read()
        assert "GRPO_MAX_STREAMS)" in refused.json()["detail"]
        slots = app.state.event_streams
        assert slots.by_tenant.total() == slots.total == 3 and sorted(slots.by_tenant.values()) == [1, 2]

        # The client goes away: its slot comes back, and the tenant can open another stream.
        first.close()
        wait_for(lambda: slots.total == 2, "a closed stream kept its slot")
        third = open_stream(alice, alice_job)
        assert third.status_code == 200

        # The job finishes: its streams end by themselves, and give their slots back.
        service.post(f"/v1/jobs/{alice_job}/cancel", headers=alice)
        for stream in (second, third):
            events = sse_events(stream.read().decode())
            assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"
        wait_for(lambda: slots.total == 1, "a finished stream kept its slot")

        # An error while streaming (here a read that fails, for this job only: bob's open stream must live on to the
        # shutdown below) cuts the stream and gives its slot back.
        broken_job = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
        events_after = progress_service.events_after

        def failing_read(session, *, job_id, after_id):
            if job_id == broken_job:
                raise RuntimeError("the database went away")
            return events_after(session, job_id=job_id, after_id=after_id)

        monkeypatch.setattr(progress_service, "events_after", failing_read)
        broken = open_stream(alice, broken_job)
        assert broken.status_code == 200
        with pytest.raises(httpx.HTTPError):
            broken.read()
        wait_for(lambda: slots.total == 1, "a stream that failed kept its slot")
        monkeypatch.setattr(progress_service, "events_after", events_after)

        # The server stops with a stream still open: the stream is cancelled and its slot given back.
        server.should_exit = True
        wait_for(lambda: not server.started or slots.total == 0, "shutdown", timeout=20)
        wait_for(lambda: slots.total == 0, "a stream open at shutdown kept its slot", timeout=20)


def test_the_events_route_documents_its_429(service):
    operation = service.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert operation["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    header = next(p for p in operation["parameters"] if p["name"] == "last-event-id")
    # An integer, never null: a header is absent or has a value (a fuzzer reading null would send the text "null").
    assert header["in"] == "header" and not header["required"]
    assert {k: header["schema"][k] for k in ("type", "minimum", "maximum")} == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**31 - 1,
    }


def test_a_last_event_id_that_is_no_event_id_is_a_422_naming_the_header(service, alice, dataset_id):
    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    service.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    for value in ("9223372036854775808", "2147483648", "-1", "abc", "1.5", "\u00b2".encode(), "9" * 5000):
        response = service.get(f"/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": value})
        assert response.status_code == 422, (value[:30], response.text)
        assert "last-event-id" in response.json()["detail"], response.text
    # The largest id there can be is an id: nothing comes after it, and the finished job's stream ends cleanly.
    response = service.get(f"/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": str(2**31 - 1)})
    assert response.status_code == 200 and response.text == ""
    events = sse_events(service.get(f"/v1/jobs/{job_id}/events", headers=alice).text)
    resumed = service.get(f"/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": events[0]["id"]})
    assert [e["id"] for e in sse_events(resumed.text)] == [e["id"] for e in events[1:]]


def test_metrics_that_are_not_finite_are_stored_and_served_as_null(service, alice, dataset_id):
    from service_core.db import get_engine, session_scope
    from service_core.models import Event, MetricRow
    from worker import writes

    job_id = service.post("/v1/jobs", headers=alice, json=job_spec(dataset_id)).json()["id"]
    with session_scope() as session:
        writes.record_metrics(
            session,
            job_id=job_id,
            kind="train",
            step=1,
            values={"loss": math.nan, "kl": math.inf, "clip_ratio": -math.inf, "reward_mean": 0.5},
        )
    expected = {"loss": None, "kl": None, "clip_ratio": None, "reward_mean": 0.5}
    dialect = get_engine().dialect.name
    if dialect == "sqlite":
        # Rows an older worker wrote with NaN, which SQLite kept as it was given (PostgreSQL's json refuses NaN, so
        # it has none): they read as null too.
        with session_scope() as session:
            session.add(MetricRow(job_id=job_id, kind="train", step=2, values={"loss": math.nan}))
            session.add(Event(job_id=job_id, type="metrics", data={"step": 2, "values": {"loss": math.nan}}))
    service.post(f"/v1/jobs/{job_id}/cancel", headers=alice)

    page = strict_json(service.get(f"/v1/jobs/{job_id}/metrics", headers=alice).text)
    assert page["data"][0]["values"] == expected
    events = sse_events(service.get(f"/v1/jobs/{job_id}/events", headers=alice).text)
    metrics = [e["data"] for e in events if e["event"] == "metrics"]
    assert metrics[0] == {"step": 1, "kind": "train", "values": expected}
    if dialect == "sqlite":
        assert page["data"][1]["values"] == {"loss": None}
        assert metrics[1] == {"step": 2, "values": {"loss": None}}
