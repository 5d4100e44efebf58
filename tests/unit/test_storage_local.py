"""Storage on a local root: atomic writes, listing, and publishing that is all-or-nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raylane.errors import NotFoundError, StorageError
from raylane.storage import Storage, next_version


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    return Storage.from_uri((tmp_path / "root").as_uri())


def test_write_read_list_delete(store: Storage):
    store.write_bytes("a/one.txt", b"1")
    store.write_bytes("a/sub/two.txt", b"22")
    assert store.read_bytes("a/sub/two.txt") == b"22"
    assert store.list("a") == ["a/one.txt"]
    assert store.list("a", recursive=True) == ["a/one.txt", "a/sub/two.txt"]
    assert store.list("missing") == []
    store.delete("a/sub")
    assert not store.exists("a/sub/two.txt")
    assert store.exists("a/one.txt")


def test_overwrite_leaves_no_temp_files(store: Storage, tmp_path: Path):
    store.write_bytes("f.bin", b"old")
    store.write_bytes("f.bin", b"new")
    assert store.read_bytes("f.bin") == b"new"
    assert sorted(os.listdir(tmp_path / "root")) == ["f.bin"]


def test_a_write_killed_before_its_rename_is_never_listed(
    store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A writer killed between writing and renaming leaves its temp file beside the final name.
    store.write_bytes("parts/001-000000.jsonl", b"done\n")

    def killed(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # stands for the SIGKILL: the rename never happens

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_bytes("parts/001-000001.jsonl", b"half a line")
    monkeypatch.undo()
    assert len(os.listdir(tmp_path / "root" / "parts")) == 2  # the leftover is there...
    assert store.list("parts") == ["parts/001-000000.jsonl"]  # ...and never read as a part


def test_missing_file_is_not_found(store: Storage):
    with pytest.raises(NotFoundError, match="not found in storage"):
        store.read_bytes("nope.txt")


def test_paths_cannot_escape_the_root(store: Storage):
    with pytest.raises(StorageError, match="leaves the storage root"):
        store.read_bytes("../outside")


def test_publish_is_visible_only_after_success(store: Storage):
    with store.publish("datasets/d", "v1") as pub:
        store.write_bytes(pub.path("part-0.txt"), b"a")
        store.write_bytes(pub.path("nested/part-1.txt"), b"b")
        pub.metadata["rows"] = 2
        assert store.versions("datasets/d") == []  # not visible while writing
    manifest = store.read_manifest("datasets/d")
    assert manifest["version"] == "v1" and manifest["rows"] == 2
    assert manifest["files"] == ["nested/part-1.txt", "part-0.txt"]
    assert [store.read_bytes(p) for p in store.published_files("datasets/d")] == [b"b", b"a"]


def test_failed_publish_leaves_nothing(store: Storage):
    with pytest.raises(RuntimeError, match="crash"), store.publish("datasets/d", "v1") as pub:
        store.write_bytes(pub.path("part-0.txt"), b"a")
        raise RuntimeError("crash mid-write")
    assert store.versions("datasets/d") == []
    assert store.list("datasets/d", recursive=True) == []
    with pytest.raises(NotFoundError):
        store.read_manifest("datasets/d")


def test_a_version_is_published_once(store: Storage):
    with store.publish("m", "v1"):
        pass
    with pytest.raises(StorageError, match="already published"), store.publish("m", "v1"):
        pass


def test_versions_sort_numerically_and_next_version(store: Storage):
    for version in ("v1", "v2", "v10"):
        with store.publish("d", version) as pub:
            store.write_bytes(pub.path("x"), version.encode())
    assert store.versions("d") == ["v1", "v2", "v10"]
    assert store.read_manifest("d")["version"] == "v10"
    assert next_version(store, "d") == "v11"


def test_sweep_removes_only_unpublished_leftovers(store: Storage):
    with store.publish("d", "v1") as pub:
        store.write_bytes(pub.path("keep"), b"1")
    # A writer killed mid-run (no exception handler ran) leaves its unique prefix behind.
    store.write_bytes("d/_data/v2-deadbeef/part", b"orphan")
    assert store.sweep_unpublished("d", older_than_s=3600) == 0  # young leftovers may be live writers
    assert store.sweep_unpublished("d", older_than_s=-1) == 1
    assert store.list("d/_data", recursive=True) == [p for p in store.published_files("d")]


def test_resolve_accepts_full_uris(store: Storage, tmp_path: Path):
    fs, path = store.resolve(store.uri("x/y"))
    assert path.endswith("root/x/y")
    other_fs, other = store.resolve((tmp_path / "elsewhere").as_uri())
    assert other == str(tmp_path / "elsewhere")


def test_unsupported_root():
    with pytest.raises(StorageError, match="unsupported storage root"):
        Storage.from_uri("gs://bucket/x")


def test_private_dirs_are_made_0700_and_a_folder_someone_else_controls_is_refused(tmp_path: Path):
    import os

    from raylane.errors import StorageError
    from raylane.storage import private_dir

    mine = private_dir(tmp_path / "a" / "b")
    assert mine.stat().st_mode & 0o777 == 0o700 and private_dir(mine) == mine  # idempotent
    mine.chmod(0o777)  # as a starting Ray node leaves its temp dir
    assert private_dir(mine).stat().st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # root can hand a folder to another user, as someone else's /tmp dir would be
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(StorageError, match="another user"):
            private_dir(theirs)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(StorageError):
        private_dir(link)
