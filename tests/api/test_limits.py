"""api/limits.py in this process: TenantSlots' caps and refusals, and BodySizeLimit driven as a plain ASGI app with
hand-made scopes and receive/send coroutines (no server, no socket)."""

import asyncio
import json

import pytest
from fastapi import HTTPException

from api.limits import BodySizeLimit, TenantSlots
from api.main import create_app

pytestmark = pytest.mark.unit


# --- TenantSlots -------------------------------------------------------------------------------------------------


def event_streams() -> TenantSlots:
    """The API's own event-stream slots, as create_app builds them (a fresh count each call)."""
    return create_app().state.event_streams


def reward_checks() -> TenantSlots:
    return TenantSlots(
        "reward checks",
        "running",
        per_tenant_setting="max_reward_checks_per_tenant",
        total_setting="max_reward_checks",
        retry_after_seconds=2,
    )


def refused(slots: TenantSlots, tenant: str, *, per_tenant: int, total: int) -> HTTPException:
    with pytest.raises(HTTPException) as caught:
        slots.acquire(tenant, per_tenant=per_tenant, total=total)
    return caught.value


def test_a_tenant_takes_slots_up_to_its_cap_then_gets_a_429_naming_the_setting():
    slots = event_streams()
    slots.acquire("alice", per_tenant=2, total=10)
    slots.acquire("alice", per_tenant=2, total=10)
    error = refused(slots, "alice", per_tenant=2, total=10)
    assert error.status_code == 429
    assert error.detail == (
        "too many event streams: this tenant has 2 event streams open, the limit is 2 "
        "(GRPO_MAX_STREAMS_PER_TENANT); close one, or retry after 5 s"
    )
    assert error.headers == {"Retry-After": "5"}
    assert slots.by_tenant == {"alice": 2} and slots.total == 2  # the refusal took nothing


def test_one_tenant_at_its_cap_leaves_the_others_theirs():
    slots = event_streams()
    slots.acquire("alice", per_tenant=1, total=10)
    refused(slots, "alice", per_tenant=1, total=10)
    slots.acquire("bob", per_tenant=1, total=10)
    assert slots.by_tenant == {"alice": 1, "bob": 1} and slots.total == 2


def test_the_process_cap_holds_across_tenants_and_names_its_own_setting():
    slots = reward_checks()
    slots.acquire("alice", per_tenant=2, total=3)
    slots.acquire("alice", per_tenant=2, total=3)
    slots.acquire("bob", per_tenant=2, total=3)
    error = refused(slots, "carol", per_tenant=2, total=3)  # carol holds none: the process is full
    assert error.status_code == 429
    assert error.detail == (
        "too many reward checks: this API process has 3 reward checks running, the limit is 3 "
        "(GRPO_MAX_REWARD_CHECKS); retry after 2 s"
    )
    assert error.headers == {"Retry-After": "2"}
    assert "carol" not in slots.by_tenant and slots.total == 3


def test_the_tenant_cap_is_checked_before_the_process_cap():
    slots = reward_checks()
    slots.acquire("alice", per_tenant=1, total=1)
    assert "GRPO_MAX_REWARD_CHECKS_PER_TENANT" in refused(slots, "alice", per_tenant=1, total=1).detail


def test_the_caps_are_read_at_each_call():
    # The caps come from the settings at each request, not from the constructor.
    slots = event_streams()
    slots.acquire("alice", per_tenant=1, total=10)
    refused(slots, "alice", per_tenant=1, total=10)
    slots.acquire("alice", per_tenant=2, total=10)
    assert slots.by_tenant["alice"] == 2


def test_a_cap_of_zero_refuses_every_slot():
    slots = event_streams()
    assert "GRPO_MAX_STREAMS_PER_TENANT" in refused(slots, "alice", per_tenant=0, total=10).detail
    assert "GRPO_MAX_STREAMS)" in refused(slots, "alice", per_tenant=1, total=0).detail


def test_release_frees_a_slot_and_forgets_a_tenant_at_zero():
    slots = event_streams()
    slots.acquire("alice", per_tenant=2, total=2)
    slots.acquire("alice", per_tenant=2, total=2)
    refused(slots, "bob", per_tenant=2, total=2)
    slots.release("alice")
    assert slots.by_tenant == {"alice": 1} and slots.total == 1
    slots.acquire("bob", per_tenant=2, total=2)
    slots.release("alice")
    assert slots.by_tenant == {"bob": 1} and "alice" not in slots.by_tenant


