"""Schema migrations of the metadata DB (Alembic), applied by :class:`raylane.db.MetadataStore` on open.

The revisions live in ``versions/``; a schema change is a new revision there (``make migration
MSG="..."`` autogenerates one from :mod:`raylane.db`'s models). Every process that opens the store
brings the database to the newest revision first, under a lock (a PostgreSQL advisory lock, a file
lock beside a SQLite file), so Gateway replicas starting together on several nodes migrate once.
A database made before migrations existed (tables, no ``alembic_version``) is stamped as the first
revision, whose schema it already has, and upgraded from there.

Example:
    >>> from sqlalchemy import create_engine
    >>> engine = create_engine("sqlite://")
    >>> upgrade(engine)
    >>> current_revision(engine) == head_revision()
    True
"""

from __future__ import annotations

import fcntl
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).parent
BASELINE = "0001"  # the schema `create_all` made before migrations existed
ADVISORY_LOCK_ID = 0x7261796C616E65  # "raylane": one lock id for every raylane database


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for raylane's revisions, bound to ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def new_revision(message: str, database_url: str = "sqlite://") -> Path:
    """Autogenerate the next revision from :mod:`raylane.db`'s models (``make migration MSG=...``).

    It diffs the models against a database at the newest revision (a fresh in-memory SQLite by default).
    """
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    upgrade(engine)
    with engine.begin() as connection:
        script = command.revision(alembic_config(connection), message=message, autogenerate=True)
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


@functools.cache
def head_revision() -> str:
    """The newest revision in ``versions/``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision ``engine``'s database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision (a no-op, one query, when it already is)."""
    if current_revision(engine) == head_revision():
        return
    with _migration_lock(engine), engine.begin() as connection:
        tables = set(inspect(connection).get_table_names())
        config = alembic_config(connection)
        if "alembic_version" not in tables and "api_keys" in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process per database at a time."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
                connection.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # a private in-memory database: nobody to race with
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
