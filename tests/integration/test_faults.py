"""Faults the other integration tests do not cause: the Ray head dying under a running job, the disk
filling up while a checkpoint is written, and `orchestrator tune` (the sweep driver) killed with SIGKILL.

Each ends in a state a user can act on: the job or sweep says what happened (failed, with the reason;
interrupted) and `orchestrator resume` continues it from the last complete checkpoint.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.runtime.checkpoints import CheckpointManager
from orchestrator.store import JobState, JobStore
from tests.conftest import REPO, mounted_tmpfs
from tests.integration.conftest import cli_env, last_json, run_cli, wait_for

pytestmark = pytest.mark.integration


def long_job(tmp_path: Path, name: str, **extra: Any) -> Path:
    """A small 2-worker cnn job with far more epochs (about half a second each) than a test waits for:
    it checkpoints every epoch and is interrupted by the fault long before it ends."""
    spec: dict[str, Any] = {
        "name": name,
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "training": {"epochs": 1000, "batch_size": 64, "learning_rate": 0.002, "seed": 7},
        "checkpoint": {"every_epochs": 1},
    }
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit_in_background(spec: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(spec), "-o", "json", "-q"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_of(home: Path) -> Any:
    records = JobStore(home / "jobs.db").list()
    return records[0] if records else None


def first_checkpoint(home: Path, checkpoint_dir: Path | None = None) -> Any:
    """Wait for the job's first complete checkpoint; its record then."""
    def found() -> Any:
        record = job_of(home)
        if record is None:
            return None
        directory = checkpoint_dir or record.job_dir / "checkpoints"
        return record if CheckpointManager(directory).list() else None

    return wait_for(found, timeout=900, interval=0.2, what="the job's first checkpoint")


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)  # a hang guard: the fault must end the job
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- the Ray head dies ----------------------------------------------------------------------------

RAY_BIN = Path(sys.executable).parent / "ray"


