"""Job storage (orchestrator.storage) against a local folder and a real S3 server (moto, over HTTP)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from orchestrator.errors import StorageError, UsageError
from orchestrator.storage import Storage, check_location, job_location
from orchestrator.testing.s3 import S3Server, free_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A storage location under a prefix: a local folder, or a fresh bucket on the moto server."""
    if request.param == "local":
        return Storage.open(str(tmp_path / "storage" / "jobs"))
    bucket: str = request.getfixturevalue("s3_bucket")
    return Storage.open(f"{bucket}/jobs")


def test_bytes_and_text_round_trip_nested(store: Storage) -> None:
    payload = bytes(range(256)) * 1000
    store.write_bytes("job-1/deep/er/state.bin", payload)
    store.write_text("job-1/notes.txt", "accuracy 0.97 \u2713\n")
    assert store.read_bytes("job-1/deep/er/state.bin") == payload
    assert store.read_text("job-1/notes.txt") == "accuracy 0.97 \u2713\n"
    store.write_bytes("job-1/notes.txt", b"replaced")
    assert store.read_bytes("job-1/notes.txt") == b"replaced"
    assert store.exists("job-1/deep") and not store.is_file("job-1/deep")
    assert store.is_file("job-1/deep/er/state.bin")
    assert not store.exists("job-2") and not store.is_file("job-2/x")


def test_file_round_trip_leaves_no_temporaries(store: Storage, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"\x00weights\xff" * 5000)
    store.put_file(src, "job-1/model/model.pt")
    out = tmp_path / "back" / "model.pt"
    store.get_file("job-1/model/model.pt", out)
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]
    assert store.list_files("job-1") == {"model/model.pt": 45000}


def test_dir_round_trip_and_incremental_put(store: Storage, tmp_path: Path) -> None:
    local = tmp_path / "tb"
    (local / "run" / "train").mkdir(parents=True)
    (local / "events.1").write_bytes(b"a" * 10)
    (local / "run" / "train" / "events.2").write_bytes(b"bb" * 10)
    (local / "run" / ".events.3.tmp").write_bytes(b"half")  # a temporary: never sent
    known: dict[str, tuple[int, float]] = {}
    assert store.put_dir(local, "job-1/tensorboard", known=known) == 2
    assert store.put_dir(local, "job-1/tensorboard", known=known) == 0  # nothing changed
    (local / "events.1").write_bytes(b"a" * 25)  # the event file grew
    assert store.put_dir(local, "job-1/tensorboard", known=known) == 1
    assert store.list_files("job-1/tensorboard") == {"events.1": 25, "run/train/events.2": 20}

    back = tmp_path / "back"
    assert store.get_dir("job-1/tensorboard", back) == 2
    assert (back / "events.1").read_bytes() == b"a" * 25
    assert (back / "run" / "train" / "events.2").read_bytes() == b"bb" * 10


def test_listing(store: Storage) -> None:
    for rel in ("a/ckpt-1/x.bin", "a/ckpt-2/x.bin", "a/ckpt-2/sub/y.bin", "a/top.txt", "b/z.txt"):
        store.write_bytes(rel, rel.encode())
    assert store.list_dirs() == ["a", "b"]
    assert store.list_dirs("a") == ["ckpt-1", "ckpt-2"]
    assert store.list_dirs("a/ckpt-1") == []
    assert store.list_files("a") == {
        "ckpt-1/x.bin": 14, "ckpt-2/x.bin": 14, "ckpt-2/sub/y.bin": 18, "top.txt": 9,
    }
    assert store.list_files("nothing-here") == {}
    assert store.list_dirs("nothing-here") == []


def test_delete_file_and_folder(store: Storage) -> None:
    for rel in ("a/ckpt-1/x.bin", "a/ckpt-1/sub/y.bin", "a/ckpt-2/x.bin"):
        store.write_bytes(rel, b"1")
    store.delete("a/ckpt-2/x.bin")
    assert not store.exists("a/ckpt-2/x.bin")
    store.delete("a/ckpt-1")
    assert store.list_files("a") == {}
    assert not store.exists("a/ckpt-1/sub/y.bin") and not store.exists("a/ckpt-1")
    store.delete("a/never-was")  # nothing there: nothing to do


