"""Fault recovery with real failures injected into real Ray Train workers.

The job checkpoints every 5 steps; a failure at step 33 (mid-epoch 2 of 3, 20 steps an epoch)
must restore step 30, redo at most 5 steps, and end with the same validation accuracy as an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.store import JobState, JobStore
from tests.integration.conftest import cli_env, last_json, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

EVERY = 5
FAIL_AT = 33


def spec_file(tmp_path: Path, name: str, **extra: Any) -> Path:
    spec = {
        "name": name,
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "training": {"epochs": 3, "batch_size": 64, "learning_rate": 0.002, "seed": 11},
        "checkpoint": {"every_epochs": 1, "every_steps": EVERY, "keep": 3},
        "failure": {"max_failures": 2, "backoff_s": 0.5, "hang_timeout_s": 30},
    }
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def env(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("fault-home"), ray_address)


@pytest.fixture(scope="module")
def baseline(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same job without failures."""
    path = spec_file(tmp_path_factory.mktemp("base"), "baseline")
    return last_json(run_cli(["submit", str(path), "-o", "json", "-q"], env, check=True).stdout)


@pytest.mark.parametrize(("kind", "rank"), [
    ("exception", 0),
    pytest.param("sigkill", 1, marks=pytest.mark.smoke),  # `make test`: a real SIGKILL, recovered
    ("hang", 1),
])
def test_job_survives_an_injected_failure(
    kind: str, rank: int, env: dict[str, str], baseline: dict[str, Any], tmp_path: Path
) -> None:
    path = spec_file(tmp_path, f"fail-{kind}")
    proc = run_cli(["submit", str(path), "-o", "json", "-q",
                    "--inject-failure", f"kind={kind},rank={rank},at_step={FAIL_AT}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["state"] == "succeeded"
    assert result["metrics"]["epochs"] == 3 and result["metrics"]["val_accuracy"] >= 0.9
    first, second = result["attempts"]
    assert f"injected {kind} on rank {rank}" in first["failure"]
    assert second["restored_step"] == FAIL_AT // EVERY * EVERY  # the last checkpoint before the failure
    assert second["restored_epoch"] == 2
    assert 0 <= second["lost_steps"] <= EVERY
    assert second["recovery_seconds"] > 0
    assert abs(result["metrics"]["val_accuracy"] - baseline["metrics"]["val_accuracy"]) <= 0.01
    # exact mid-epoch resume: the very same final weights as the uninterrupted run
    assert result["model_checksum"] == baseline["model_checksum"]
    status = last_json(run_cli(["status", result["job_id"], "-o", "json"], env, check=True).stdout)
    assert [a["attempt"] for a in status["attempts"]] == [1, 2]


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(env: dict[str, str], tmp_path: Path) -> None:
    path = spec_file(tmp_path, "corrupt", training={"epochs": 2}, checkpoint={"every_steps": None})
    first = last_json(run_cli(["submit", str(path), "-o", "json", "-q"], env, check=True).stdout)
    newest = Path(first["checkpoint"])
    assert newest.name == "ckpt-0000000040"
    state = newest / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle
    state.write_bytes(bytes(data))
    resumed = last_json(run_cli(["resume", first["job_id"], "--epochs", "3", "-o", "json", "-q"], env,
                                check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["attempts"][-1]["restored_step"] == 20  # ckpt-40 was skipped
    logs = run_cli(["logs", first["job_id"]], env, check=True).stdout
    assert "skipped checkpoint" in logs and "sha256" in logs


def test_killed_driver_is_detected_and_the_job_resumes(env: dict[str, str], tmp_path: Path) -> None:
    path = spec_file(tmp_path, "orphan", training={"epochs": 100})
    job_id = run_cli(["submit", str(path), "--detach"], env, check=True).stdout.strip().splitlines()[-1]
    store = JobStore(Path(env["ORCHESTRATOR_HOME"]) / "jobs.db")
    wait_for(lambda: (store.get(job_id).progress.get("epoch") or 0) >= 1, 900, what="epoch 1")
    pid = store.get(job_id).driver_pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    status = wait_for(
        lambda: (s := last_json(run_cli(["status", job_id, "-o", "json"], env, check=True).stdout))["state"]
        != "running" and s,
        60, what="status to leave running",
    )
    assert status["state"] == "interrupted"
    assert "orchestrator resume" in status["message"]
    time.sleep(2)
    last_epoch = status["progress"]["epoch"]
    resumed = last_json(run_cli(["resume", job_id, "--epochs", str(last_epoch + 1), "-o", "json", "-q"], env,
                                check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["attempts"][-1]["restored_epoch"] >= last_epoch
    assert store.get(job_id).state == JobState.SUCCEEDED


def test_no_failure_budget_fails_with_the_reason(env: dict[str, str], tmp_path: Path) -> None:
    path = spec_file(tmp_path, "fragile", failure={"max_failures": 0})
    proc = run_cli(["submit", str(path), "-o", "json", "-q", "--inject-failure",
                    "kind=exception,rank=1,at_step=7"], env)
    assert proc.returncode == 1
    result = last_json(proc.stdout)
    assert result["state"] == "failed"
    assert "injected exception on rank 1" in result["message"]
    assert "max_failures = 0" in result["message"]
    text = run_cli(["status", result["job_id"]], env, check=True).stdout
    assert "failed" in text and "injected exception on rank 1" in text


def test_shards_json_still_covers_a_resumed_epoch(env: dict[str, str], baseline: dict[str, Any]) -> None:
    shards = json.loads((Path(baseline["job_dir"]) / "shards.json").read_text())
    assert set(shards["0"]["2"]).isdisjoint(shards["1"]["2"])
