"""Dependencies shared by the routes: a database session and the authenticated tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.db import session_scope
from api.services import keys as keys_service
from api.settings import get_settings


async def get_session() -> AsyncIterator[Session]:
    """A session for the request, committed at its end. Async on purpose: opening a Session does no I/O (it
    connects at its first query), so FastAPI runs this on the event loop instead of hopping to a worker thread to
    enter it and again to leave it. The routes that use it stay sync and do their queries in the thread pool."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# Declared as a security scheme so the OpenAPI says which calls need the key (and clients and fuzzers can send it).
# auto_error=False: a missing key or another scheme gets the same 401 body as a wrong key, below.
bearer = HTTPBearer(auto_error=False, description="An API key made by `grpo keys create --tenant <name>`")


async def get_tenant_id(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> str:
    """The caller's tenant. A key this process checked in the last GRPO_AUTH_CACHE_SECONDS is trusted without a
    query; any other is looked up in a worker thread (never on the event loop, where waiting for a pooled
    connection could block the requests that would free one)."""
    key = credentials.credentials if credentials else None
    tenant_id = keys_service.recent_keys.get(key, get_settings().auth_cache_seconds) if key else None
    if tenant_id is None and key:
        tenant_id = await run_in_threadpool(keys_service.authenticate, session, key=key)
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
