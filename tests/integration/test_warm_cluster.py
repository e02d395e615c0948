"""The warm local cluster end to end: `orchestrator up`, jobs on its long-lived workers, a worker
killed mid-job and recovered, `down`, and the idle stop. Real Ray, real processes, no RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.execution.cluster import group_alive, process_alive
from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, run_cli, small_job, wait_for

pytestmark = pytest.mark.integration

CNN = str(REPO / "jobs" / "cnn.yaml")


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A warm cluster (2 primed workers, no idle stop) for the module; stopped at the end."""
    home = tmp_path_factory.mktemp("warm-home")
    env = cli_env(home, ray_address=None)
    proc = run_cli(["up", "--idle-timeout", "0", "--warm-workers", "2", "--output", "json"], env, timeout=900,
                   check=True)
    info = last_json(proc.stdout)
    yield {"home": home, "env": env, "up": info}
    run_cli(["down", "--force"], env, timeout=120)


def _submit(spec: str | Path, env: dict[str, str]) -> dict[str, Any]:
    proc = run_cli(["submit", str(spec), "--output", "json", "--quiet"], env, timeout=900, check=True)
    return last_json(proc.stdout)


def test_up_records_the_cluster_and_primes_a_gang(warm: dict[str, Any]) -> None:
    info = warm["up"]
    record = json.loads((warm["home"] / "cluster.json").read_text())
    assert record["address"] == info["address"] and record["pgid"] == info["pgid"]
    assert group_alive(record["pgid"]) and process_alive(record["watcher_pid"])
    assert info["pool"]["idle_workers"] == 2 and info["pool"]["idle_gangs"] == {"2": 1}
    again = last_json(run_cli(["up", "--output", "json"], warm["env"], check=True).stdout)
    assert again["already_up"] is True and again["address"] == info["address"]  # never a second head


def test_jobs_run_on_the_same_warm_workers(warm: dict[str, Any]) -> None:
    primed = warm["up"]["pool"]["idle_pids"][0]
    first, second = _submit(CNN, warm["env"]), _submit(CNN, warm["env"])
    for job in (first, second):
        assert job["state"] == "succeeded"
        assert job["metrics"]["val_accuracy"] >= 0.95
        assert "warm workers" in job["cluster"] and warm["up"]["address"] in job["cluster"]
        assert job["attempts"][0]["pid"] == primed[0]  # rank 0 is the process `up` started and primed
    # the same data, seed and workers: a warm gang trains exactly what a fresh one does
    assert first["model_checksum"] == second["model_checksum"]
    status = run_cli(["status", second["job_id"]], warm["env"], check=True).stdout
    assert "warm cluster at" in status


