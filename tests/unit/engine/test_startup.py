"""LocalModelFiles skips Ray's per-node model download only when the replica's whole placement
group is on its own node (Ray's placement-group table and runtime context are stood in for)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import ray

from raylane.engine.startup import LocalModelFiles


@pytest.mark.parametrize(
    "bundles,runs_download",
    [
        ({0: "this-node"}, False),
        ({0: "this-node", 1: "this-node"}, False),
        ({0: "this-node", 1: "other"}, True),
    ],
)
def test_the_download_task_runs_only_for_a_placement_group_across_nodes(
    monkeypatch: pytest.MonkeyPatch, bundles: dict[int, str], runs_download: bool
):
    monkeypatch.setattr(ray.util, "placement_group_table", lambda pg: {"bundles_to_node_id": pg})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "this-node"))
    callback = LocalModelFiles(llm_config=None, ctx_kwargs={"placement_group": bundles})
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is runs_download
