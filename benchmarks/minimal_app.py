"""The yardstick for GET /v1/jobs/{id}: the same read written the plain way, with nothing of the service in it.

    GRPO_DATABASE_URL=sqlite:////path/grpo.db uvicorn benchmarks.minimal_app:app

One route: hash the Bearer key (sha256), look the key up by its hash, then the caller's job, with SQLAlchemy Core
on the service's own database (its schema made by the service's migrations), and return the row as JSON. No key
cache, no session, no response model. `api_load.py` runs it beside the service under the same uvicorn settings.

`app` is a sync `def` route over an Engine (FastAPI runs it in its thread pool); `async_app` is the same route as
`async def` over aiosqlite (`create_async_engine`; needs aiosqlite and greenlet, which the service does not
install). The sync one is the faster, so it is the yardstick: on the 2-core machine, wrk at 8 connections, medians
of 4 rounds, 1,542 req/s against 1,056 for the async one. The routes carry no return annotation on purpose: with
`-> dict` FastAPI validates the dict against it in a second trip to the thread pool (1,341 req/s).
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import JSON, Boolean, Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, select

metadata = MetaData()
api_keys = Table("api_keys", metadata, Column("key_hash", String(64)), Column("tenant_id", String(40)))
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40)),
    Column("status", String(20)),
    Column("base_model", String(200)),
    Column("dataset_id", String(40)),
    Column("eval_dataset_id", String(40)),
    Column("rewards", JSON),
    Column("hyperparameters", JSON),
    Column("step", Integer),
    Column("max_steps", Integer),
    Column("cancel_requested", Boolean),
    Column("worker_host", String(200)),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)
PUBLIC_COLUMNS = [column for column in jobs.c if column.name != "tenant_id"]
bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _key_hash(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise HTTPException(status_code=401, detail="missing API key")
    return hashlib.sha256(credentials.credentials.encode()).hexdigest()


def _job_query(tenant_id: str, job_id: str):
    return select(*PUBLIC_COLUMNS).where(jobs.c.id == job_id, jobs.c.tenant_id == tenant_id)


app = FastAPI()
engine = create_engine(os.environ["GRPO_DATABASE_URL"])


@app.get("/v1/jobs/{job_id}")
def get_job(job_id: str, credentials: Credentials):
    key_hash = _key_hash(credentials)
    with engine.connect() as connection:
        tenant_id = connection.scalar(select(api_keys.c.tenant_id).where(api_keys.c.key_hash == key_hash))
        if tenant_id is None:
            raise HTTPException(status_code=401, detail="invalid API key")
        row = connection.execute(_job_query(tenant_id, job_id)).first()
    if row is None:
        raise HTTPException(status_code=404, detail="job not found")
    return dict(row._mapping)


async_app = FastAPI()
_async_engine = None


@async_app.get("/v1/jobs/{job_id}")
async def get_job_async(job_id: str, credentials: Credentials):
    global _async_engine
    if _async_engine is None:
        from sqlalchemy.ext.asyncio import create_async_engine

        _async_engine = create_async_engine(os.environ["GRPO_DATABASE_URL"].replace("sqlite:", "sqlite+aiosqlite:", 1))
    key_hash = _key_hash(credentials)
    async with _async_engine.connect() as connection:
        tenant_id = await connection.scalar(select(api_keys.c.tenant_id).where(api_keys.c.key_hash == key_hash))
        if tenant_id is None:
            raise HTTPException(status_code=401, detail="invalid API key")
        row = (await connection.execute(_job_query(tenant_id, job_id))).first()
    if row is None:
        raise HTTPException(status_code=404, detail="job not found")
    return dict(row._mapping)
