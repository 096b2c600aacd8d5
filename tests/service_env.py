"""Test helpers: real databases (a fresh SQLite file, or a fresh database on the local PostgreSQL) and service
settings pointed at them through the same GRPO_ environment variables an operator uses."""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import contextmanager

import psycopg

POSTGRES_ADMIN = os.environ.get("GRPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GRPO_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def fresh_database(kind: str, tmp_path):
    """Yield a SQLAlchemy URL of an empty database of `kind` ("sqlite" or "postgresql"), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'grpo.db'}"
        return
    name = f"grpo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear_service_caches() -> None:
    """Forget cached settings, engines and the Celery app, so new GRPO_ variables take effect in this process."""
    from api.services import keys as keys_service
    from service_core import db, queue, settings

    for cached in (settings.get_settings, db.get_engine, db._session_factory, queue.get_celery):
        cached.cache_clear()
    keys_service.recent_keys.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
