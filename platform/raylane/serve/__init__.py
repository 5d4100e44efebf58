"""The online serving lane: an OpenAI-compatible Serve application over vLLM, behind the Gateway.

``build_app`` is importable as ``raylane.serve:build_app`` for plain ``serve deploy`` YAML; it is
loaded on first use so that ``import raylane.serve`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any


def build_app(args: Any = None) -> Any:
    """See :func:`raylane.serve.app.build_app`."""
    from raylane.serve.app import build_app as _build_app

    return _build_app(args)
