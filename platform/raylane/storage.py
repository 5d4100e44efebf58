"""Storage roots (``file://`` or ``s3://``) behind one small API, and atomic publishing.

Everything raylane keeps (datasets, checkpoints, models, batch files) lives under one root URI.
:class:`Storage` resolves paths relative to that root to a ``pyarrow.fs`` filesystem, which Ray Data,
pyarrow and our own code share, so a job reads S3 exactly as it reads a local folder.

Publishing is atomic without renames (S3 has none): a publication writes its files under a fresh
unique prefix (``<name>/_data/<version>-<id>/``), then writes ``<name>/<version>.manifest.json``
with one PUT. Readers resolve a dataset only through its manifest, so a crashed or cancelled
writer leaves nothing visible; :meth:`Storage.sweep_unpublished` removes its leftovers.

Example:
    >>> import tempfile; from pathlib import Path
    >>> store = Storage.from_uri(Path(tempfile.mkdtemp()).as_uri())
    >>> with store.publish("datasets/demo", "v1") as pub:
    ...     store.write_bytes(pub.path("part-0.txt"), b"hello")
    >>> store.read_manifest("datasets/demo")["files"]
    ['part-0.txt']
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raylane.config import S3Config
from raylane.errors import NotFoundError, StorageError

MANIFEST_SUFFIX = ".manifest.json"
# Every publication writes under its own unique prefix here; only a manifest makes one visible.
DATA_DIR = "_data"


def _s3_filesystem(s3: S3Config, env: dict[str, str]) -> tuple[pafs.S3FileSystem, str]:
    endpoint = s3.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {
        "region": s3.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        # Fail in seconds, not minutes, when an endpoint is down or a secret is wrong.
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible servers (MinIO, SeaweedFS, Ceph) expect path-style addressing.
        kwargs["force_virtual_addressing"] = False
    if s3.access_key_id and s3.secret_access_key:
        kwargs["access_key"] = s3.access_key_id
        kwargs["secret_key"] = s3.secret_access_key.get_secret_value()
    return pafs.S3FileSystem(**kwargs), endpoint or "AWS S3"


@dataclass
class Publication:
    """Files being published under a staging prefix; see :meth:`Storage.publish`."""

    name: str
    version: str
    prefix: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def path(self, relative: str) -> str:
        """Root-relative path of a file inside this publication."""
        return f"{self.prefix}/{relative.lstrip('/')}"


# Inside Storage, `list` names its method: these name the builtin lists it returns.
Paths = list[str]
FileSizes = list[tuple[str, int]]


class Storage:
    """One storage root: read, write, list, delete, and publish atomically.

    Paths given to methods are relative to the root (``datasets/corpus/v1/part-0.parquet``); the
    :attr:`fs` and :meth:`fs_path` pair hands the same locations to pyarrow or Ray Data.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> store = Storage.from_uri(Path(tempfile.mkdtemp()).as_uri())
        >>> store.write_bytes("a/b.txt", b"x"); store.read_bytes("a/b.txt")
        b'x'
    """

    def __init__(self, root_uri: str, fs: pafs.FileSystem, base: str, endpoint: str | None = None) -> None:
        self.root_uri = root_uri.rstrip("/")
        self.fs = fs
        self._base = base.rstrip("/")
        self._endpoint = endpoint

    @classmethod
    def from_uri(cls, root_uri: str, s3: S3Config | None = None) -> Storage:
        """Open a root URI; ``s3`` settings apply to ``s3://`` roots."""
        parsed = urlparse(root_uri)
        if parsed.scheme == "file":
            base = parsed.path
            os.makedirs(base, exist_ok=True)
            return cls(root_uri, pafs.LocalFileSystem(), base)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"storage root {root_uri!r} names no bucket")
            fs, endpoint = _s3_filesystem(s3 or S3Config(), dict(os.environ))
            return cls(root_uri, fs, f"{parsed.netloc}{parsed.path}", endpoint)
        raise StorageError(f"unsupported storage root {root_uri!r}: use file:// or s3://")

    @classmethod
    def from_config(cls, config: Any) -> Storage:
        """The storage root of a :class:`raylane.config.RaylaneConfig`."""
        return cls.from_uri(config.storage.root, config.storage.s3)

    # -- locations ---------------------------------------------------------------------------

    @property
    def bucket(self) -> str | None:
        """The S3 bucket of this root, or None for a local root."""
        return self._base.split("/", 1)[0] if isinstance(self.fs, pafs.S3FileSystem) else None

    def fs_path(self, relative: str = "") -> str:
        """The path of ``relative`` as :attr:`fs` understands it (no scheme)."""
        relative = relative.strip("/")
        if ".." in relative.split("/"):
            raise StorageError(f"path {relative!r} leaves the storage root")
        return f"{self._base}/{relative}" if relative else self._base

    def uri(self, relative: str = "") -> str:
        """The full URI of ``relative`` (``s3://bucket/root/relative``)."""
        relative = relative.strip("/")
        return f"{self.root_uri}/{relative}" if relative else self.root_uri

    def resolve(self, location: str) -> tuple[pafs.FileSystem, str]:
        """Filesystem and path for a root-relative path or a full ``file://``/``s3://`` URI."""
        if location.startswith(("file://", "s3://")):
            if location.startswith(self.root_uri):
                return self.fs, self.fs_path(location[len(self.root_uri) :])
            parsed = urlparse(location)
            if parsed.scheme == "file":
                return pafs.LocalFileSystem(), parsed.path
            if isinstance(self.fs, pafs.S3FileSystem):  # same endpoint and credentials
                return self.fs, f"{parsed.netloc}{parsed.path}"
            raise StorageError(f"{location}: an s3:// location needs an s3:// storage root for its settings")
        return self.fs, self.fs_path(location)

    # -- plain file operations ---------------------------------------------------------------

    def _describe(self, relative: str) -> str:
        if self.bucket is not None:
            return f"{self.uri(relative)} (bucket {self.bucket!r} at {self._endpoint})"
        return self.uri(relative)

    @contextmanager
    def _errors(self, action: str, relative: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise NotFoundError(f"not found in storage: {self.uri(relative)}") from None
        except OSError as exc:
            raise StorageError(f"cannot {action} {self._describe(relative)}: {_short_reason(exc)}") from None

    def read_bytes(self, relative: str) -> bytes:
        """The whole content of a file."""
        with self._errors("read", relative), self.fs.open_input_stream(self.fs_path(relative)) as f:
            return f.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file so readers see the old content or the new one, never a part.

        S3 PUTs are atomic already; on a local disk we write a hidden sibling temp file and rename
        it (a writer killed before the rename leaves only a hidden file, which :meth:`list` skips).
        """
        path = self.fs_path(relative)
        with self._errors("write", relative):
            if isinstance(self.fs, pafs.LocalFileSystem):
                folder, name = os.path.split(path)
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                with self.fs.open_output_stream(path) as f:
                    f.write(data)

    def exists(self, relative: str) -> bool:
        """Whether a file or directory exists at ``relative``."""
        with self._errors("inspect", relative):
            return self.fs.get_file_info(self.fs_path(relative)).type != pafs.FileType.NotFound

    def list(self, prefix: str = "", *, recursive: bool = False) -> Paths:
        """Root-relative paths of the files under ``prefix`` (sorted); [] when it does not exist.
        Hidden files (a write that never finished) are not listed."""
        base = self.fs_path()
        with self._errors("list", prefix):
            selector = pafs.FileSelector(self.fs_path(prefix), recursive=recursive, allow_not_found=True)
            infos = self.fs.get_file_info(selector)
        return sorted(
            i.path[len(base) + 1 :]
            for i in infos
            if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

    def list_location(self, location: str, suffix: str = "") -> Paths:
        """``fs`` paths of the files directly under a root-relative path or a full URI (sorted).

        Pair the result with ``self.resolve(location)[0]`` to hand both to Ray Data or pyarrow.
        """
        fs, path = self.resolve(location)
        with self._errors("list", location):
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))

    def find_files(self, location: str, suffixes: tuple[str, ...]) -> FileSizes:
        """``(fs path, size)`` of every file under ``location`` (recursive) with one of ``suffixes``.

        Sorted by path; a single file named directly is found too. Pair with
        ``self.resolve(location)[0]``. Hidden and underscore entries (``_data``, ``.tmp``) are skipped.
        """
        fs, path = self.resolve(location)
        with self._errors("list", location):
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                infos = [info]
            else:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        found = []
        for i in infos:
            relative_parts = i.path[len(path) :].strip("/").split("/")
            if i.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in relative_parts if p):
                continue
            if i.path.lower().endswith(suffixes):
                found.append((i.path, i.size or 0))
        return sorted(found)

    def delete(self, relative: str) -> None:
        """Delete a file or a whole directory (prefix); deleting nothing is not an error."""
        path = self.fs_path(relative)
        with self._errors("delete", relative):
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(path)

    def check_access(self) -> None:
        """Raise :class:`StorageError` unless the root can be listed (bucket exists, credentials work)."""
        with self._errors("access", ""):
            if self.bucket is not None and self.fs.get_file_info(self.bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"bucket {self.bucket!r} does not exist at {self._endpoint}")
            self.fs.get_file_info(pafs.FileSelector(self.fs_path(), allow_not_found=True))

    # -- atomic publish ----------------------------------------------------------------------

    @contextmanager
    def publish(self, name: str, version: str) -> Iterator[Publication]:
        """Publish ``name`` at ``version``: files written inside become visible together, or never.

        Write files with :meth:`Publication.path` (or hand ``pub.prefix`` to a writer); add facts to
        ``pub.metadata``. On success the manifest is written last; on an exception the staging
        prefix is deleted and nothing is published. Publishing a version that exists is an error.
        """
        name = name.strip("/")
        if self.exists(self.manifest_path(name, version)):
            raise StorageError(f"{self.uri(name)} version {version} is already published")
        prefix = f"{name}/{DATA_DIR}/{version}-{uuid.uuid4().hex[:12]}"
        pub = Publication(name=name, version=version, prefix=prefix)
        if isinstance(self.fs, pafs.LocalFileSystem):  # S3 needs no directories; writers on disk do
            os.makedirs(self.fs_path(prefix), exist_ok=True)
        try:
            yield pub
        except BaseException:
            self._delete_quietly(prefix)
            raise
        files = [path[len(prefix) + 1 :] for path in self.list(prefix, recursive=True)]
        manifest = {
            **pub.metadata,
            "name": name,
            "version": version,
            "data_prefix": prefix,
            "data_uri": self.uri(prefix),
            "files": files,
            "published_at": time.time(),
        }
        self.write_bytes(self.manifest_path(name, version), json.dumps(manifest, indent=2).encode())

    def _delete_quietly(self, prefix: str) -> None:
        # The sweep removes it later if this fails; the failure that got us here matters more.
        with suppress(StorageError):
            self.delete(prefix)

    @staticmethod
    def manifest_path(name: str, version: str) -> str:
        """Where the manifest of ``name`` at ``version`` lives."""
        return f"{name.strip('/')}/{version}{MANIFEST_SUFFIX}"

    def versions(self, name: str) -> Paths:
        """Published versions of ``name``, oldest first."""
        names = [p.rsplit("/", 1)[-1] for p in self.list(name.strip("/"))]
        manifests = [n[: -len(MANIFEST_SUFFIX)] for n in names if n.endswith(MANIFEST_SUFFIX)]
        return sorted(manifests, key=_version_key)

    def read_manifest(self, name: str, version: str = "latest") -> dict[str, Any]:
        """The manifest of a published version (``latest`` = the newest)."""
        if version == "latest":
            versions = self.versions(name)
            if not versions:
                raise NotFoundError(f"nothing is published at {self.uri(name)}")
            version = versions[-1]
        return json.loads(self.read_bytes(self.manifest_path(name, version)))

    def published_files(self, name: str, version: str = "latest") -> Paths:
        """Root-relative paths of a published version's files, as its manifest lists them."""
        manifest = self.read_manifest(name, version)
        return [f"{manifest['data_prefix']}/{f}" for f in manifest["files"]]

    def sweep_unpublished(self, name: str, older_than_s: float = 3600) -> int:
        """Delete staging leftovers of crashed publications of ``name``; returns how many."""
        staging = f"{name.strip('/')}/{DATA_DIR}"
        with self._errors("list", staging):
            infos = self.fs.get_file_info(pafs.FileSelector(self.fs_path(staging), allow_not_found=True))
        live = {self.read_manifest(name, v)["data_prefix"] for v in self.versions(name)}
        cutoff = time.time() - older_than_s
        swept = 0
        for info in infos:
            relative = f"{staging}/{info.base_name}"
            if relative in live:
                continue
            if self._newest_mtime(relative) <= cutoff:
                self.delete(relative)
                swept += 1
        return swept

    def _newest_mtime(self, prefix: str) -> float:
        # S3 has no directories, so a prefix is as young as its youngest file.
        with self._errors("list", prefix):
            selector = pafs.FileSelector(self.fs_path(prefix), recursive=True, allow_not_found=True)
            infos = self.fs.get_file_info(selector)
        return max((i.mtime.timestamp() for i in infos if i.mtime is not None), default=0.0)


def _version_key(version: str) -> tuple[int, str]:
    digits = version.lstrip("v")
    return (int(digits), version) if digits.isdigit() else (-1, version)


def next_version(store: Storage, name: str) -> str:
    """The next ``vN`` version name for ``name``.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> next_version(Storage.from_uri(Path(tempfile.mkdtemp()).as_uri()), "datasets/x")
        'v1'
    """
    numbers = [int(v[1:]) for v in store.versions(name) if v.startswith("v") and v[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def _short_reason(exc: OSError) -> str:
    # pyarrow's AWS errors carry a multi-line dump; the first line names the cause.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can use: made with mode 0700 if missing, refused if it is
    a link or another user owns it (a shared ``/tmp`` path someone else prepared could hand this
    user's processes their files), and narrowed back to 0700 if this user's own folder was opened
    up (Ray makes its temp dir 0777 each time a node starts in it).

    Example:
        >>> import tempfile
        >>> folder = private_dir(Path(tempfile.mkdtemp()) / "mine")
        >>> oct(folder.stat().st_mode & 0o777)
        '0o700'
        >>> folder.chmod(0o777)
        >>> oct(private_dir(folder).stat().st_mode & 0o777)
        '0o700'
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if path.is_symlink() or info.st_uid != os.getuid():
        raise StorageError(
            f"{path} is a link or belongs to another user: raylane will not use it "
            "(remove it, or point the setting at a folder of your own)"
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path
