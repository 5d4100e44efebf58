"""Alembic's entry point: runs raylane's revisions on the connection :mod:`raylane.migrations` opened."""

from __future__ import annotations

from alembic import context

from raylane.db import Base

# render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
context.configure(
    connection=context.config.attributes["connection"], target_metadata=Base.metadata, render_as_batch=True
)
with context.begin_transaction():
    context.run_migrations()
