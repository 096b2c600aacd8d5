"""Alembic environment: the URL comes from the service settings; `grpo migrate` passes its own connection."""

from alembic import context
from sqlalchemy import create_engine, pool

from service_core.models import Base
from service_core.settings import get_settings


def run(connection) -> None:
    # Batch mode lets later migrations alter columns on SQLite, which has no ALTER COLUMN.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    with create_engine(url, poolclass=pool.NullPool).connect() as fresh:
        run(fresh)
        fresh.commit()
