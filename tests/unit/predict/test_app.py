"""How the /v2 applications are laid out: which applications a config needs, and the prefix of an
application answering as its root."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.testclient import TestClient

from raylane.config import RaylaneConfig
from raylane.predict.app import PrefixIsRoot
from raylane.serve.deploy import applications, is_ours


def test_a_request_for_the_prefix_itself_is_the_root_route_not_a_redirect() -> None:
    app = FastAPI()
    app.get("/")(lambda: {"route": "root"})
    app.add_middleware(PrefixIsRoot)
    client = TestClient(app, root_path="/v2/models/digits")
    answer = client.get("/v2/models/digits", follow_redirects=False)
    assert (answer.status_code, answer.json()) == (200, {"route": "root"})


def test_each_predictor_gets_its_own_application_below_v2_and_llms_keep_theirs() -> None:
    config = RaylaneConfig.model_validate(
        {
            "serve": {"route_prefix": "/api"},
            "models": [
                {"name": "tiny", "source": "tiny@1"},
                {"name": "digits", "source": "digits@1", "task": "predict"},
            ],
        }
    )
    apps = applications(config, {"k": 1})
    assert [(a["name"], a["route_prefix"]) for a in apps] == [
        ("raylane", "/api"),
        ("raylane-v2", "/api/v2"),
        ("raylane-v2-digits", "/api/v2/models/digits"),
    ]
    # each application's args carry only its own models: changing digits rebuilds only its app
    assert [[m["name"] for m in a["args"]["models"]] for a in apps] == [["tiny"], ["digits"], ["digits"]]
    assert apps[2]["args"]["predictor"] == "digits" and all(a["args"]["k"] == 1 for a in apps)
    moved = config.model_copy(
        update={"models": [config.models[0], config.models[1].model_copy(update={"source": "digits@2"})]}
    )
    changed = [a["name"] for a, b in zip(apps, applications(moved, {"k": 1}), strict=True) if a != b]
    assert changed == ["raylane-v2", "raylane-v2-digits"]  # the LLM's application stays as it was
    assert all(is_ours(config, a["name"]) for a in apps) and not is_ours(config, "someone-elses")
