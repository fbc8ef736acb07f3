"""Alembic environment: run by ``Store.migrate`` with an open connection (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from services.common.store import Base

config = context.config
connection = config.attributes.get("connection")


def run_migrations() -> None:
    if connection is None:  # `alembic` CLI: open our own
        from services.common.store import make_engine

        with make_engine(config.get_main_option("sqlalchemy.url") or "").begin() as conn:
            context.configure(connection=conn, target_metadata=Base.metadata,
                              render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True)
    context.run_migrations()


run_migrations()