def test_hold_keeps_a_slot_for_the_block_only():
    slots = reward_checks()
    with slots.hold("alice", per_tenant=1, total=5):
        assert slots.by_tenant == {"alice": 1}
        refused(slots, "alice", per_tenant=1, total=5)
    assert slots.by_tenant == {} and slots.total == 0


def test_hold_releases_when_the_block_raises():
    slots = reward_checks()
    with pytest.raises(RuntimeError, match="the check failed"):
        with slots.hold("alice", per_tenant=1, total=5):
            raise RuntimeError("the check failed")
    assert slots.by_tenant == {} and slots.total == 0
    with slots.hold("alice", per_tenant=1, total=5):  # the slot is free again
        assert slots.total == 1


def test_a_refused_hold_releases_nothing_it_did_not_take():
    slots = reward_checks()
    slots.acquire("alice", per_tenant=1, total=5)
    entered = False
    with pytest.raises(HTTPException) as caught:
        with slots.hold("alice", per_tenant=1, total=5):
            entered = True
    assert caught.value.status_code == 429 and not entered
    assert slots.by_tenant == {"alice": 1}  # alice's first slot is still hers


# --- BodySizeLimit -----------------------------------------------------------------------------------------------

LIMIT = 2048  # bytes: "2 KiB" in the refusal
REFUSAL_BODY = json.dumps({"detail": "request body larger than the 2 KiB limit", "errors": []}).encode()


class EchoApp:
    """An ASGI app that reads the whole body, then answers 200 with it; records what it was given."""

    def __init__(self):
        self.called = False
        self.received: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.called = True
        body = b""
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", b"1")]})
        await send({"type": "http.response.body", "body": body})


def http_scope(path="/v1/rewards", headers=()):
    return {"type": "http", "method": "POST", "path": path, "headers": list(headers)}


