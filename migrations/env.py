"""Alembic environment: the URL comes from the Alembic config (set by ``search.db``),
else from ``VIDSEEK_DATABASE_URL`` via the typed settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from search.db import make_engine
from search.settings import Settings
from search.tables import Base

config = context.config
target_metadata = Base.metadata

# Every vidseek process upgrades the schema on start; on PostgreSQL this transaction lock makes
# processes starting together (API replicas, workers) migrate one after another, so the others
# find the schema at head instead of racing to create it.
_MIGRATION_LOCK = 7_270_002


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