class PrivateHead:
    """A `ray start --head` of this test's own (not the session's shared one), on free ports and in a
    short temp dir of its own, so that killing it touches nothing else (`ray stop` would stop every
    Ray on the machine)."""

    def __init__(self) -> None:
        from orchestrator.execution.ray_startup import free_port

        # Ray's socket paths must stay under ~107 characters: pytest's tmp_path is too long
        self.temp_dir = tempfile.mkdtemp(prefix="orh-", dir="/tmp")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        last = None
        for _ in range(3):  # a very busy machine can miss Ray's start-up deadlines; a port can be taken
            self.port = free_port()  # fresh ports each try: one taken since it was chosen fails the start
            cmd = [sys.executable, "-m", "orchestrator.execution.ray_startup", "start", "--head",
                   f"--port={self.port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                   "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--dashboard-port={free_port()}"]
            last = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if last.returncode == 0:
                break
            self.kill()
        assert last is not None and last.returncode == 0, last.stdout + last.stderr
        self.address = f"127.0.0.1:{self.port}"

    def processes(self) -> list[Any]:
        """Every process of this head: those naming its temp dir (gcs_server, raylet, the monitors,
        the dashboard and its agents) and all their children (the raylet's workers)."""
        import psutil

        found: dict[int, Any] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    found[proc.pid] = proc
                    found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.Error:
                continue
        return list(found.values())

    def kill(self) -> int:
        """SIGKILL every process of the head at once (a node lost, not a clean `ray stop`)."""
        import psutil

        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        return len(procs)


@pytest.fixture
def private_heads() -> Iterator[list[PrivateHead]]:
    heads: list[PrivateHead] = []
    yield heads
    for head in heads:
        head.kill()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.mark.smoke
def test_the_ray_head_dying_fails_the_job_with_the_reason_and_it_resumes(
    tmp_path: Path, private_heads: list[PrivateHead]
) -> None:
    private_heads.append(PrivateHead())
    head = private_heads[0]
    home = tmp_path / "home"
    env = cli_env(home, head.address)
    proc = submit_in_background(long_job(tmp_path, "head-loss"), env)
    record = first_checkpoint(home)
    assert head.kill() >= 2  # at least its gcs_server and raylet
    stdout, stderr = finish(proc)

    assert proc.returncode == 1, stderr[-3000:]
    result = last_json(stdout)
    assert result["state"] == "failed"
    message = result["message"]
    # Ray names the head by the machine's address, the port is the one the test gave it
    assert re.search(rf"the Ray head at [0-9.]+:{head.port} went away while the job ran", message), message
    assert f"`orchestrator resume {record.id}`" in message
    assert "Traceback" not in stderr
    # the last complete checkpoint is intact, named in the message and in the record
    manager = CheckpointManager(record.job_dir / "checkpoints")
    newest = manager.latest_valid()
    assert newest.checkpoint is not None and not newest.skipped
    assert result["checkpoint"] == str(newest.checkpoint.path)
    assert f"latest checkpoint {newest.checkpoint.path}" in message
    stored = JobStore(home / "jobs.db").get(record.id)
    assert stored.state == JobState.FAILED and stored.message == message

    # Ray comes back (a new head); the job continues from that checkpoint
    private_heads.append(PrivateHead())
    epochs = newest.checkpoint.epoch + 1
    resumed = last_json(run_cli(["resume", record.id, "--epochs", str(epochs), "-o", "json", "-q"],
                                cli_env(home, private_heads[1].address), timeout=900, check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["attempts"][-1]["restored_step"] == newest.checkpoint.step
    assert resumed["attempts"][-1]["restored_epoch"] == newest.checkpoint.epoch
    assert resumed["metrics"]["epochs"] == epochs


# -- the disk fills up ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB file system (tmpfs) for checkpoint.dir: writing past its end fails with ENOSPC.

    Mounting needs root (CAP_SYS_ADMIN), which CI's container has; elsewhere the test is skipped.
    """
    with mounted_tmpfs(tmp_path / "small-disk", "size=16m,mode=0700") as mount:
        yield mount


def fill(mount: Path) -> Path:
    """Write a file until the file system is full; the file (delete it to free the space)."""
    filler = mount / "filler"
    block = b"\0" * (1 << 16)
    with filler.open("wb", buffering=0) as fh:
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        while True:  # the last bytes, in smaller pieces
            try:
                fh.write(b"\0" * 512)
            except OSError:
                break
    return filler


@pytest.mark.smoke
def test_a_full_disk_fails_the_job_clearly_and_keeps_the_last_checkpoint(
    ray_address: str, tmp_path: Path, small_disk: Path
) -> None:
    home = tmp_path / "home"
    env = cli_env(home, ray_address)
    # keep: 1000 so pruning never frees space; a restart could not help, so none is spent
    spec = long_job(tmp_path, "disk-full", checkpoint={"dir": str(small_disk), "keep": 1000},
                    failure={"max_failures": 2, "backoff_s": 5})
    proc = submit_in_background(spec, env)
    record = first_checkpoint(home, small_disk)
    filler = fill(small_disk)
    stdout, stderr = finish(proc)

    assert proc.returncode == 1, stderr[-3000:]
    result = last_json(stdout)
    assert result["state"] == "failed"
    message = result["message"]
    assert "training stopped without a restart" in message, message
    assert "no space left on device writing checkpoint step" in message and str(small_disk) in message
    assert f"fix: free space in {small_disk} or set checkpoint.dir" in message
    assert len(result["attempts"]) == 1  # failure.max_failures (2) was not spent on it
    assert "Traceback" not in stderr
    # no half-written checkpoint; every checkpoint there is complete and verifies
    leftovers = [p.name for p in small_disk.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
    manager = CheckpointManager(small_disk)
    newest = manager.latest_valid()
    assert newest.checkpoint is not None and not newest.skipped
    assert result["checkpoint"] == str(newest.checkpoint.path)
    steps = [c.step for c in manager.list()]
    assert steps == sorted(steps, reverse=True) and steps[0] == newest.checkpoint.step
    for info in manager.list():
        manager.verify(info.path)

    # space freed: the job resumes from that checkpoint
    filler.unlink()
    epochs = newest.checkpoint.epoch + 1
    resumed = last_json(run_cli(["resume", record.id, "--epochs", str(epochs), "-o", "json", "-q"], env,
                                timeout=900, check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["attempts"][-1]["restored_step"] == newest.checkpoint.step
    assert resumed["metrics"]["epochs"] == epochs


# -- the sweep driver is killed -------------------------------------------------------------------

@pytest.mark.smoke
def test_a_sweep_whose_driver_is_killed_resumes_keeping_its_finished_trials(
    ray_address: str, tmp_path: Path
) -> None:
    from tests.integration.test_sweeps import RESUME_SWEEP, _interrupt_sweep, one_done_one_halfway

    home = tmp_path / "home"
    env = cli_env(home, ray_address)
    spec = tmp_path / "ddp-sweep.yaml"
    spec.write_text(RESUME_SWEEP)

    record, proc, _, _ = _interrupt_sweep(spec, env, one_done_one_halfway, lambda proc, record: proc.kill(),
                                          "one finished trial, one halfway")
    assert proc.returncode == -signal.SIGKILL
    before = {t["trial_id"]: t for t in record.progress["trials"]}
    finished_before = {tid for tid, t in before.items() if t["state"] == "succeeded"}
    assert finished_before

    status = last_json(run_cli(["status", record.id, "-o", "json"], env, check=True).stdout)
    assert status["state"] == "interrupted"
    assert "orchestrator resume" in status["message"]

    time.sleep(2)  # Ray reaps the dead driver's trial actors
    resumed = last_json(run_cli(["resume", record.id, "-q", "-o", "json"], env, timeout=1200, check=True).stdout)
    assert resumed["state"] == "succeeded"
    trials = {t["trial_id"]: t for t in resumed["leaderboard"]}
    assert len(trials) == 2  # the same two trials, none added, none lost
    assert all(t["state"] == "succeeded" and t["epochs_trained"] == 5 for t in trials.values())
    for tid in finished_before:  # a finished trial was kept, not trained again
        assert trials[tid]["starts"] == 1
        assert trials[tid]["final"] == before[tid]["final"]
