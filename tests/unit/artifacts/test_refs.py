"""One reference grammar for datasets and models."""

from __future__ import annotations

import pytest

from raylane.artifacts.refs import Ref, dataset_path, parse_ref
from raylane.errors import InvalidRequestError


def test_model_refs_name_a_version_the_newest_or_an_alias():
    assert parse_ref("m@12") == parse_ref("m@v12") == Ref("m", 12)
    assert parse_ref("m@prod", "model") == Ref("m", alias="prod") and str(Ref("m", alias="prod")) == "m@prod"
    assert parse_ref("m@latest", "model") == parse_ref("m", "model") == Ref("m")  # never an alias
    for bad in ("m@1prod", "m@", "m@pr od", "m@" + "a" * 65):
        with pytest.raises(InvalidRequestError, match="expected NAME, NAME@N or NAME@ALIAS"):
            parse_ref(bad, "model")


def test_dataset_refs_print_in_the_one_grammar_and_name_their_storage_folder():
    ref = parse_ref("corpus@v3", "dataset")
    assert (str(ref), ref.storage_version, dataset_path(ref.name)) == ("corpus@3", "v3", "datasets/corpus")
    assert parse_ref(" docs ").storage_version == "latest"
    for bad in ("", "@3", "a/b@1", "m@-1", "m@1.5", "corpus@prod"):
        with pytest.raises(InvalidRequestError, match="bad dataset reference"):
            parse_ref(bad, "dataset")
