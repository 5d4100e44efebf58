"""The serving lane's parts without Ray: limits, the key cache, the SSE usage tap, token caps,
deploy flags, engine options."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from raylane.config import ModelConfig, RaylaneConfig
from raylane.db import KeyInfo, MetadataStore
from raylane.engine.admission import apply_token_cap
from raylane.engine.limits import SlidingWindow
from raylane.engine.options import engine_settings
from raylane.errors import AuthenticationError, InvalidRequestError
from raylane.serve.deploy import base_url, parse_model_flag, with_models
from raylane.serve.gateway import KeyCache, _bearer, _route_path
from raylane.serve.sse import UsageTap


def key(**limits) -> KeyInfo:
    fields = {"models": None, "rpm": None, "tpm": None, "max_tokens": None, **limits}
    return KeyInfo(id=1, name="k", display_prefix="rl-x", created_at=0.0, revoked_at=None, **fields)


def test_rpm_admits_up_to_the_limit_then_says_when():
    window = SlidingWindow()
    assert [window.acquire("a", rpm=3, tpm=None, now=t)[0] for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert window.acquire("a", rpm=3, tpm=None, now=5.0)[0] == pytest.approx(55.0)
    assert window.acquire("b", rpm=3, tpm=None, now=5.0)[0] == 0.0  # keys are independent
    assert window.acquire("a", rpm=3, tpm=None, now=60.5)[0] == 0.0  # the first request left the window


def test_tpm_blocks_once_spent_until_enough_tokens_expire():
    window = SlidingWindow()
    assert window.acquire("a", rpm=None, tpm=100, now=0.0)[0] == 0.0
    window.charge("a", 80, now=1.0)
    assert window.acquire("a", rpm=None, tpm=100, now=2.0)[0] == 0.0
    window.charge("a", 30, now=3.0)
    assert window.acquire("a", rpm=None, tpm=100, now=4.0)[0] == pytest.approx(57.0)
    assert window.acquire("a", rpm=None, tpm=100, now=61.5)[0] == 0.0


def test_reservations_bound_what_requests_in_flight_can_overshoot_and_settle_to_what_was_used():
    window = SlidingWindow()
    _, first = window.acquire("a", rpm=None, tpm=100, now=0.0, reserve=150)  # an empty window admits one
    assert first is not None
    assert window.acquire("a", rpm=None, tpm=100, now=1.0, reserve=1)[0] > 0  # nothing fits beside it
    window.settle("a", first, 20, now=2.0)  # it used 20
    _, second = window.acquire("a", rpm=None, tpm=100, now=3.0, reserve=80)
    assert second is not None and window.acquire("a", rpm=None, tpm=100, now=3.5, reserve=1)[0] > 0
    window.settle("a", second, 80, now=4.0)
    window.settle("a", 999, 5, now=4.0)  # an unknown (expired) ticket is charged as it stands


def test_key_cache_answers_past_half_its_ttl_without_waiting_and_applies_revocations(tmp_path: Path):
    """A key's entry past half its TTL answers at once, even while the DB is locked, and is
    looked up again behind the request; the revocation that lookup reads applies from then on."""
    db = tmp_path / "meta.db"
    store = MetadataStore(f"sqlite:///{db}")
    secret = store.create_key("alice")
    cache = KeyCache(store, ttl_s=1.0)

    async def scenario() -> None:
        assert (await cache.authenticate(secret)).name == "alice"
        store.revoke_key("alice")
        store.engine.dispose()  # (pooled connections would keep the lock below from being taken)
        await asyncio.sleep(0.6)
        locker = sqlite3.connect(db, isolation_level=None)  # a writer holding the file
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("COMMIT")  # (exclusive locking mode keeps the lock after the commit)
        try:
            reader = sqlite3.connect(db, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                reader.execute("SELECT count(*) FROM api_keys").fetchall()
            reader.close()
            # Answered from the entry while the DB is locked: nothing waits for it.
            assert (await asyncio.wait_for(cache.authenticate(secret), timeout=5)).name == "alice"
        finally:
            locker.close()
        for _ in range(100):  # the lookup behind it now reads the revocation
            try:
                await cache.authenticate(secret)
            except AuthenticationError:
                return
            await asyncio.sleep(0.05)
        pytest.fail("the revocation never applied")

    asyncio.run(scenario())
    store.close()


def test_usage_tap_handles_events_split_across_chunks():
    tap = UsageTap(forward_usage=True)
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    first, second = usage[:20], usage[20:]
    assert tap.feed(first) == b""
    assert tap.feed(second + b"data: [DONE]\n\n") == usage + b"data: [DONE]\n\n"
    assert (tap.prompt_tokens, tap.completion_tokens) == (7, 2)


def test_usage_tap_hides_only_the_usage_event():
    tap = UsageTap(forward_usage=False)
    content = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    assert tap.feed(content + usage) == content
    assert tap.completion_tokens == 1


def test_token_cap_rejects_above_and_fills_in_when_missing():
    capped = 16
    with pytest.raises(InvalidRequestError) as exc:
        apply_token_cap({"messages": [], "max_tokens": 17}, capped)
    assert exc.value.param == "max_tokens"
    body = {"messages": []}
    assert apply_token_cap(body, capped) is True and body["max_tokens"] == 16
    assert apply_token_cap({"prompt": "x", "max_completion_tokens": 16}, capped) is False
    assert apply_token_cap({"input": ["x"]}, capped) is False  # embeddings generate nothing
    assert apply_token_cap({"messages": [], "max_tokens": 10**9}, None) is False


def test_bearer_and_route_path():
    scope = {
        "headers": [(b"authorization", b"Bearer rl-abc ")],
        "path": "/api/v1/models",
        "root_path": "/api",
    }
    assert _bearer(scope) == "rl-abc"
    assert _bearer({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert _route_path(scope) == "/v1/models"


def test_model_flags_replace_the_model_list():
    assert parse_model_flag("tiny=tiny@2") == {"name": "tiny", "source": "tiny@2"}
    with pytest.raises(InvalidRequestError):
        parse_model_flag("just-a-path")
    config = with_models(RaylaneConfig(models=[{"name": "old", "source": "/x"}]), ["a=/m/a", "b=s3://b/m"])
    assert [m.name for m in config.models] == ["a", "b"]
    assert (
        base_url(config.with_overrides(**{"serve.route_prefix": "/llm/"})) == "http://127.0.0.1:8000/llm/v1"
    )


def test_engine_settings_map_resources_and_tasks():
    gpu = engine_settings(
        ModelConfig(
            name="big", source="s3://m", accelerator="gpu", num_gpus=0.5, engine_kwargs={"dtype": "bf16"}
        ),
        max_ongoing_requests=32,
    )
    assert gpu["placement_group_config"]["bundle_per_worker"] == {"CPU": 1.0, "GPU": 0.5}
    assert gpu["accelerator_config"] == {"kind": "gpu"}
    # No CPU defaults on GPU; priority scheduling so batch requests yield to online ones.
    assert gpu["engine_kwargs"] == {"scheduling_policy": "priority", "dtype": "bf16"}
    assert gpu["runtime_env"]["env_vars"] == {}
    embed = engine_settings(
        ModelConfig(name="e", source="/m", task="embed", autoscaling={"min_replicas": 0, "max_replicas": 3}),
        max_ongoing_requests=8,
    )
    assert embed["engine_kwargs"]["runner"] == "pooling" and "scheduling_policy" not in embed["engine_kwargs"]
    assert embed["deployment_config"]["autoscaling_config"]["min_replicas"] == 0
    assert embed["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
