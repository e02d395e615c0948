"""What the orchestrator writes is owner-only (the job store holds every spec, logs repeat it,
checkpoints hold the weights), and a Ray token others can read is pointed out, once."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.backends.base import SubmitOptions
from orchestrator.backends.local import LocalBackend
from orchestrator.execution import ray_local
from orchestrator.execution.frame import attach_job_log, detach_job_log
from orchestrator.private import private_dir, private_file, write_private_text
from orchestrator.runtime.checkpoints import OWNER_FILE, CheckpointManager
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The usual umask (022), under which a plain mkdir is 0755 and a file 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_job_store_and_a_jobs_files_are_owner_only(home: Path) -> None:
    backend = LocalBackend(Settings.from_env({"ORCHESTRATOR_HOME": str(home)}))
    spec = JobSpec.model_validate({"name": "private", "model": {"type": "cnn"}})
    record = backend.create_record(spec, SubmitOptions())
    assert mode(home) == 0o700
    assert mode(home / "jobs.db") == 0o600
    assert mode(home / "jobs") == 0o700 and mode(record.job_dir) == 0o700
    assert mode(record.job_dir / "spec.yaml") == 0o600
    assert "name: private" in (record.job_dir / "spec.yaml").read_text()
    handler = attach_job_log(record.job_dir / "driver.log")
    try:
        import logging

        logging.getLogger("orchestrator.test").info("a line with the spec")
    finally:
        detach_job_log(handler)
    assert mode(record.job_dir / "driver.log") == 0o600
    assert "a line with the spec" in (record.job_dir / "driver.log").read_text()
    for sidecar in home.glob("jobs.db-*"):  # SQLite's WAL and shared memory take the database's mode
        assert mode(sidecar) == 0o600, sidecar


def test_a_store_in_an_existing_directory_keeps_that_directorys_mode(tmp_path: Path) -> None:
    shared = tmp_path / "team"
    shared.mkdir(mode=0o755)
    store = JobStore(shared / "jobs.db")
    assert not (shared / "jobs.db").exists()  # the store opens lazily, on first use
    store.list()
    assert mode(shared) == 0o755  # made by the user: left as it is
    assert mode(shared / "jobs.db") == 0o600


def test_checkpoints_are_owner_only(tmp_path: Path) -> None:
    def write(directory: Path) -> None:
        (directory / "state.pt").write_bytes(b"weights")  # the writer's umask would give 0644

    info = CheckpointManager(tmp_path / "new" / "ckpts", owner="cnn-777777").save(write, step=3, epoch=1)
    assert mode(tmp_path / "new") == 0o700 and mode(tmp_path / "new" / "ckpts") == 0o700
    assert mode(info.path) == 0o700
    assert mode(info.path / "state.pt") == 0o600 and mode(info.path / "manifest.json") == 0o600
    assert mode(tmp_path / "new" / "ckpts" / OWNER_FILE) == 0o600


def test_the_helpers_create_owner_only_and_leave_contents_alone(tmp_path: Path) -> None:
    assert private_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    log = tmp_path / "a" / "log"
    log.write_text("kept\n")
    private_file(log)
    assert log.read_text() == "kept\n"
    write_private_text(tmp_path / "a" / "spec.yaml", "x: 1\n")
    assert mode(tmp_path / "a" / "spec.yaml") == 0o600


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "auth_token"
    path.write_text("secret-token\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # use_local_auth_token then changes nothing in Ray
    monkeypatch.setattr(ray_local, "_WARNED_TOKENS", set())
    return path


def test_a_token_others_can_read_is_warned_about_once(
    token: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(token, 0o644)
    ray_local.use_local_auth_token()
    ray_local.use_local_auth_token()
    err = capsys.readouterr().err
    assert err == (
        f"warning: the Ray auth token {token} can be read by other users (mode 0644); whoever reads it can "
        f"run code on your Ray cluster\n  fix: chmod 600 {token}\n"
    )
    assert "secret-token" not in err


@pytest.mark.parametrize("bits", [0o600, 0o400])
def test_an_owner_only_token_is_not_warned_about(
    token: Path, capsys: pytest.CaptureFixture[str], bits: int
) -> None:
    os.chmod(token, bits)
    ray_local.use_local_auth_token()
    assert capsys.readouterr().err == ""


def test_a_group_readable_token_is_warned_about(token: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(token, 0o640)
    assert ray_local.warn_if_token_readable(token) is True
    assert "(mode 0640)" in capsys.readouterr().err


def test_checkpoints_in_a_directory_shared_on_purpose_stay_readable_by_its_group(tmp_path: Path) -> None:
    def write(directory: Path) -> None:
        (directory / "state.pt").write_bytes(b"weights")

    shared = tmp_path / "team-ckpts"
    shared.mkdir()
    os.chmod(shared, 0o750)
    old = os.umask(0o027)
    try:
        info = CheckpointManager(shared, owner="cnn-888888").save(write, step=3, epoch=1)
    finally:
        os.umask(old)
    assert mode(shared) == 0o750
    assert mode(info.path) == 0o750 and mode(info.path / "state.pt") == 0o640
    assert mode(info.path / "manifest.json") == 0o640
