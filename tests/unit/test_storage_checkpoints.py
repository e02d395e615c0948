"""Checkpoints in object storage (StorageCheckpointManager) against a real S3 server (moto over HTTP).

Each "node" is a manager with a cache folder of its own: what one node wrote, another reads from
S3, never from the writer's disk.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from orchestrator import events
from orchestrator.errors import CheckpointError, StorageError, UsageError
from orchestrator.models.torch_models import build_cnn
from orchestrator.runtime import checkpoints as ckpt_mod
from orchestrator.runtime.checkpoints import (
    MANIFEST,
    OWNER_FILE,
    CheckpointManager,
    StorageCheckpointManager,
    check_owner,
    checkpoint_manager,
)
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.torch_ddp import STATE_FILE, load_state, optimizer_checksum, param_checksum
from orchestrator.spec.models import CNNModel
from orchestrator.storage import Storage
from orchestrator.testing.s3 import S3Server, free_port


@pytest.fixture
def store(s3_bucket: str) -> Storage:
    return Storage.open(f"{s3_bucket}/cnn-1/checkpoints")


def node(store: Storage, tmp_path: Path, name: str, **kw: Any) -> StorageCheckpointManager:
    """A manager as one node sees the storage: its own cache folder."""
    return StorageCheckpointManager(store, cache=tmp_path / f"node-{name}", **kw)


def writer(payload: bytes) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        (directory / "state.bin").write_bytes(payload)
        (directory / "sub").mkdir()
        (directory / "sub" / "extra.txt").write_text("x")

    return write


def keys(server: S3Server, store: Storage) -> list[str]:
    """Object keys under the checkpoint folder, relative to it (not pyarrow's empty folder markers)."""
    bucket, _, prefix = store.root.partition("/")
    return [k[len(prefix) + 1 :] for k in server.keys(bucket, prefix + "/") if not k.endswith("/")]


def ckpt_dirs(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


@pytest.fixture
def count_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every object downloaded with Storage.get_file (thread-safe), in order."""
    fetched: list[str] = []
    lock = threading.Lock()
    real = Storage.get_file

    def get_file(self: Storage, rel: str, local: Path) -> None:
        with lock:
            fetched.append(rel)
        real(self, rel, local)

    monkeypatch.setattr(Storage, "get_file", get_file)
    return fetched


# -- round trip ---------------------------------------------------------------------------------
def test_torch_state_round_trip_to_another_node(store: Storage, s3_server: S3Server, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn(CNNModel(conv_filters=[4], dense_units=[8]), (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "global_step": 30}

    def write(directory: Path) -> None:
        with (directory / STATE_FILE).open("wb") as fh:
            torch.save(state, fh)

    writer_node = node(store, tmp_path, "a", owner="cnn-1")
    saved = writer_node.save(write, step=30, epoch=3, meta={"framework": "torch"})
    assert saved.location == f"{store.uri}/ckpt-0000000030"
    assert saved.path == tmp_path / "node-a" / "ckpt-0000000030"  # the staged copy stays as the cache
    assert keys(s3_server, store) == [OWNER_FILE, "ckpt-0000000030/manifest.json", "ckpt-0000000030/state.pt"]
    manifest = json.loads(store.read_text("ckpt-0000000030/manifest.json"))
    assert manifest["step"] == 30 and manifest["epoch"] == 3 and manifest["meta"] == {"framework": "torch"}
    assert manifest["files"][STATE_FILE]["bytes"] == (saved.path / STATE_FILE).stat().st_size

    other = node(store, tmp_path, "b")
    restored = other.fetch("ckpt-0000000030")
    assert restored.path == tmp_path / "node-b" / "ckpt-0000000030"
    assert (restored.step, restored.epoch, restored.location) == (30, 3, saved.location)
    fresh = build_cnn(CNNModel(conv_filters=[4], dense_units=[8]), (1, 8, 8), 10)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    assert param_checksum(fresh) != param_checksum(model)
    loaded = load_state(restored.path / STATE_FILE)
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert param_checksum(fresh) == param_checksum(model)
    assert optimizer_checksum(fresh_opt) == optimizer_checksum(opt)
    assert loaded["global_step"] == 30


def test_manifest_is_uploaded_last(store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    real = Storage.put_file

    def put_file(self: Storage, local: Path, rel: str) -> None:
        sent.append(rel)
        real(self, local, rel)

    monkeypatch.setattr(Storage, "put_file", put_file)
    node(store, tmp_path, "a").save(writer(b"abc"), step=10, epoch=1)
    assert sent == ["ckpt-0000000010/state.bin", "ckpt-0000000010/sub/extra.txt", "ckpt-0000000010/manifest.json"]


# -- atomic commit ------------------------------------------------------------------------------
class WriterKilled(BaseException):
    """The writer's process dying (no except clause of the product catches it)."""


def kill_before(monkeypatch: pytest.MonkeyPatch, last: str) -> None:
    """Make the next upload of a file named ``last`` kill the writer before it is sent."""
    real = Storage.put_file

    def put_file(self: Storage, local: Path, rel: str) -> None:
        if rel.endswith("/" + last):
            raise WriterKilled(rel)
        real(self, local, rel)

    monkeypatch.setattr(Storage, "put_file", put_file)


def test_checkpoint_killed_mid_upload_is_never_chosen(
    store: Storage, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_node = node(store, tmp_path, "a", owner="cnn-1")
    writer_node.save(writer(b"first"), step=10, epoch=1)
    with monkeypatch.context() as patch:
        kill_before(patch, MANIFEST)
        with pytest.raises(WriterKilled):
            writer_node.save(writer(b"second"), step=20, epoch=2)
    # every file of step 20 reached S3, its manifest did not
    assert "ckpt-0000000020/state.bin" in keys(s3_server, store)
    assert "ckpt-0000000020/manifest.json" not in keys(s3_server, store)

    restarted = node(store, tmp_path, "b", owner="cnn-1")  # the job restarted on another node
    result = restarted.latest_valid()
    assert result.checkpoint is not None and result.checkpoint.step == 10
    assert (result.checkpoint.path / "state.bin").read_bytes() == b"first"
    assert result.skipped == [
        (f"{store.uri}/ckpt-0000000020", f"{store.uri}/ckpt-0000000020: no manifest (an incomplete checkpoint)")
    ]
    assert [c.step for c in restarted.list()] == [10]

    assert node(store, tmp_path, "reader").cleanup_orphans() == []  # not an owner: removes nothing
    assert "ckpt-0000000020/state.bin" in keys(s3_server, store)
    assert restarted.cleanup_orphans() == [f"{store.uri}/ckpt-0000000020"]
    assert not [k for k in keys(s3_server, store) if k.startswith("ckpt-0000000020")]
    assert restarted.latest_valid().skipped == []


def test_rewriting_a_step_removes_its_manifest_first(
    store: Storage, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_node = node(store, tmp_path, "a", owner="cnn-1")
    writer_node.save(writer(b"older"), step=10, epoch=1)
    writer_node.save(writer(b"old-20"), step=20, epoch=2)
    with monkeypatch.context() as patch:  # a restart writes step 20 again and dies in the upload
        kill_before(patch, "extra.txt")
        with pytest.raises(WriterKilled):
            writer_node.save(writer(b"new-20"), step=20, epoch=2)
    assert [k for k in keys(s3_server, store) if k.startswith("ckpt-0000000020")] == ["ckpt-0000000020/state.bin"]
    result = node(store, tmp_path, "b").latest_valid()
    assert result.checkpoint is not None and result.checkpoint.step == 10  # never half old, half new
    assert "no manifest" in result.skipped[0][1]
    again = writer_node.save(writer(b"new-20"), step=20, epoch=2)  # and a complete rewrite replaces it
    assert (node(store, tmp_path, "c").fetch(again.path.name).path / "state.bin").read_bytes() == b"new-20"


# -- corruption ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "reason"),
    [(b"sec0nd", "state.bin fails its sha256 checksum (corrupted)"),
     (b"sec", "state.bin is 3 bytes, the manifest says 6 (truncated?)")],
)
def test_corrupted_object_is_skipped_with_its_reason(
    store: Storage, s3_server: S3Server, tmp_path: Path, damage: bytes, reason: str
) -> None:
    writer_node = node(store, tmp_path, "a")
    writer_node.save(writer(b"first"), step=10, epoch=1)
    writer_node.save(writer(b"second"), step=20, epoch=2)
    bucket, _, prefix = store.root.partition("/")
    s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/ckpt-0000000020/state.bin", Body=damage)

    reader = node(store, tmp_path, "b")
    result = reader.latest_valid()
    assert result.checkpoint is not None and result.checkpoint.step == 10
    assert result.skipped == [(f"{store.uri}/ckpt-0000000020", f"{store.uri}/ckpt-0000000020: file {reason}")]
    assert ckpt_dirs(reader.cache) == ["ckpt-0000000010"]  # the bad download was not kept, no temporaries
    with pytest.raises(CheckpointError, match="corrupted|truncated"):
        reader.fetch("ckpt-0000000020")


def test_missing_object_and_bad_names(store: Storage, tmp_path: Path) -> None:
    writer_node = node(store, tmp_path, "a")
    writer_node.save(writer(b"x"), step=10, epoch=1)
    store.delete("ckpt-0000000010/sub/extra.txt")
    with pytest.raises(CheckpointError) as err:
        node(store, tmp_path, "b").fetch("ckpt-0000000010")
    assert err.value.message == f"{store.uri}/ckpt-0000000010: file sub/extra.txt is missing"
    with pytest.raises(CheckpointError, match="no manifest"):
        writer_node.fetch("ckpt-0000000099")
    with pytest.raises(CheckpointError, match="not the name of a checkpoint"):
        writer_node.fetch("../../etc")


# -- keep ---------------------------------------------------------------------------------------
def test_keep_deletes_old_checkpoints_in_s3_and_the_cache(store: Storage, s3_server: S3Server, tmp_path: Path) -> None:
    writer_node = node(store, tmp_path, "a", keep=2, owner="cnn-1")
    for step in (10, 20, 30, 40):
        writer_node.save(writer(b"s%d" % step), step=step, epoch=step // 10)
    assert keys(s3_server, store) == [
        OWNER_FILE,
        "ckpt-0000000030/manifest.json", "ckpt-0000000030/state.bin", "ckpt-0000000030/sub/extra.txt",
        "ckpt-0000000040/manifest.json", "ckpt-0000000040/state.bin", "ckpt-0000000040/sub/extra.txt",
    ]
    assert [c.step for c in writer_node.list()] == [40, 30]
    assert ckpt_dirs(writer_node.cache) == ["ckpt-0000000030", "ckpt-0000000040"]


# -- several nodes, one cache -------------------------------------------------------------------
def test_two_nodes_fetch_identical_bytes(store: Storage, tmp_path: Path, count_downloads: list[str]) -> None:
    saved = node(store, tmp_path, "a").save(writer(bytes(range(256)) * 400), step=10, epoch=1)
    got = [node(store, tmp_path, name).fetch("ckpt-0000000010") for name in ("b", "c")]
    assert [g.path for g in got] == [tmp_path / "node-b" / "ckpt-0000000010", tmp_path / "node-c" / "ckpt-0000000010"]
    for g in got:
        for rel in ("state.bin", "sub/extra.txt", MANIFEST):
            assert (g.path / rel).read_bytes() == (saved.path / rel).read_bytes()
    assert sorted(count_downloads) == sorted(["ckpt-0000000010/state.bin", "ckpt-0000000010/sub/extra.txt"] * 2)


def test_ranks_on_one_node_fetching_at_once_download_once(
    store: Storage, tmp_path: Path, count_downloads: list[str]
) -> None:
    node(store, tmp_path, "a").save(writer(b"w" * 100_000), step=10, epoch=1)
    ranks = [node(store, tmp_path, "b") for _ in range(4)]  # four ranks sharing node b's cache
    found: list[Path] = []
    errors: list[BaseException] = []

    def fetch(mgr: StorageCheckpointManager) -> None:
        try:
            found.append(mgr.fetch("ckpt-0000000010").path / "state.bin")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(m,)) for m in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {p.read_bytes() for p in found} == {b"w" * 100_000}
    assert len(count_downloads) == 2  # both files once: the other ranks found the verified copy
    assert ckpt_dirs(tmp_path / "node-b") == ["ckpt-0000000010"]


def test_fetch_reuses_a_valid_cache_and_replaces_a_corrupted_one(
    store: Storage, tmp_path: Path, count_downloads: list[str]
) -> None:
    saved = node(store, tmp_path, "a").save(writer(b"payload"), step=10, epoch=1)
    same_node = node(store, tmp_path, "a")  # a restart on the writer's node
    assert same_node.fetch("ckpt-0000000010").path == saved.path
    assert count_downloads == []

    (saved.path / "state.bin").write_bytes(b"paYload")  # the node's disk flipped a byte
    assert (same_node.fetch("ckpt-0000000010").path / "state.bin").read_bytes() == b"payload"
    assert sorted(count_downloads) == ["ckpt-0000000010/state.bin", "ckpt-0000000010/sub/extra.txt"]

    shutil.rmtree(saved.path)  # the cache is only a cache
    count_downloads.clear()
    assert (same_node.fetch("ckpt-0000000010").path / "state.bin").read_bytes() == b"payload"
    assert len(count_downloads) == 2
    assert not [p for p in saved.path.parent.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_a_rewritten_step_is_downloaded_again(store: Storage, tmp_path: Path, count_downloads: list[str]) -> None:
    node(store, tmp_path, "a").save(writer(b"one"), step=10, epoch=1)
    reader = node(store, tmp_path, "b")
    assert (reader.fetch("ckpt-0000000010").path / "state.bin").read_bytes() == b"one"
    node(store, tmp_path, "a").save(writer(b"two"), step=10, epoch=1)  # same step written again
    assert (reader.fetch("ckpt-0000000010").path / "state.bin").read_bytes() == b"two"
    assert len(count_downloads) == 4


# -- ownership ----------------------------------------------------------------------------------
def test_another_jobs_storage_is_refused(store: Storage, tmp_path: Path) -> None:
    node(store, tmp_path, "a", owner="cnn-111111").save(writer(b"one"), step=10, epoch=1)
    assert store.read_text(OWNER_FILE) == "cnn-111111\n"
    node(store, tmp_path, "a", owner="cnn-111111").claim()  # a restart of the same job

    with pytest.raises(UsageError) as err:
        node(store, tmp_path, "b", owner="cnn-222222").save(writer(b"two"), step=20, epoch=1)
    local = tmp_path / "local-ckpts"
    check_owner(local, "cnn-111111", create=True)
    with pytest.raises(UsageError) as local_err:
        check_owner(local, "cnn-222222")
    assert err.value.message == local_err.value.message.replace(str(local), store.uri)
    assert err.value.fix == (local_err.value.fix or "").replace(str(local), store.uri)
    assert f"{store.uri}/{OWNER_FILE}" in err.value.message
    assert [c.step for c in node(store, tmp_path, "c").list()] == [10]  # nothing written


def test_a_claim_lost_to_a_racing_job_is_found_at_the_next_save(store: Storage, tmp_path: Path) -> None:
    first = node(store, tmp_path, "a", owner="cnn-111111")
    first.claim()
    store.write_text(OWNER_FILE, "cnn-222222\n")  # the other job's write landed last
    with pytest.raises(UsageError, match="belongs to job cnn-222222"):
        first.save(writer(b"x"), step=10, epoch=1)


# -- failures -----------------------------------------------------------------------------------
def test_unreachable_storage_is_a_storage_error_and_no_half_staged_copy(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    port = free_port()
    store = dataclasses.replace(Storage.open("s3://bucket/cnn-1/checkpoints"), fs=pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="k", secret_key="s",
        region="us-east-1", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1)))
    mgr = StorageCheckpointManager(store, cache=tmp_path / "node-a")
    with pytest.raises(StorageError) as err:
        mgr.save(writer(b"x"), step=5, epoch=1)
    assert err.value.message.startswith(
        "checkpoint step 5 was not saved to s3://bucket/cnn-1/checkpoints/ckpt-0000000005")
    assert err.value.fix is not None and "AWS_ENDPOINT_URL" in err.value.fix
    assert list((tmp_path / "node-a").iterdir()) == []  # the staged copy went with the failed upload
    with pytest.raises(StorageError):  # never "no checkpoint": that would restart from scratch
        mgr.latest_valid()


def test_full_cache_disk_says_what_to_do(store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError) as err:
        node(store, tmp_path, "a").save(full, step=5, epoch=1)
    assert "no space left on device staging checkpoint step 5" in err.value.message
    assert err.value.fix is not None and "ORCHESTRATOR_CACHE_DIR" in err.value.fix
    assert ckpt_dirs(tmp_path / "node-a") == []

    node(store, tmp_path, "a").save(writer(b"x" * 1000), step=6, epoch=1)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda _p: usage._replace(free=10))
    with pytest.raises(CheckpointError) as err:
        node(store, tmp_path, "b").fetch("ckpt-0000000006")
    assert "no space left on device downloading checkpoint" in err.value.message
    assert "ORCHESTRATOR_CACHE_DIR" in (err.value.fix or "")


# -- choosing the manager, and the session's restore --------------------------------------------
def test_checkpoint_manager_picks_by_location(s3_bucket: str, tmp_path: Path) -> None:
    local = checkpoint_manager(tmp_path / "ckpts", keep=4, owner="cnn-1")
    assert isinstance(local, CheckpointManager)
    assert (local.directory, local.keep, local.owner) == (tmp_path / "ckpts", 4, "cnn-1")
    shared = checkpoint_manager(f"file://{tmp_path}/shared/")
    assert isinstance(shared, CheckpointManager) and shared.directory == tmp_path / "shared"
    remote = checkpoint_manager(f"{s3_bucket}/cnn-1/checkpoints/", keep=2, owner="cnn-1", cache=tmp_path / "c")
    assert isinstance(remote, StorageCheckpointManager)
    assert (remote.location, remote.keep, remote.owner, remote.cache) == (
        f"{s3_bucket}/cnn-1/checkpoints", 2, "cnn-1", tmp_path / "c")
    with pytest.raises(UsageError, match="unknown storage scheme"):
        checkpoint_manager("ftp://host/ckpts")


def test_local_fetch_by_name(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    saved = mgr.save(writer(b"abc"), step=7, epoch=1)
    got = mgr.fetch("ckpt-0000000007")
    assert (got.path, got.step, got.location) == (saved.path, 7, None)
    with pytest.raises(CheckpointError, match="not the name of a checkpoint"):
        mgr.fetch("../ckpt-0000000007")


class Broadcast:
    """Collectives of a 2-rank group run one rank after the other: rank 0's broadcast is kept."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def for_rank(self, rank: int) -> SimpleNamespace:
        def broadcast_object(obj: Any, src: int = 0) -> Any:
            if rank == 0:
                self.sent.append(obj)
                return obj
            return self.sent[-1]

        return SimpleNamespace(broadcast_object=broadcast_object)


def rank_view(rank: int, checkpoints: Any, collectives: Any, emitted: list[events.Event]) -> Any:
    """The parts of a TrainSession that saving and restoring use (the methods run unchanged)."""
    return SimpleNamespace(rank=rank, checkpoints=checkpoints, collectives=collectives, restored=None,
                           emit=emitted.append, touch=lambda: None)


def test_every_rank_restores_from_storage_into_its_own_cache(
    store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emitted: list[events.Event] = []
    group = Broadcast()
    rank0 = rank_view(0, node(store, tmp_path, "a", owner="cnn-1"), group.for_rank(0), emitted)
    seconds = TrainSession.save_checkpoint(rank0, writer(b"ten"), epoch=1, step=10)
    assert seconds >= 0
    [saved_event] = emitted
    assert isinstance(saved_event, events.Checkpoint)
    assert saved_event.path == f"{store.uri}/ckpt-0000000010"  # the storage URI, not rank 0's cache
    with monkeypatch.context() as patch:
        kill_before(patch, MANIFEST)
        with pytest.raises(WriterKilled):
            TrainSession.save_checkpoint(rank0, writer(b"twenty"), epoch=2, step=20)
    emitted.clear()

    restored0 = TrainSession.find_restore_point(rank0)
    rank1 = rank_view(1, node(store, tmp_path, "b", owner="cnn-1"), group.for_rank(1), emitted)
    restored1 = TrainSession.find_restore_point(rank1)
    assert group.sent == ["ckpt-0000000010"]  # a name, not a path on rank 0's disk
    assert restored0 is not None and restored1 is not None
    assert restored0.path == tmp_path / "node-a" / "ckpt-0000000010"
    assert restored1.path == tmp_path / "node-b" / "ckpt-0000000010"
    assert (restored1.path / "state.bin").read_bytes() == b"ten"
    assert rank1.restored == restored1
    # rank 0 removed the incomplete step 20 before choosing, so nothing was skipped
    assert emitted == []
    assert [c.step for c in node(store, tmp_path, "c").list()] == [10]
    assert store.list_dirs() == ["ckpt-0000000010"]
