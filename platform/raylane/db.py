"""The metadata store (SQLAlchemy 2): API keys, the usage ledger, model versions and aliases, files
and batches.

SQLite in the state dir by default; PostgreSQL (``postgresql+psycopg://...``) on clusters, where Gateway
replicas on several nodes share it. The schema comes from Alembic migrations (:mod:`raylane.migrations`),
applied when a store opens the database.
API keys are stored as a SHA-256 digest plus a short display prefix. A plain digest (not bcrypt) is
the right tool here: the secrets are 256-bit random tokens, so there is nothing to brute-force, and
the gateway must look a key up on every request.

Example:
    >>> store = MetadataStore("sqlite://")
    >>> secret = store.create_key("alice", rpm=60)
    >>> store.authenticate(secret).name
    'alice'
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from raylane.errors import AuthenticationError, ConfigError, InvalidRequestError, NotFoundError, RaylaneError

KEY_PREFIX = "rl-"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key: who may call which models, how fast, and how much."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every model
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UsageRecord(Base):
    """One request in the usage ledger (streaming requests included)."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    key_name: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # Rows a predictor model scored (the Open Inference Protocol's unit of work; tokens stay 0).
    items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status_code: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class UsageRow:
    """One usage-ledger row as its writers build it (the Gateway, a batch's final accounting).

    Example:
        >>> row = UsageRow(key_name="a", model="m", endpoint="chat/completions", status_code=200,
        ...                prompt_tokens=3, completion_tokens=5)
        >>> row.record().completion_tokens
        5
    """

    key_name: str
    model: str
    endpoint: str
    status_code: int
    key_id: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    items: int = 0
    latency_ms: float = 0.0
    request_id: str | None = None
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # Names come from clients: cut them to their columns and drop control characters (NUL
        # breaks PostgreSQL's INSERT), so a hostile name can never jam the ledger's writes.
        for name, limit in (("key_name", 128), ("model", 256), ("endpoint", 64)):
            value = getattr(self, name)
            object.__setattr__(self, name, _CONTROL.sub("", str(value))[:limit])

    def record(self) -> UsageRecord:
        """The ORM row to insert."""
        return UsageRecord(**asdict(self))


