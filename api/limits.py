"""Caps on what one request or one tenant may take from an API process: request bodies (whether or not the client
declares a Content-Length: chunked bodies count as they arrive), and slots for long-lived work (event streams,
reward checks) counted per tenant and per process."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REWARD_BODY_BYTES = 2**20  # the largest body of POST /v1/rewards and its dry runs, 1 MiB (413 past it)


class TenantSlots:
    """Counts of `what` (event streams, reward checks) held at once, by tenant: a cap per tenant and one for the
    process, so that no tenant can hold every slot the API has. The counts live in the process: with several API
    processes behind a load balancer, each allows its own caps. Used only from the event loop's thread, so it needs
    no lock.

    `what` names the things and `state` what holding one means ("event streams", "open"); the settings name the
    caps in a refusal; `advice` (may be empty) says what the client can do besides waiting."""

    def __init__(
        self,
        what: str,
        state: str,
        *,
        per_tenant_setting: str,
        total_setting: str,
        retry_after_seconds: int,
        advice: str = "",
    ) -> None:
        self.what, self.state, self.advice = what, state, advice
        self.per_tenant_setting, self.total_setting = per_tenant_setting, total_setting
        self.retry_after_seconds = retry_after_seconds
        self.by_tenant: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_tenant.values())

    def acquire(self, tenant_id: str, *, per_tenant: int, total: int) -> None:
        """Take a slot for `tenant_id`, or raise a 429 (with Retry-After) that names the cap that is full."""
        if self.by_tenant[tenant_id] >= per_tenant:
            held = self.by_tenant[tenant_id]
            self._refuse(f"this tenant has {held} {self.what} {self.state}", per_tenant, self.per_tenant_setting)
        if self.total >= total:
            self._refuse(f"this API process has {self.total} {self.what} {self.state}", total, self.total_setting)
        self.by_tenant[tenant_id] += 1

    def release(self, tenant_id: str) -> None:
        self.by_tenant[tenant_id] -= 1
        if self.by_tenant[tenant_id] <= 0:
            del self.by_tenant[tenant_id]

    @contextmanager
    def hold(self, tenant_id: str, *, per_tenant: int, total: int) -> Iterator[None]:
        """A slot for the duration of the block (acquire's 429 when none is free)."""
        self.acquire(tenant_id, per_tenant=per_tenant, total=total)
        try:
            yield
        finally:
            self.release(tenant_id)

    def _refuse(self, what: str, limit: int, setting: str) -> None:
        raise HTTPException(
            status_code=429,
            detail=f"too many {self.what}: {what}, the limit is {limit} (GRPO_{setting.upper()}); {self.advice}"
            f"retry after {self.retry_after_seconds} s",
            headers={"Retry-After": str(self.retry_after_seconds)},
        )


class BodySizeLimit:
    """Answer 413 with a JSON error once a request body passes limit_for(path) bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        refused = response_started = False

        async def counting_receive() -> Message:
            # Past the limit: answer 413 ourselves and tell the app the client left, so it stops reading.
            # (Raising here would not do: FastAPI turns errors while it reads a body into a 400.)
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not response_started:
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 went out; whatever the app answers to the disconnect is dropped
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body larger than the {limit / 1024:g} KiB limit", "errors": []}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