def drive(app, scope, chunks):
    """Call `app` with `chunks` as the request's body messages; return (messages sent, body messages received)."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    pending = list(messages)
    sent: list[dict] = []
    reads = []

    async def receive():
        reads.append(None)
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, len(reads)


def assert_refused(sent):
    assert sent == [
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(REFUSAL_BODY)).encode())],
        },
        {"type": "http.response.body", "body": REFUSAL_BODY},
    ]
    assert json.loads(sent[1]["body"]) == {"detail": "request body larger than the 2 KiB limit", "errors": []}


def test_a_declared_content_length_over_the_limit_is_refused_before_the_app_or_the_body():
    inner = EchoApp()
    sent, reads = drive(
        BodySizeLimit(inner, lambda path: LIMIT), http_scope(headers=[(b"content-length", b"2049")]), [b"x" * 2049]
    )
    assert_refused(sent)
    assert not inner.called and reads == 0


def test_a_body_of_exactly_the_limit_passes():
    inner = EchoApp()
    body = b"x" * LIMIT
    sent, _ = drive(
        BodySizeLimit(inner, lambda path: LIMIT), http_scope(headers=[(b"content-length", b"2048")]), [body]
    )
    assert sent[0]["status"] == 200 and sent[1]["body"] == body


def test_a_chunked_body_that_grows_past_the_limit_is_refused_and_the_app_told_the_client_left():
    inner = EchoApp()
    sent, reads = drive(
        BodySizeLimit(inner, lambda path: LIMIT), http_scope(), [b"a" * 1000, b"b" * 1000, b"c" * 100, b"d"]
    )
    # 1000 + 1000 + 100 = 2100 > 2048: refused at the third chunk, the fourth never read.
    assert_refused(sent)  # the app's own 200 after the disconnect was dropped
    assert reads == 3
    assert [message["type"] for message in inner.received] == ["http.request", "http.request", "http.disconnect"]


def test_the_app_is_not_asked_to_read_again_after_the_refusal():
    class ReadsTwiceAfterDisconnect(EchoApp):
        async def __call__(self, scope, receive, send):
            await super().__call__(scope, receive, send)
            self.received.append(await receive())

    inner = ReadsTwiceAfterDisconnect()
    sent, reads = drive(BodySizeLimit(inner, lambda path: LIMIT), http_scope(), [b"a" * 3000, b"b"])
    assert_refused(sent)
    assert reads == 1  # the client's receive is not read past the refusal
    assert [message["type"] for message in inner.received] == ["http.disconnect", "http.disconnect"]


def test_a_content_length_that_understates_the_body_does_not_get_it_past():
    inner = EchoApp()
    sent, _ = drive(
        BodySizeLimit(inner, lambda path: LIMIT), http_scope(headers=[(b"content-length", b"10")]), [b"x" * 3000]
    )
    assert_refused(sent)


def test_a_content_length_that_is_not_a_number_leaves_the_counting_to_the_body():
    inner = EchoApp()
    sent, _ = drive(
        BodySizeLimit(inner, lambda path: LIMIT), http_scope(headers=[(b"content-length", b"lots")]), [b"x" * 3000]
    )
    assert_refused(sent)
    inner = EchoApp()
    sent, _ = drive(BodySizeLimit(inner, lambda path: LIMIT), http_scope(headers=[(b"content-length", b"-1")]), [b"ok"])
    assert sent[1]["body"] == b"ok"


def test_a_body_under_the_limit_reaches_the_app_and_the_client_unchanged():
    scope = http_scope(headers=[(b"content-type", b"application/json")])
    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 48]  # 2048 bytes in all
    direct, direct_app = drive_direct(scope, chunks)
    inner = EchoApp()
    sent, reads = drive(BodySizeLimit(inner, lambda path: LIMIT), scope, chunks)
    assert sent == direct
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": [(b"x-echo", b"1")]}
    assert sent[1]["body"] == b"".join(chunks)
    assert inner.received == direct_app.received  # each message as the client sent it
    assert reads == 3


def drive_direct(scope, chunks):
    app = EchoApp()
    sent, _ = drive(app, scope, chunks)
    return sent, app


def test_the_limit_is_the_one_for_the_requests_path():
    asked = []

    def limit_for(path):
        asked.append(path)
        return LIMIT if path.startswith("/v1/rewards") else 10 * LIMIT

    body = [b"x" * 3000]
    sent, _ = drive(BodySizeLimit(EchoApp(), limit_for), http_scope("/v1/datasets"), body)
    assert sent[0]["status"] == 200
    sent, _ = drive(BodySizeLimit(EchoApp(), limit_for), http_scope("/v1/rewards"), body)
    assert_refused(sent)
    assert asked == ["/v1/datasets", "/v1/rewards"]


def test_a_refusal_names_the_limit_in_kib():
    sent, _ = drive(
        BodySizeLimit(EchoApp(), lambda path: 2**20), http_scope(headers=[(b"content-length", b"1048577")]), []
    )
    assert json.loads(sent[1]["body"])["detail"] == "request body larger than the 1024 KiB limit"


def test_what_is_not_http_passes_through_untouched():
    seen = []

    async def inner(scope, receive, send):
        seen.append((scope, receive, send))

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        pass

    scope = {"type": "lifespan"}
    asyncio.run(BodySizeLimit(inner, lambda path: pytest.fail("no path to limit"))(scope, receive, send))
    assert seen == [(scope, receive, send)]


def test_an_error_the_app_raises_after_the_refusal_is_swallowed_and_one_before_it_is_not():
    class RaisesOnDisconnect(EchoApp):
        async def __call__(self, scope, receive, send):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RuntimeError("client disconnected")  # as starlette's ClientDisconnect
            raise ValueError("the app's own bug")

    sent, _ = drive(BodySizeLimit(RaisesOnDisconnect(), lambda path: LIMIT), http_scope(), [b"x" * 3000])
    assert_refused(sent)
    with pytest.raises(ValueError, match="the app's own bug"):
        drive(BodySizeLimit(RaisesOnDisconnect(), lambda path: LIMIT), http_scope(), [b"x"])


def test_no_413_follows_a_response_the_app_already_started():
    # An ASGI response has one start: once the app started its own, the limit can only cut the body off.
    class AnswersFirst:
        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while (await receive())["type"] != "http.disconnect":
                pass
            await send({"type": "http.response.body", "body": b"late"})

    sent, reads = drive(
        BodySizeLimit(AnswersFirst(), lambda path: LIMIT), http_scope(), [b"x" * 1000, b"x" * 1100, b"y"]
    )
    assert sent == [{"type": "http.response.start", "status": 200, "headers": []}]
    assert reads == 2
