"""Checkpoint manager: atomic writes, manifests, corruption detection, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import CheckpointError
from orchestrator.runtime.checkpoints import MANIFEST, CheckpointManager


def writer(payload: bytes):
    def write(directory: Path) -> None:
        (directory / "state.bin").write_bytes(payload)
        (directory / "sub").mkdir()
        (directory / "sub" / "extra.txt").write_text("x")

    return write


def test_save_writes_manifest_with_checksums(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    info = mgr.save(writer(b"abc"), step=10, epoch=1, meta={"k": "v"})
    assert info.path.name == "ckpt-0000000010"
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest["step"] == 10 and manifest["epoch"] == 1
    assert manifest["files"]["state.bin"]["bytes"] == 3
    assert set(manifest["files"]) == {"state.bin", "sub/extra.txt"}
    assert mgr.verify(info.path).meta == {"k": "v"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_keep_prunes_oldest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        mgr.save(writer(b"s%d" % step), step=step, epoch=step // 10)
    assert [c.step for c in mgr.list()] == [40, 30]


def test_corrupted_newest_falls_back_to_previous(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5)
    mgr.save(writer(b"first"), step=10, epoch=1)
    newest = mgr.save(writer(b"second"), step=20, epoch=2)
    (newest.path / "state.bin").write_bytes(b"sec0nd")  # same size, different bytes
    result = mgr.latest_valid()
    assert result.checkpoint is not None and result.checkpoint.step == 10
    assert len(result.skipped) == 1
    assert "sha256" in result.skipped[0][1]


def test_truncated_and_missing_files_are_detected(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5)
    a = mgr.save(writer(b"0123456789"), step=1, epoch=1)
    (a.path / "state.bin").write_bytes(b"0123")
    with pytest.raises(CheckpointError, match="truncated"):
        mgr.verify(a.path)
    b = mgr.save(writer(b"0123456789"), step=2, epoch=1)
    (b.path / "sub" / "extra.txt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        mgr.verify(b.path)
    assert mgr.latest_valid().checkpoint is None


def test_checkpoint_without_manifest_is_incomplete(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5)
    good = mgr.save(writer(b"ok"), step=5, epoch=1)
    partial = tmp_path / "ckpt-0000000009"
    partial.mkdir()
    (partial / "state.bin").write_bytes(b"half")
    result = mgr.latest_valid()
    assert result.checkpoint is not None and result.checkpoint.path == good.path
    assert "no manifest" in result.skipped[0][1]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5)

    def boom(directory: Path) -> None:
        (directory / "state.bin").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        mgr.save(boom, step=3, epoch=1)
    assert list(tmp_path.iterdir()) == []


def test_orphaned_temporary_directories_are_cleaned(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5, owner="job-a1b2c3")
    orphan = tmp_path / ".tmp-job-a1b2c3-ckpt-0000000007-deadbeef"
    orphan.mkdir()
    (orphan / "state.bin").write_bytes(b"x")
    assert mgr.cleanup_orphans() == [orphan]
    assert not orphan.exists()


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=5)
    mgr.save(writer(b"one"), step=7, epoch=1)
    mgr.save(writer(b"two!"), step=7, epoch=1)
    [only] = mgr.list()
    assert (only.path / "state.bin").read_bytes() == b"two!"


def test_mid_epoch_sums_are_saved_as_totals_and_counted_once_after_a_resume() -> None:
    from orchestrator.runtime.loop_common import EpochSums

    # two ranks, 3 steps each before the checkpoint: local (loss, correct, seen) sums
    local = [(3.0, 50.0, 96.0), (5.0, 40.0, 96.0)]
    totals = [sum(v) for v in zip(*local, strict=True)]  # what the all-reduce gives every rank
    extra = EpochSums.to_save(totals, seconds=1.5)
    after = [EpochSums.restored(extra, rank) for rank in (0, 1)]
    assert after[0] == EpochSums(loss=8.0, correct=90.0, seen=192.0, seconds=1.5)
    assert after[1] == EpochSums(loss=0.0, correct=0.0, seen=0.0, seconds=1.5)
    # the rest of the epoch adds on; the final all-reduce equals the uninterrupted epoch's sums
    rest = [(1.0, 20.0, 32.0), (2.0, 25.0, 32.0)]
    final = [sum(a.counts()[i] for a in after) + sum(r[i] for r in rest) for i in range(3)]
    uninterrupted = [sum(v) for v in zip(*(local + rest), strict=True)]
    assert final == uninterrupted
