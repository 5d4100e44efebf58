"""What a replica skips when its engine starts: Ray's per-node model download, when there is
nothing to download.

Ray's LLM server starts its engine by running one Ray task per node of the replica's placement
group to download the model files there. raylane's :class:`~raylane.serve.engines.ModelServer` has
already resolved the model source to a directory on the replica's own node, so when every bundle
of the placement group is on that node the task has nothing to do, yet it still starts a Ray worker
and imports torch and transformers in it: tens of seconds of a replica's start on a small CPU
machine (see docs/benchmarks.md). :class:`LocalModelFiles`, Ray's callback hook for node
initialization, skips it then; a placement group across nodes keeps Ray's download.

Example:
    >>> callback_config()["callback_class"]
    'raylane.engine.startup.LocalModelFiles'
"""

from __future__ import annotations

from typing import Any

import ray
from ray.llm._internal.common.callbacks.base import CallbackBase

CALLBACK_PATH = "raylane.engine.startup.LocalModelFiles"


class LocalModelFiles(CallbackBase):
    """Skips Ray's node initialization when every engine bundle is on this node."""

    async def on_before_node_init(self) -> None:
        table = ray.util.placement_group_table(self.ctx.placement_group)
        nodes = set(table["bundles_to_node_id"].values())
        if nodes <= {ray.get_runtime_context().get_node_id()}:
            self.ctx.run_init_node = False


def callback_config() -> dict[str, Any]:
    """The ``callback_config`` of an engine deployment's ``LLMConfig``."""
    return {"callback_class": CALLBACK_PATH}
