"""Dependencies shared by the routes: a database session and the authenticated tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from anyio import CancelScope
from fastapi import Depends, HTTPException, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.services import keys as keys_service
from service_core.db import new_session, run_read, session_scope
from service_core.settings import get_settings


def _finish(session: Session, *, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """A session for the request, committed at its end (rolled back if the route failed). Opened on the event
    loop, which costs nothing (a Session connects at its first query); the routes use it in the thread pool. At the
    end, a session that still holds a transaction is committed and gives its connection back in a worker thread
    (COMMIT is a round trip, and SQLite's may wait for the write lock); one that holds none closes on the loop,
    doing no I/O. The hot reads take no SessionDep: each opens its session inside the function it gives run_read,
    so the whole request is one trip to a worker thread."""
    session = new_session()
    try:
        yield session
    except BaseException:
        # Shielded: when the request was cancelled (its client left, the server is stopping) an unshielded await
        # here would be cancelled too, and the connection would go back to the pool only when garbage collected.
        with CancelScope(shield=True):
            await run_in_threadpool(_finish, session, commit=False)
        raise
    if session.in_transaction():
        await run_in_threadpool(_finish, session, commit=True)
    else:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


# Declared as a security scheme so the OpenAPI says which calls need the key (and clients and fuzzers can send it).
# auto_error=False: a missing key or another scheme gets the same 401 body as a wrong key, below.
bearer = HTTPBearer(auto_error=False, description="An API key made by `grpo keys create --tenant <name>`")


def _look_up_key(key: str) -> str | None:
    with session_scope() as session:
        return keys_service.authenticate(session, key=key)


async def get_tenant_id(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
    """The caller's tenant. A key this process checked in the last GRPO_AUTH_CACHE_SECONDS is trusted without a
    query; any other is looked up in a worker thread (run_read), with a session of its own: never on the event
    loop, where waiting for a pooled connection could block the requests that would free one. Needing no request
    session, it leaves routes free not to open one."""
    key = credentials.credentials if credentials else None
    tenant_id = keys_service.recent_keys.get(key, get_settings().auth_cache_seconds) if key else None
    if tenant_id is None and key:
        tenant_id = await run_read(_look_up_key, key)
        if tenant_id is not None:
            keys_service.recent_keys.put(key, tenant_id)
    if tenant_id is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API key: send Authorization: Bearer <key> (create one with `grpo keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]
