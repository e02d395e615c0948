"""Integration fixtures: one real Ray instance shared by the whole session, CLI runners.

Starting Ray costs seconds (minutes on a contended machine), so tests share one head started
with `ray start --head` (through orchestrator.execution.ray_startup, which survives a slow machine's
start-up); jobs join it through Ray's RAY_ADDRESS convention. The one test that
checks the zero-set-up default path (an embedded Ray started by `submit` itself) runs without
RAY_ADDRESS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.execution.ray_local import IDLE_WORKER_KEEP_MS
from tests.conftest import REPO

pytestmark = pytest.mark.integration

RAY_BIN = Path(sys.executable).parent / "ray"


def _ray_stop() -> None:
    subprocess.run([str(RAY_BIN), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a Ray head (2 CPUs, dashboard on 127.0.0.1) running for the whole session.

    ``ORCHESTRATOR_TEST_RAY_ADDRESS`` names a head that is already running instead (e.g. one
    started with ``ray start --head --port 6391 --temp-dir ...`` next to another one): the tests
    use it and leave it running (``ray stop`` would stop every Ray on the machine).
    """
    given = os.environ.get("ORCHESTRATOR_TEST_RAY_ADDRESS")
    if given:
        yield given
        return
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "600",
           "RAY_idle_worker_killing_time_threshold_ms": str(IDLE_WORKER_KEEP_MS)}  # as an embedded Ray
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable, "-m", "orchestrator.execution.ray_startup", "start", "--head", "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
    ]
    last = None
    for _ in range(3):  # the head can time out waiting for its agents on a very busy machine
        last = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if last.returncode == 0:
            break
        _ray_stop()
    assert last is not None and last.returncode == 0, last.stdout + last.stderr
    address = "127.0.0.1:6379"
    for line in re.sub(r"\x1b\[[0-9;]*m", "", last.stdout).splitlines():  # colour codes where TERM is set
        if "--address=" in line:
            address = line.split("--address=")[1].split()[0].strip("'\"")
            break
    yield address
    _ray_stop()


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """An S3 API server (moto) for one test module, in a process of its own: Ray workers reach it over HTTP."""
    pytest.importorskip("moto.server", reason="the S3 test server needs moto[server] (the test extra)")
    from orchestrator.testing.s3 import start_moto_process

    server = start_moto_process()
    yield server
    server.stop()


def cli_env(home: Path, ray_address: str | None) -> dict[str, str]:
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 1800, check: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output"
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def wait_for(predicate: Any, timeout: float, interval: float = 1.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_epoch_scalars(tensorboard_dir: str, epochs: int, val_accuracy: float) -> None:
    """The job's event files, read with TensorBoard's own reader: every epoch tag, one point per
    epoch, the last validation accuracy equal to the job's, the training loss decreased."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tensorboard_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss/train", "loss/validation", "accuracy/train", "accuracy/validation",
                "optimizer/learning_rate", "throughput/samples_per_second"):
        assert tag in tags, tags
    val = acc.Scalars("accuracy/validation")
    assert [e.step for e in val] == list(range(1, epochs + 1))
    assert abs(val[-1].value - val_accuracy) <= 1e-6
    losses = [e.value for e in acc.Scalars("loss/train")]
    assert losses[-1] < losses[0]


def small_job(tmp_path: Path, epochs: int, **extra: Any) -> Path:
    """A small 2-worker cnn job spec file (``extra``: top-level fields, e.g. ``framework``)."""
    import yaml

    spec = {
        "name": extra.pop("name", "small"),
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.002, "seed": 7},
        **extra,
    }
    path = tmp_path / f"{spec['name']}-{epochs}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
