"""The ORM (service_core/models.py) against the hand-written migrations: migrating an empty database to head gives
exactly the tables, columns, types, nullability, defaults, indexes and keys the ORM declares, on SQLite and on
PostgreSQL. A model changed without a migration (or a migration without its model) fails here."""

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from service_core.db import get_engine, run_migrations
from service_core.models import Base

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'migrated.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The test database with a private schema of this test's first on the search path, dropped afterwards: tables
    are created there, not where other tests look."""
    schema = f"migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:  # whatever stops the connection: no PostgreSQL to test against here
        admin.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES} is not reachable: {error}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def differences(url: str) -> list:
    """What Alembic's autogenerate would still write after the migrations ran: types and server defaults compared
    too (compare_server_default is off by default)."""
    run_migrations(url)
    engine = get_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
        get_engine.cache_clear()


def test_sqlite_migrated_to_head_is_the_orm(sqlite_url):
    assert differences(sqlite_url) == []


def test_postgresql_migrated_to_head_is_the_orm(postgres_url):
    assert differences(postgres_url) == []


def test_the_check_sees_a_column_the_migrations_lack(sqlite_url):
    run_migrations(sqlite_url)
    engine = get_engine(sqlite_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE jobs DROP COLUMN adapter_step"))
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
        get_engine.cache_clear()
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "jobs", "adapter_step")]