class ModelVersion(Base):
    """A registered model: ``name@version`` -> a model directory in storage."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    source: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelAlias(Base):
    """Where a model's alias points now: ``name@alias`` -> a version (``demo-llm@prod`` -> 3)."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("name", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class ModelAliasEvent(Base):
    """One move of an alias, kept for good: the audit trail of promotions and rollbacks."""

    __tablename__ = "model_alias_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # alias | rollback
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float, default=time.time)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelEval(Base):
    """One evaluation of a model version on a dataset: the metrics a promotion gate compares."""

    __tablename__ = "model_evals"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class FileRecord(Base):
    """A file of the Files API (batch input, output and error files); its bytes live in storage."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, index=True)  # the owner: other keys never see it
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))  # relative to the storage root
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class BatchRecord(Base):
    """A batch of the Batch API: its OpenAI-visible state plus the Ray job that runs it."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, index=True)
    key_name: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    expires_at: Mapped[float] = mapped_column(Float)
    in_progress_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finalizing_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expired_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelling_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    engine: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the model's config
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway needs to know about an authenticated key (never the secret)."""

    id: int
    name: str
    display_prefix: str
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    max_tokens: int | None
    created_at: float
    revoked_at: float | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            display_prefix=row.display_prefix,
            models=tuple(row.models) if row.models is not None else None,
            rpm=row.rpm,
            tpm=row.tpm,
            max_tokens=row.max_tokens,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return self.models is None or model in self.models


def hash_secret(secret: str) -> str:
    """The stored form of an API key secret.

    Example:
        >>> len(hash_secret("rl-abc"))
        64
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class MetadataStore:
    """All metadata reads and writes; one instance per process, safe to share across threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url, **_engine_options(url))
            if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
                event.listen(self.engine, "connect", _write_ahead_log)
            from raylane.migrations import upgrade

            upgrade(self.engine)  # the schema comes from the migrations, never from create_all
        except OperationalError as exc:
            raise RaylaneError(f"cannot open the metadata database: {exc.orig}") from None
        except Exception as exc:  # a malformed URL or a missing driver
            raise ConfigError(f"database.url: {exc}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Any) -> MetadataStore:
        """The store of a :class:`raylane.config.RaylaneConfig` (creating the state dir for SQLite)."""
        if config.database.url.startswith("sqlite:///") and config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        return cls(config.database.url)

    def close(self) -> None:
        """Close the pooled connections (a PostgreSQL server counts them against its limit)."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        """Raise unless the database answers a trivial query now."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

    # -- API keys ------------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        *,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """Create a key and return its secret; only the digest is stored."""
        if not name or len(name) > 128:
            raise InvalidRequestError("a key name must be 1-128 characters")
        for label, value in (("rpm", rpm), ("tpm", tpm), ("max_tokens", max_tokens)):
            if value is not None and value <= 0:
                raise InvalidRequestError(f"--{label.replace('_', '-')} must be positive")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            name=name,
            key_hash=hash_secret(secret),
            display_prefix=secret[:10],
            models=models,
            rpm=rpm,
            tpm=tpm,
            max_tokens=max_tokens,
        )
        try:
            with self.session() as session:
                session.add(row)
        except IntegrityError:
            raise InvalidRequestError(f"a key named {name!r} already exists") from None
        return secret

    def authenticate(self, secret: str | None) -> KeyInfo:
        """The key a secret belongs to, or :class:`AuthenticationError` (missing, unknown, revoked)."""
        if not secret:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        with self.session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))
            if row is None or row.revoked_at is not None:
                raise AuthenticationError("invalid API key", code="invalid_api_key")
            return KeyInfo.of(row)

    def list_keys(self) -> list[KeyInfo]:
        """Every key, oldest first."""
        with self.session() as session:
            return [KeyInfo.of(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke_key(self, name: str) -> None:
        """Revoke a key by name; its requests fail with 401 from then on."""
        with self.session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                raise NotFoundError(f"no API key named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = time.time()

    # -- usage ---------------------------------------------------------------------------------

    def record_usage(self, rows: list[UsageRow]) -> None:
        """Append ledger rows."""
        if rows:
            with self.session() as session:
                session.add_all(row.record() for row in rows)

    def usage_summary(self, *, by: str = "key", since: float | None = None) -> list[dict[str, Any]]:
        """Requests, errors, tokens, items scored and mean latency grouped by ``key`` or ``model``.

        Example:
            >>> store = MetadataStore("sqlite://")
            >>> store.record_usage([UsageRow(key_name="a", model="m", endpoint="chat", status_code=200,
            ...                              prompt_tokens=3, completion_tokens=5)])
            >>> store.usage_summary(by="model")[0]["total_tokens"]
            8
        """
        column = {"key": UsageRecord.key_name, "model": UsageRecord.model}.get(by)
        if column is None:
            raise InvalidRequestError("--by must be 'key' or 'model'")
        query = select(
            column.label("group"),
            func.count().label("requests"),
            func.sum(case((UsageRecord.status_code >= 400, 1), else_=0)).label("errors"),
            func.sum(UsageRecord.prompt_tokens).label("prompt_tokens"),
            func.sum(UsageRecord.completion_tokens).label("completion_tokens"),
            func.sum(UsageRecord.items).label("items"),
            func.avg(UsageRecord.latency_ms).label("mean_latency_ms"),
        ).group_by(column)
        if since is not None:
            query = query.where(UsageRecord.created_at >= since)
        with self.session() as session:
            rows = session.execute(query.order_by(column)).all()
        return [
            {
                by: row.group,
                "requests": row.requests,
                "errors": int(row.errors or 0),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
                "total_tokens": int((row.prompt_tokens or 0) + (row.completion_tokens or 0)),
                "items": int(row.items or 0),
                "mean_latency_ms": round(float(row.mean_latency_ms or 0), 1),
            }
            for row in rows
        ]

    # -- model versions ------------------------------------------------------------------------

    def next_model_version(self, name: str) -> int:
        """The version number the next registration of ``name`` gets."""
        with self.session() as session:
            latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
        return (latest or 0) + 1

    def add_model_version(
        self, name: str, version: int, uri: str, source: str, details: dict[str, Any]
    ) -> None:
        """Record ``name@version`` at ``uri``; a version is registered once."""
        try:
            with self.session() as session:
                session.add(ModelVersion(name=name, version=version, uri=uri, source=source, details=details))
        except IntegrityError:
            raise InvalidRequestError(f"{name}@{version} is already registered") from None

    def get_model_version(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """A registered version: ``version``, the one ``alias`` points to, or the latest."""
        if alias is not None:
            with self.session() as session:
                pointer = session.scalar(
                    select(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias)
                )
            if pointer is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}: see `raylane models show {name}`")
            version = pointer.version
        query = select(ModelVersion).where(ModelVersion.name == name)
        query = query.where(ModelVersion.version == version) if version else query
        with self.session() as session:
            row = session.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
        if row is None:
            at = f"@{version}" if version else ""
            raise NotFoundError(f"no registered model {name}{at}: see `raylane models list`")
        return row

    def set_model_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        action: str = "alias",
        details: dict[str, Any] | None = None,
    ) -> int | None:
        """Point ``name@alias`` at ``version`` (which must be registered) and record the move;
        returns the version it pointed to before (None for a new alias)."""
        self.get_model_version(name, version)
        try:
            with self.session() as session:
                pointer = session.scalar(
                    select(ModelAlias)
                    .where(ModelAlias.name == name, ModelAlias.alias == alias)
                    .with_for_update()
                )
                previous = pointer.version if pointer is not None else None
                if pointer is None:
                    session.add(ModelAlias(name=name, alias=alias, version=version))
                else:
                    pointer.version, pointer.updated_at = version, time.time()
                session.add(
                    ModelAliasEvent(
                        name=name, alias=alias, from_version=previous, to_version=version, action=action,
                        actor=actor, details=details or {},
                    )
                )  # fmt: skip
        except IntegrityError:
            raise InvalidRequestError(f"{name}@{alias} was being moved by someone else: try again") from None
        return previous

    def rollback_model_alias(self, name: str, alias: str, *, actor: str) -> tuple[int, int]:
        """Move ``name@alias`` back to the version it held before its last move; (from, to)."""
        history = self.model_alias_events(name, alias)
        if not history:
            raise NotFoundError(f"model {name} has no alias {alias!r}: see `raylane models show {name}`")
        last = history[-1]
        if last.from_version is None:
            raise InvalidRequestError(
                f"{name}@{alias} has pointed only at {last.to_version}: nothing to roll back to"
            )
        self.set_model_alias(name, alias, last.from_version, actor=actor, action="rollback")
        return last.to_version, last.from_version

    def model_aliases(self, name: str | None = None) -> dict[str, dict[str, int]]:
        """Model name -> {alias: version}, for one model or all."""
        query = select(ModelAlias).order_by(ModelAlias.name, ModelAlias.alias)
        query = query.where(ModelAlias.name == name) if name is not None else query
        aliases: dict[str, dict[str, int]] = {}
        with self.session() as session:
            for row in session.scalars(query):
                aliases.setdefault(row.name, {})[row.alias] = row.version
        return aliases

    def model_alias_events(self, name: str, alias: str | None = None) -> list[ModelAliasEvent]:
        """Every move of a model's aliases (or of one), oldest first."""
        query = select(ModelAliasEvent).where(ModelAliasEvent.name == name)
        query = query.where(ModelAliasEvent.alias == alias) if alias is not None else query
        with self.session() as session:
            return list(session.scalars(query.order_by(ModelAliasEvent.id)))

    def add_model_eval(
        self, name: str, version: int, dataset: str, metrics: dict[str, float], details: dict[str, Any]
    ) -> int:
        """Record an evaluation of ``name@version`` (which must be registered); returns its id."""
        self.get_model_version(name, version)
        with self.session() as session:
            row = ModelEval(name=name, version=version, dataset=dataset, metrics=metrics, details=details)
            session.add(row)
            session.flush()
            return row.id

    def model_evals(self, name: str, version: int | None = None) -> list[ModelEval]:
        """Evaluations of a model (or of one version), oldest first."""
        query = select(ModelEval).where(ModelEval.name == name)
        query = query.where(ModelEval.version == version) if version is not None else query
        with self.session() as session:
            return list(session.scalars(query.order_by(ModelEval.id)))

    def list_model_versions(self) -> list[ModelVersion]:
        """Every registered version, by name then version."""
        with self.session() as session:
            return list(
                session.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version))
            )


def _write_ahead_log(connection: Any, _record: Any) -> None:
    """Put a SQLite file in WAL mode (the file keeps it) with NORMAL syncing.

    In SQLite's default rollback-journal mode a writer's commit locks readers out while it syncs
    the disk, so a Gateway looking up a key waits behind the usage ledger's and the batch jobs'
    writes. With a write-ahead log readers never wait for writers, and NORMAL syncs at checkpoints
    instead of every commit (a commit survives a crash of the process; power loss can take the
    last ones). A file another process holds in the old mode stays in it until the next open.
    """
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError:
        pass  # busy: the rollback journal still works, only readers may wait
    finally:
        cursor.close()


def _engine_options(url: str) -> dict[str, Any]:
    if url in ("sqlite://", "sqlite:///:memory:"):
        # One in-memory DB shared by every thread (each new connection would be a new, empty DB).
        return {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
    if url.startswith("sqlite"):
        # Gateway replicas, jobs and the CLI share one file: wait for locks instead of failing.
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {"pool_pre_ping": True}
