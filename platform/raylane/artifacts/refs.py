"""One grammar for published versions, and where each kind of artifact lives in storage.

Datasets and models are both referred to as ``NAME`` (the newest version) or ``NAME@N``, models
also as ``NAME@ALIAS`` (``demo-llm@prod``: the version the alias points to); the older
``NAME@vN`` spelling of datasets is still accepted on input. Every version is published under
``<prefix>/<NAME>/vN`` below the storage root (see :meth:`raylane.storage.Storage.publish`), with
the prefixes below: one place names them all.

Example:
    >>> str(parse_ref("corpus@v2")), str(parse_ref("demo-llm@3", "model")), parse_ref("m@prod", "model").alias
    ('corpus@2', 'demo-llm@3', 'prod')
    >>> str(parse_ref("corpus@v2")), parse_ref("docs").storage_version
    ('corpus@2', 'latest')
    >>> dataset_path("corpus"), model_path("demo-llm"), file_path("file-abc")
    ('datasets/corpus', 'models/demo-llm', 'files/file-abc.jsonl')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from raylane.errors import InvalidRequestError

DATASETS_PREFIX = "datasets"  # published datasets: datasets/<name>/vN
MODELS_PREFIX = "models"  # registered models: models/<name>/vN
FILES_PREFIX = "files"  # uploaded and generated files of the Files API: files/<id>.jsonl
_ALIAS = r"[A-Za-z][A-Za-z0-9_.-]{0,63}"
_REF = re.compile(rf"(?P<name>[^@]+)(?:@(?:v?(?P<version>\d+)|(?P<alias>{_ALIAS})))?")
NEWEST = "latest"  # NAME@latest is NAME: the newest version, never an alias


@dataclass(frozen=True)
class Ref:
    """A published artifact's name and version (``None``: the newest), or a model's alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @property
    def storage_version(self) -> str:
        """The version folder in storage (``vN``), or ``latest`` for the newest."""
        return "latest" if self.version is None else version_folder(self.version)


def parse_ref(text: str, what: str = "artifact") -> Ref:
    """``NAME``, ``NAME@N`` or ``NAME@vN`` -> :class:`Ref`, and for models ``NAME@ALIAS`` (a name
    that starts with a letter: ``prod``, ``staging``); anything else is an
    :class:`InvalidRequestError` that names ``what`` was being referred to.

    Example:
        >>> parse_ref("m@prod", "model"), parse_ref("m@latest", "model")
        (Ref(name='m', version=None, alias='prod'), Ref(name='m', version=None, alias=None))
        >>> parse_ref("corpus@prod", "dataset")
        Traceback (most recent call last):
        ...
        raylane.errors.InvalidRequestError: bad dataset reference 'corpus@prod': expected NAME or NAME@N
    """
    match = _REF.fullmatch(text.strip())
    alias = match["alias"] if match is not None else None
    if match is None or "/" in match["name"] or (alias is not None and what != "model"):
        expected = "NAME, NAME@N or NAME@ALIAS" if what == "model" else "NAME or NAME@N"
        raise InvalidRequestError(f"bad {what} reference {text!r}: expected {expected}")
    version = match["version"]
    return Ref(
        match["name"], int(version) if version is not None else None, None if alias == NEWEST else alias
    )


def is_alias(text: str) -> bool:
    """Whether ``text`` can name a model alias: a letter first, then letters, digits, ``_.-``; not
    ``latest``.

    Example:
        >>> is_alias("prod"), is_alias("3"), is_alias("latest")
        (True, False, False)
    """
    return re.fullmatch(_ALIAS, text) is not None and text != NEWEST


def version_folder(version: int) -> str:
    """The storage folder of version ``version``: ``v3``."""
    return f"v{version}"


def published_ref(name: str, folder: str) -> str:
    """How to refer to the version published in storage folder ``folder`` (``vN``).

    Example:
        >>> published_ref("corpus", "v3")
        'corpus@3'
    """
    return str(Ref(name, int(folder.removeprefix("v"))))


def dataset_path(name: str) -> str:
    """Root-relative location of the dataset called ``name``."""
    return f"{DATASETS_PREFIX}/{name.strip('/')}"


def model_path(name: str) -> str:
    """Root-relative location of the registered model called ``name``."""
    return f"{MODELS_PREFIX}/{name.strip('/')}"


def file_path(file_id: str) -> str:
    """Root-relative location of a Files API file's content."""
    return f"{FILES_PREFIX}/{file_id}.jsonl"