def test_a_killed_warm_worker_is_replaced_and_the_job_resumes(warm: dict[str, Any], tmp_path: Path) -> None:
    spec = small_job(tmp_path, 6, name="warm-kill",
                     failure={"max_failures": 2, "backoff_s": 0},
                     testing={"inject": [{"kind": "sigkill", "rank": 1, "at_step": 50},
                                         {"kind": "exception", "rank": 0, "at_step": 90, "attempt": 2}]})
    job = _submit(spec, warm["env"])
    assert job["state"] == "succeeded"
    attempts = job["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["restored_step"] for a in attempts] == [None, 40, 80]  # checkpoints every 20 steps
    assert attempts[0]["failure"] and attempts[1]["failure"] and "injected exception" in attempts[1]["failure"]
    assert len({a["pid"] for a in attempts}) == 3  # each restart ran on a new gang
    assert job["metrics"]["val_accuracy"] >= 0.9
    info = last_json(run_cli(["up", "--output", "json"], warm["env"], check=True).stdout)
    assert info["pool"]["idle_gangs"] == {"2": 1}  # the failed gangs are gone, the healthy one kept
    assert info["pool"]["idle_pids"][0][0] == attempts[2]["pid"]


def test_a_warm_worker_that_died_while_idle_costs_no_attempt(warm: dict[str, Any], tmp_path: Path) -> None:
    import signal

    idle = last_json(run_cli(["up", "--output", "json"], warm["env"], check=True).stdout)["pool"]["idle_pids"][0]
    os.kill(idle[1], signal.SIGKILL)  # as the OOM killer would
    wait_for(lambda: not process_alive(idle[1]), 30, what="the killed worker to exit")
    job = _submit(small_job(tmp_path, 2, name="after-idle-death"), warm["env"])  # failure.max_failures: 0
    assert job["state"] == "succeeded" and len(job["attempts"]) == 1
    assert job["attempts"][0]["pid"] not in idle  # a new gang, not the broken one
    assert "warm workers" in job["cluster"]


def test_a_cancelled_warm_job_gives_its_gang_back_and_resumes(warm: dict[str, Any], tmp_path: Path) -> None:
    spec = small_job(tmp_path, 400, name="warm-cancel")
    job_id = last_json(run_cli(["submit", str(spec), "--detach", "--output", "json", "--quiet"], warm["env"],
                               check=True).stdout)["job_id"]

    def status() -> dict[str, Any]:
        return last_json(run_cli(["status", job_id, "--output", "json"], warm["env"], check=True).stdout)

    wait_for(lambda: ((status().get("progress") or {}).get("epoch") or 0) >= 2, 300, what="two epochs trained")
    run_cli(["cancel", job_id], warm["env"], check=True)
    cancelled = wait_for(lambda: (s := status())["state"] == "cancelled" and s, 300, what="the job to cancel")
    stopped_at = cancelled["progress"]["epoch"]
    pid = cancelled["attempts"][0]["pid"]
    pool = last_json(run_cli(["up", "--output", "json"], warm["env"], check=True).stdout)["pool"]
    assert pid in pool["idle_pids"][0]  # a graceful stop leaves the gang healthy: back in the pool
    resumed = last_json(run_cli(["resume", job_id, "--epochs", str(stopped_at + 2), "--output", "json", "--quiet"],
                                warm["env"], timeout=900, check=True).stdout)
    assert resumed["state"] == "succeeded" and resumed["progress"]["epoch"] == stopped_at + 2
    assert resumed["attempts"][-1]["restored_epoch"] is not None
    assert resumed["attempts"][-1]["restored_epoch"] >= stopped_at  # the cancel's own checkpoint, no epoch lost
    assert resumed["attempts"][-1]["pid"] == pid


def test_down_stops_every_process_of_the_cluster(warm: dict[str, Any]) -> None:
    record = json.loads((warm["home"] / "cluster.json").read_text())
    idle_pids = last_json(run_cli(["up", "--output", "json"], warm["env"], check=True).stdout)["pool"]["idle_pids"]
    proc = run_cli(["down", "--output", "json"], warm["env"], timeout=120, check=True)
    out = last_json(proc.stdout)
    assert out["stopped"] is True and out["address"] == record["address"]
    assert not (warm["home"] / "cluster.json").exists()
    wait_for(lambda: not group_alive(record["pgid"]), 30, what="the cluster's process group to exit")
    # the workers run in sessions of their own: down finds them as the head's descendants
    worker_pids = [pid for gang in idle_pids for pid in gang]
    assert worker_pids and not any(process_alive(pid) for pid in worker_pids)
    assert not process_alive(record["watcher_pid"])
    again = run_cli(["down"], warm["env"], check=True)
    assert "no warm cluster is up" in again.stdout


def test_an_idle_cluster_stops_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home, ray_address=None)
    info = last_json(run_cli(["up", "--idle-timeout", "10s", "--warm-workers", "0", "--output", "json"], env,
                             timeout=900, check=True).stdout)
    assert info["idle_timeout_s"] == 10
    started = time.time()
    wait_for(lambda: not (home / "cluster.json").exists(), 180, what="the idle cluster to stop itself")
    assert time.time() - started >= 5  # not at once: after its idle timeout
    wait_for(lambda: not group_alive(info["pgid"]), 30, what="the cluster's processes to exit")
    assert "idle for" in (home / "cluster.log").read_text()
