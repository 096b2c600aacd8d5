"""Engine and sessions for the configured database, and migrations applied at start-up."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from service_core.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Python's sqlite3 lets go of the GIL around every row it steps through. With several threads reading at once, each
# row of a read becomes a hand-over of the GIL between threads (a futex storm). One thread at a time is the fastest
# on both hot reads (the figures, with 40, 4, 2 and 1 threads: benchmarks/README.md, "SQLite reads one thread at a
# time"); SQLite's reads do not wait for its writer (WAL), so a read holds the thread for its own work only.
SQLITE_READ_THREADS = 1
_read_limiter: RunVar[CapacityLimiter] = RunVar("grpo_read_limiter")
T = TypeVar("T")


def make_private_dir(folder: Path) -> None:
    """Create `folder` (and its parents) if missing; one this call creates is 0700. A folder that exists keeps its
    mode: it may be one an operator chose and shares on purpose."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)  # mkdir's mode passes through the umask


def _private_database_file(database: Path) -> None:
    """The SQLite file readable by this user alone (0600), like the datasets and adapters beside it: it holds every
    tenant's specs, metrics and API key hashes. SQLite gives the -wal and -shm files it creates the database file's
    mode. Created before SQLite opens it, so it is never world-readable, and tightened if an older version made it
    0644 (with any -wal and -shm left from then)."""
    make_private_dir(database.parent)
    # Never an open() of a database that exists: closing any descriptor of a file drops every POSIX lock this
    # process holds on it, SQLite's included (an engine made earlier in this process may hold some), and another
    # process could then checkpoint or reset the WAL under it. chmod opens nothing.
    try:
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if path.exists() and path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.resolved_database_url
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            _private_database_file(Path(database))
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):
            # WAL lets the API read while the worker writes; busy_timeout makes a second writer wait, not fail.
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={settings.sqlite_busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def _session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def new_session() -> Session:
    """A session on the configured database; it connects at its first query."""
    return _session_factory()()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _reads_limiter() -> CapacityLimiter:
    try:
        return _read_limiter.get()
    except LookupError:
        engine = get_engine()
        # Elsewhere as many reads at once as the pool keeps connections: past that each read opened and closed an
        # overflow connection (on PostgreSQL a new server process each; the p99s: benchmarks/README.md).
        threads = SQLITE_READ_THREADS if engine.dialect.name == "sqlite" else engine.pool.size()  # type: ignore[attr-defined]
        limiter = CapacityLimiter(threads)
        _read_limiter.set(limiter)
        return limiter


async def run_read(read: Callable[..., T], *args: object) -> T:
    """`read(*args)`, a blocking database read, in a worker thread, never on the event loop. At most
    SQLITE_READ_THREADS of these run at a time on SQLite, as many as the connection pool holds elsewhere (why:
    above and in `_reads_limiter`)."""
    return await to_thread.run_sync(read, *args, limiter=_reads_limiter())


def run_migrations(url: str | None = None) -> None:
    """Bring the schema to the newest Alembic revision (idempotent), over this module's engine so SQLite gets
    its folder and pragmas."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
