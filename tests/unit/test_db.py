"""The metadata store on a real SQLite file and a real PostgreSQL server: keys hashed, revocation, usage
summaries, model versions, and the Alembic migrations that make its schema."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from raylane.db import Base, MetadataStore, UsageRow, hash_secret
from raylane.errors import AuthenticationError, InvalidRequestError, NotFoundError
from raylane.migrations import BASELINE, alembic_config, current_revision, head_revision


@pytest.fixture
def store(database_url: str) -> Iterator[MetadataStore]:
    opened = MetadataStore(database_url)  # each test runs on SQLite and on PostgreSQL
    yield opened
    opened.close()


def dump(store: MetadataStore) -> str:
    """Every row of every table, as text: what someone with a copy of the database would see."""
    with store.engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in connection.execute(table.select())
        )


def test_keys_are_stored_hashed_never_in_clear(store: MetadataStore):
    secret = store.create_key("alice", models=["tiny"], rpm=10, tpm=1000, max_tokens=64)
    assert secret.startswith("rl-") and len(secret) > 40
    stored = dump(store)
    assert secret not in stored
    assert hash_secret(secret) in stored
    key = store.authenticate(secret)
    assert (key.name, key.models, key.rpm, key.tpm, key.max_tokens) == ("alice", ("tiny",), 10, 1000, 64)
    assert key.allows("tiny") and not key.allows("other")


def test_missing_wrong_and_revoked_keys_fail(store: MetadataStore):
    secret = store.create_key("bob")
    with pytest.raises(AuthenticationError, match="missing API key"):
        store.authenticate(None)
    with pytest.raises(AuthenticationError, match="invalid API key"):
        store.authenticate(secret + "x")
    store.revoke_key("bob")
    with pytest.raises(AuthenticationError):
        store.authenticate(secret)
    assert store.list_keys()[0].revoked_at is not None
    with pytest.raises(NotFoundError):
        store.revoke_key("nobody")


def test_duplicate_names_and_bad_limits_are_rejected(store: MetadataStore):
    store.create_key("carol")
    with pytest.raises(InvalidRequestError, match="already exists"):
        store.create_key("carol")
    with pytest.raises(InvalidRequestError, match="--rpm must be positive"):
        store.create_key("dave", rpm=0)


def test_usage_summary_groups_and_filters(store: MetadataStore):
    now = time.time()
    store.record_usage(
        [
            UsageRow(key_name="a", model="m1", endpoint="chat", status_code=200, prompt_tokens=5,
                     completion_tokens=7, latency_ms=10, created_at=now - 7200),
            UsageRow(key_name="a", model="m2", endpoint="chat", status_code=429, latency_ms=1,
                     created_at=now),
            UsageRow(key_name="b", model="m1", endpoint="completions", status_code=200, prompt_tokens=1,
                     completion_tokens=2, latency_ms=30, created_at=now),
        ]
    )  # fmt: skip
    by_key = {row["key"]: row for row in store.usage_summary(by="key")}
    assert by_key["a"]["requests"] == 2 and by_key["a"]["errors"] == 1 and by_key["a"]["total_tokens"] == 12
    by_model = {row["model"]: row for row in store.usage_summary(by="model", since=now - 60)}
    assert by_model["m1"]["requests"] == 1 and by_model["m1"]["mean_latency_ms"] == 30
    with pytest.raises(InvalidRequestError):
        store.usage_summary(by="color")


def test_model_versions_count_up(store: MetadataStore):
    assert store.next_model_version("tiny") == 1
    store.add_model_version("tiny", 1, "file:///a", "/src", {})
    store.add_model_version("tiny", 2, "file:///b", "/src", {})
    assert store.get_model_version("tiny").uri == "file:///b"
    assert store.get_model_version("tiny", 1).uri == "file:///a"
    with pytest.raises(InvalidRequestError):
        store.add_model_version("tiny", 2, "file:///c", "/src", {})
    with pytest.raises(NotFoundError, match="no registered model tiny@9"):
        store.get_model_version("tiny", 9)


def test_aliases_move_with_an_audit_trail_and_roll_back(store: MetadataStore):
    for version in (1, 2, 3):
        store.add_model_version("llm", version, f"file:///v{version}", "/src", {})
    assert store.set_model_alias("llm", "prod", 1, actor="ann") is None
    assert store.set_model_alias("llm", "prod", 3, actor="bob", details={"why": "better"}) == 1
    store.set_model_alias("llm", "staging", 2, actor="ann")
    assert store.get_model_version("llm", alias="prod").version == 3
    assert store.model_aliases() == {"llm": {"prod": 3, "staging": 2}}
    assert store.rollback_model_alias("llm", "prod", actor="cat") == (3, 1)
    assert store.get_model_version("llm", alias="prod").uri == "file:///v1"
    moves = [
        (e.alias, e.from_version, e.to_version, e.action, e.actor) for e in store.model_alias_events("llm")
    ]
    assert moves == [
        ("prod", None, 1, "alias", "ann"),
        ("prod", 1, 3, "alias", "bob"),
        ("staging", None, 2, "alias", "ann"),
        ("prod", 3, 1, "rollback", "cat"),
    ]
    assert store.model_alias_events("llm", "prod")[1].details == {"why": "better"}
    with pytest.raises(NotFoundError, match="no registered model llm@9"):
        store.set_model_alias("llm", "prod", 9, actor="ann")  # only registered versions
    with pytest.raises(NotFoundError, match="model llm has no alias 'canary'"):
        store.get_model_version("llm", alias="canary")
    with pytest.raises(InvalidRequestError, match="has pointed only at 2: nothing to roll back to"):
        store.rollback_model_alias("llm", "staging", actor="ann")
    with pytest.raises(NotFoundError, match="no alias 'canary'"):
        store.rollback_model_alias("llm", "canary", actor="ann")


def test_bad_database_url_is_a_config_error():
    from raylane.errors import ConfigError

    with pytest.raises(ConfigError, match="database.url"):
        MetadataStore("nosuchdriver://x")


def test_migrations_make_exactly_the_models_schema(database_url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = MetadataStore(database_url)
    assert current_revision(store.engine) == head_revision()
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    store.close()
    assert differences == []  # a model change without a revision shows up here: `make migration`


def test_a_database_made_before_migrations_is_stamped_and_kept(database_url: str):
    engine = create_engine(database_url)
    with engine.begin() as connection:  # the first revision's schema, as `create_all` made it before Alembic
        command.upgrade(alembic_config(connection), BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))
    with engine.begin() as connection:
        connection.execute(Base.metadata.tables["model_versions"].insert().values(
            name="old", version=1, uri="file:///m", source="/m", created_at=1.0, details={}))  # fmt: skip
    engine.dispose()
    store = MetadataStore(database_url)
    assert current_revision(store.engine) == head_revision()
    assert store.get_model_version("old").uri == "file:///m"
    store.close()


def test_replicas_opening_a_new_database_together_migrate_it_once(database_url: str):
    # Gateway replicas on several nodes start at once against one empty database.
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: MetadataStore(database_url), range(6)))
    stores[0].create_key("shared")
    assert all(s.list_keys()[0].name == "shared" for s in stores)
    with stores[0].engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    for opened in stores:
        opened.close()
