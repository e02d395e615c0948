"""A checkpoint directory may be any directory: a job deletes only its own temporaries there, and
two jobs never share one (the first to use it owns it; a resumed job is the same job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import CheckpointError, UsageError
from orchestrator.runtime.checkpoints import OWNER_FILE, CheckpointManager, check_owner
from orchestrator.runtime.session import JobPaths, LocalCollectives, TrainSession
from orchestrator.spec.models import JobSpec


def write_bytes(payload: bytes):
    def write(directory: Path) -> None:
        (directory / "state.bin").write_bytes(payload)

    return write


def test_temporaries_are_named_with_the_job_id(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(directory: Path) -> None:
        seen.append(directory.name)
        (directory / "state.bin").write_bytes(b"x")

    CheckpointManager(tmp_path, owner="cnn-0a1b2c").save(write, step=12, epoch=1)
    assert len(seen) == 1 and seen[0].startswith(".tmp-cnn-0a1b2c-ckpt-0000000012-")


def test_cleanup_removes_only_this_jobs_temporaries(tmp_path: Path) -> None:
    mine = tmp_path / ".tmp-cnn-0a1b2c-ckpt-0000000007-deadbeef"
    other_job = tmp_path / ".tmp-otherjob-ckpt-0000000007-deadbeef"
    other_prefix = (
        tmp_path / ".tmp-cnn-0a1b2c-extra-ckpt-0000000007-deadbeef"
    )  # a job whose id starts with ours
    notes = tmp_path / ".tmp-notes"
    notes_file = tmp_path / ".tmp-notes.txt"
    for directory in (mine, other_job, other_prefix, notes):
        directory.mkdir()
        (directory / "keep.txt").write_text("data")
    notes_file.write_text("user notes")
    mgr = CheckpointManager(tmp_path, owner="cnn-0a1b2c")
    assert mgr.cleanup_orphans() == [mine]
    assert not mine.exists()
    for kept in (other_job, other_prefix, notes):
        assert (kept / "keep.txt").read_text() == "data"
    assert notes_file.read_text() == "user notes"


def test_a_reader_without_an_owner_deletes_nothing(tmp_path: Path) -> None:
    orphan = tmp_path / ".tmp-cnn-0a1b2c-ckpt-0000000007-deadbeef"
    orphan.mkdir()
    assert CheckpointManager(tmp_path).cleanup_orphans() == []
    assert orphan.is_dir() and not (tmp_path / OWNER_FILE).exists()


def test_the_first_job_owns_the_directory_and_a_second_is_refused(tmp_path: Path) -> None:
    first = CheckpointManager(tmp_path, owner="cnn-111111")
    first.save(write_bytes(b"one"), step=10, epoch=1)
    assert (tmp_path / OWNER_FILE).read_text() == "cnn-111111\n"
    assert (tmp_path / OWNER_FILE).stat().st_mode & 0o777 == 0o600
    before = sorted(p.name for p in tmp_path.iterdir())

    second = CheckpointManager(tmp_path, owner="cnn-222222")
    for attempt in (lambda: second.save(write_bytes(b"two"), step=20, epoch=2), second.cleanup_orphans):
        with pytest.raises(UsageError) as caught:
            attempt()
        text = caught.value.render()
        assert f"checkpoint.dir {tmp_path} belongs to job cnn-111111" in text
        assert "fix: set checkpoint.dir to a directory of this job's own" in text
        assert "orchestrator resume cnn-111111" in text and f"delete {tmp_path / OWNER_FILE}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing deleted
    assert [c.step for c in first.list()] == [10]


def test_the_same_job_resumed_is_allowed(tmp_path: Path) -> None:
    CheckpointManager(tmp_path, owner="cnn-111111").save(write_bytes(b"one"), step=10, epoch=1)
    again = CheckpointManager(tmp_path, owner="cnn-111111")  # a restart or `orchestrator resume`
    again.save(write_bytes(b"two"), step=20, epoch=2)
    restored = again.latest_valid().checkpoint
    assert restored is not None and restored.step == 20
    check_owner(tmp_path, "cnn-111111")  # no error


def test_a_directory_written_before_owners_were_recorded_is_claimed(tmp_path: Path) -> None:
    CheckpointManager(tmp_path).save(write_bytes(b"old"), step=5, epoch=1)  # no owner file
    mgr = CheckpointManager(tmp_path, owner="cnn-333333")
    assert mgr.latest_valid().checkpoint is not None
    mgr.cleanup_orphans()
    assert (tmp_path / OWNER_FILE).read_text() == "cnn-333333\n"


def test_the_worker_session_claims_the_directory_with_its_job_id(tmp_path: Path) -> None:
    ckpt = tmp_path / "shared-ckpts"
    ckpt.mkdir()
    (ckpt / OWNER_FILE).write_text("someone-else-abcdef\n")

    def session(job_id: str) -> TrainSession:
        paths = JobPaths(tmp_path / "job", ckpt, tmp_path / "job" / "model", job_id)
        assert JobPaths.from_config(paths.to_config()) == paths
        return TrainSession(
            spec=JobSpec(name="owner", model={"type": "cnn"}),
            rank=0,
            world_size=1,
            paths=paths,
            data=None,
            sink=None,
            collectives=LocalCollectives(),
            keep_checkpoints=2,
        )

    with pytest.raises(UsageError, match="belongs to job someone-else-abcdef"):
        session("cnn-444444").find_restore_point()
    assert session("someone-else-abcdef").find_restore_point() is None


def _spec_file(tmp_path: Path, ckpt_dir: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump({"name": "owned", "model": {"type": "cnn"}, "checkpoint": {"dir": str(ckpt_dir)}})
    )
    return path


@pytest.mark.parametrize("dry_run", [True, False])
def test_submit_refuses_a_checkpoint_dir_another_job_owns(tmp_path: Path, home: Path, dry_run: bool) -> None:
    ckpt = tmp_path / "ckpts"
    ckpt.mkdir()
    (ckpt / OWNER_FILE).write_text("cnn-555555\n")
    args = [sys.executable, "-m", "orchestrator", "submit", str(_spec_file(tmp_path, ckpt))]
    out = subprocess.run(
        args + (["--dry-run"] if dry_run else []), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2, out.stderr
    assert f"checkpoint.dir {ckpt} belongs to job cnn-555555" in out.stderr
    assert "fix: set checkpoint.dir" in out.stderr and "Traceback" not in out.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())  # no job record made


def test_the_driver_refuses_before_ray_starts_and_the_job_says_why(tmp_path: Path, home: Path) -> None:
    from orchestrator.backends.base import SubmitOptions
    from orchestrator.backends.local import LocalBackend
    from orchestrator.execution.driver import Driver
    from orchestrator.settings import Settings
    from orchestrator.spec.models import JobSpec
    from orchestrator.store import JobState

    ckpt = tmp_path / "ckpts"
    settings = Settings.from_env({"ORCHESTRATOR_HOME": str(home)})
    spec = JobSpec.model_validate(
        {"name": "owned", "model": {"type": "cnn"}, "checkpoint": {"dir": str(ckpt)}}
    )
    record = LocalBackend(settings).create_record(spec, SubmitOptions())
    ckpt.mkdir()
    (ckpt / OWNER_FILE).write_text("cnn-666666\n")  # another job took the directory since
    final = Driver(settings, record.id, install_signal_handlers=False, metrics_port=None).run()
    assert final.state is JobState.FAILED
    assert final.message is not None and f"checkpoint.dir {ckpt} belongs to job cnn-666666" in final.message
    assert (ckpt / OWNER_FILE).read_text() == "cnn-666666\n"


def test_a_trainingjob_owns_its_checkpoint_dir_across_runs() -> None:
    from orchestrator.execution.driver import job_paths
    from orchestrator.settings import Settings
    from orchestrator.spec.models import JobSpec
    from orchestrator.store import JobRecord, JobState

    settings = Settings.from_env(
        {"ORCHESTRATOR_HOME": "/tmp/x", "ORCHESTRATOR_CHECKPOINT_OWNER": "ns-train-1234abcd"}
    )
    assert settings.checkpoint_owner == "ns-train-1234abcd"
    spec = JobSpec.model_validate({"name": "t", "model": {"type": "cnn"}})
    record = JobRecord(
        id="t-abcdef",
        name="t",
        backend="local",
        state=JobState.PENDING,
        spec=spec.model_dump(mode="json"),
        job_dir=Path("/tmp/x/jobs/t-abcdef"),
        created_at=0.0,
    )
    assert job_paths(record, spec)["job_id"] == "t-abcdef"
    assert job_paths(record, spec, owner=settings.checkpoint_owner)["job_id"] == "ns-train-1234abcd"


def test_an_empty_owner_file_is_claimed_by_exactly_one_job(tmp_path: Path) -> None:
    """A claim cut short between creating the owner file and writing the id: a check lets the job
    pass (its claim decides), a claim takes the directory, and a second claimer is refused."""
    directory = tmp_path / "ckpts"
    directory.mkdir()
    (directory / OWNER_FILE).write_text("")
    check_owner(directory, "job-a")  # a check only: no refusal naming "(empty)"
    check_owner(directory, "job-a", create=True)
    assert (directory / OWNER_FILE).read_text().strip() == "job-a"
    with pytest.raises(UsageError, match="belongs to job job-a"):
        check_owner(directory, "job-b", create=True)
    assert sorted(p.name for p in directory.iterdir()) == [OWNER_FILE]  # no temporary left


def test_a_checkpoint_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError) as info:
        check_owner(blocker / "ckpts", "job-a", create=True)
    assert "cannot create it or its owner file" in info.value.message
    assert "set checkpoint.dir to a directory this user can write" in str(info.value.fix)
    check_owner(blocker / "ckpts", "job-a")  # a check alone (a cluster's head) finds nothing to refuse
