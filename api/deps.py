"""Dependencies shared by the routes: a database session and the authenticated tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from api.db import session_scope
from api.services import authenticate


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_tenant_id(request: Request, session: SessionDep) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    tenant_id = authenticate(session, key=key.strip()) if scheme.lower() == "bearer" else None
    if tenant_id is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API key: send Authorization: Bearer <key> (create one with `grpo keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]
