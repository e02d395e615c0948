"""The pieces that turn faults into clear job failures, without Ray: a full disk under a checkpoint
(a real ENOSPC on a small tmpfs), the tracker's permanent failures, the lost-Ray-head probe."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import CheckpointError
from orchestrator.events import Event, from_wire
from orchestrator.execution.ray_local import ray_head_gone
from orchestrator.execution.tracker import RunTracker
from orchestrator.runtime.checkpoints import CheckpointManager, disk_full_error
from tests.conftest import mounted_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs); mounting needs root, which CI's container has."""
    with mounted_tmpfs(tmp_path / "disk", "size=1m") as mount:
        yield mount


def write_bytes(size: int):  # type: ignore[no-untyped-def]
    def write(directory: Path) -> None:
        with (directory / "state.bin").open("wb") as fh:  # as the torch and tf writers do
            fh.write(b"\1" * size)

    return write


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    manager = CheckpointManager(small_disk, keep=10)
    first = manager.save(write_bytes(400_000), step=20, epoch=1)
    with pytest.raises(CheckpointError) as err:
        manager.save(write_bytes(800_000), step=40, epoch=2)  # does not fit in what is left
    text = err.value.render()
    assert f"no space left on device writing checkpoint step 40 to {small_disk}" in text
    assert f"fix: free space in {small_disk} or set checkpoint.dir" in text and "orchestrator resume" in text
    assert disk_full_error(err.value) is not None  # the cause is kept: the worker marks it permanent
    assert sorted(p.name for p in small_disk.iterdir()) == ["ckpt-0000000020"]  # no half checkpoint
    assert manager.verify(first.path).step == 20
    assert manager.latest_valid().checkpoint == first
    assert manager.save(write_bytes(100_000), step=40, epoch=2).step == 40  # room again: it works


def test_other_write_errors_are_not_called_a_full_disk(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as err:
        CheckpointManager(tmp_path).save(broken, step=1, epoch=1)
    assert not isinstance(err.value, CheckpointError)
    assert disk_full_error(err.value) is None
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_found_in_the_causes() -> None:
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("writer failed") from exc
    except RuntimeError as outer:
        found = disk_full_error(outer)
    assert found is not None and found.errno == errno.EDQUOT
    assert disk_full_error(RuntimeError("no")) is None and disk_full_error(None) is None


def typed(wire: dict[str, Any]) -> Event:
    event = from_wire(wire)
    assert event is not None
    return event


def test_a_permanent_worker_error_is_recorded_once_with_its_reason() -> None:
    tracker = RunTracker()
    tracker.apply(typed({"type": "attempt_start", "time": 1.0, "attempt": 1}))
    tracker.apply(typed({"type": "worker_error", "time": 2.0, "rank": 1, "error": "ValueError: x"}))
    assert tracker.permanent_failure is None  # an ordinary error: Ray Train restarts the workers
    tracker.apply(typed({"type": "worker_error", "time": 3.0, "rank": 0, "error": "CheckpointError: no space left",
                   "permanent": True}))
    tracker.apply(typed({"type": "worker_error", "time": 4.0, "rank": 1, "error": "later", "permanent": True}))
    assert tracker.permanent_failure == "rank 0: CheckpointError: no space left"


def test_the_head_probe_tells_a_closed_port_from_a_listening_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert not ray_head_gone(address)
    assert ray_head_gone(address)  # closed: connection refused
    assert not ray_head_gone("not-an-address")  # unparseable: never taken for a dead head
