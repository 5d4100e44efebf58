"""Storage against a real S3 server (SeaweedFS) with enforced credentials."""

from __future__ import annotations

import uuid

import pytest

from raylane.config import S3Config
from raylane.errors import NotFoundError, StorageError
from raylane.storage import Storage, next_version
from tests.harness import S3Server


@pytest.fixture
def store(s3_server: S3Server) -> Storage:
    root = f"s3://{s3_server.bucket}/unit-{uuid.uuid4().hex[:8]}"
    return Storage.from_uri(root, S3Config(**s3_server.config()))


def test_roundtrip_list_delete(store: Storage):
    store.write_bytes("a/one.txt", b"1")
    store.write_bytes("a/deep/two.txt", b"22")
    assert store.read_bytes("a/deep/two.txt") == b"22"
    assert store.list("a") == ["a/one.txt"]
    assert store.list("a", recursive=True) == ["a/deep/two.txt", "a/one.txt"]
    store.delete("a/deep")
    assert store.list("a", recursive=True) == ["a/one.txt"]
    store.check_access()


def test_publish_is_atomic_on_s3(store: Storage):
    with pytest.raises(RuntimeError), store.publish("datasets/x", "v1") as pub:
        store.write_bytes(pub.path("part-0"), b"half")
        raise RuntimeError("killed")
    assert store.versions("datasets/x") == []
    assert store.list("datasets/x", recursive=True) == []
    with store.publish("datasets/x", next_version(store, "datasets/x")) as pub:
        store.write_bytes(pub.path("part-0"), b"whole")
    assert [store.read_bytes(p) for p in store.published_files("datasets/x")] == [b"whole"]
    assert store.read_manifest("datasets/x")["data_uri"].startswith(store.root_uri)


def test_missing_object_is_not_found(store: Storage):
    with pytest.raises(NotFoundError):
        store.read_bytes("nothing/here")


def test_wrong_secret_names_bucket_and_endpoint_never_the_secret(s3_server: S3Server):
    wrong = "definitely-wrong-secret-" + uuid.uuid4().hex
    cfg = S3Config(**s3_server.config(secret_access_key=wrong))
    store = Storage.from_uri(f"s3://{s3_server.bucket}/x", cfg)
    with pytest.raises(StorageError) as info:
        store.check_access()
    message = str(info.value)
    assert s3_server.bucket in message and s3_server.endpoint in message
    assert wrong not in message and s3_server.secret_key not in message
    with pytest.raises(StorageError) as info:
        store.write_bytes("f", b"x")
    assert wrong not in str(info.value)


def test_missing_bucket_is_one_clear_error(s3_server: S3Server):
    store = Storage.from_uri("s3://no-such-bucket/x", S3Config(**s3_server.config()))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        store.check_access()


def test_credentials_from_the_aws_environment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = Storage.from_uri(f"s3://{s3_server.bucket}/env-chain-{uuid.uuid4().hex[:6]}")
    store.write_bytes("hello", b"from the credential chain")
    assert store.read_bytes("hello") == b"from the credential chain"