def test_missing_object_is_file_not_found(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.read_bytes("job-1/missing.bin")
    with pytest.raises(FileNotFoundError):
        store.get_file("job-1/missing.bin", tmp_path / "out" / "missing.bin")
    assert list((tmp_path / "out").iterdir()) == []  # no half-written .part file left


def test_child_paths(store: Storage) -> None:
    job = store.child("job-7", "checkpoints")
    assert job.uri == store.uri + "/job-7/checkpoints"
    assert job.path("ckpt-1/x") == store.path("job-7/checkpoints/ckpt-1/x")
    job.write_text("ckpt-1/x", "w")
    assert store.read_text("job-7/checkpoints/ckpt-1/x") == "w"
    assert store.child() is store and store.child("/") is store


def test_storage_pickles_with_its_filesystem(store: Storage) -> None:
    """A Storage travels to Ray workers as it is."""
    store.write_text("job-1/spec.yaml", "name: cnn\n")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri and copy.root == store.root
    assert copy.read_text("job-1/spec.yaml") == "name: cnn\n"


def test_ray_storage_is_the_same_place(store: Storage) -> None:
    import pyarrow.fs as pafs

    path, fs = store.ray_storage()
    assert isinstance(fs, pafs.FileSystem)
    assert fs.type_name == ("local" if store.is_local else "s3")
    assert path == store.root
    fs.create_dir(f"{path}/ray/run-1")  # as Ray Train writes: folder, then file
    with fs.open_output_stream(f"{path}/ray/run-1/state.json") as out:
        out.write(b"{}")
    assert store.read_bytes("ray/run-1/state.json") == b"{}"


def test_s3_location_names_bucket_and_prefix(s3_bucket: str) -> None:
    store = Storage.open(f"{s3_bucket}//jobs/")
    bucket = s3_bucket.removeprefix("s3://")
    assert store.uri == f"{s3_bucket}/jobs" and store.root == f"{bucket}/jobs"
    assert not store.is_local and store.local_path is None
    assert job_location(f"{s3_bucket}/jobs/", "cnn-1") == f"{s3_bucket}/jobs/cnn-1"


def test_local_locations(tmp_path: Path) -> None:
    assert Storage.open(f"file://{tmp_path}/a/").local_path == tmp_path / "a"
    assert Storage.open(f"{tmp_path}/a/../b").uri == f"{tmp_path}/b"
    assert check_location(" s3://Bucket/x ") == "s3://Bucket/x"


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("", "empty storage location"),
        ("ftp://host/x", "unknown storage scheme 'ftp'"),
        ("s3://", "names no bucket"),
        ("gs:///prefix", "names no bucket"),
        ("s3://bucket/a/../b", "'.' and '..' are not allowed"),
        ("relative/path", "is relative"),
    ],
)
def test_malformed_locations_are_refused(location: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        Storage.open(location)
    assert says in err.value.message
    assert err.value.fix is not None and "s3://bucket/prefix" in err.value.fix


def test_unreachable_endpoint_is_a_storage_error_with_a_fix(s3_server: S3Server) -> None:
    import pyarrow.fs as pafs

    port = free_port()  # nothing listens there
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    store = Storage.open("s3://bucket/jobs", env=env)
    # The product retries five times with back-off (seconds); one attempt keeps this test quick.
    store = dataclasses.replace(store, fs=pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="k", secret_key="s",
        region="us-east-1", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1)))
    for operation, verb in [
        (lambda: store.write_bytes("job-1/a.bin", b"x"), "write"),
        (lambda: store.read_bytes("job-1/a.bin"), "read"),
        (lambda: store.list_files("job-1"), "list"),
        (lambda: store.exists("job-1"), "look up"),
    ]:
        with pytest.raises(StorageError) as err:
            operation()
        assert err.value.message.startswith(f"storage: cannot {verb} s3://bucket/jobs/job-1")
        assert "Could not connect" in err.value.message or "connect" in err.value.message.lower()
        assert err.value.fix is not None and "AWS_ENDPOINT_URL" in err.value.fix
