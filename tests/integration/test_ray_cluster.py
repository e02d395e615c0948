"""The ray backend on a real Ray head (`ray start --head`, 2 CPUs): submit, logs, list, the jobs API,
the cluster queue (gangs wait, no deadlock), priority preemption, cancel of queued and running jobs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

DASHBOARD = "http://127.0.0.1:8265"


def job_spec(tmp_path: Path, name: str, epochs: int, cpus: float = 0.5, **resources: Any) -> Path:
    spec = {
        "name": name,
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": cpus, **resources},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.002, "seed": 7},
        "checkpoint": {"every_epochs": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def env(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The submitting side: no RAY_ADDRESS, only the dashboard address of the cluster."""
    environ = cli_env(tmp_path_factory.mktemp("ray-cli-home"), None)
    environ["ORCHESTRATOR_RAY_ADDRESS"] = DASHBOARD
    return environ


def ray_cli(args: list[str], env: dict[str, str], check: bool = True) -> Any:
    return run_cli([*args[:1], "--backend", "ray", *args[1:]], env, check=check)


def status(job_id: str, env: dict[str, str]) -> dict[str, Any]:
    return last_json(ray_cli(["status", job_id, "-o", "json"], env).stdout)


def jobs_api() -> Any:
    from orchestrator.execution.ray_local import use_local_auth_token

    use_local_auth_token()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(DASHBOARD)


@pytest.fixture(scope="module")
def first_run(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = job_spec(tmp_path_factory.mktemp("first"), "on-cluster", epochs=6)
    proc = ray_cli(["submit", str(path), "-o", "json", "-q"], env)
    return last_json(proc.stdout)


@pytest.mark.smoke
def test_a_job_runs_on_the_cluster_and_reaches_the_accuracy(first_run: dict[str, Any]) -> None:
    assert first_run["state"] == "succeeded", first_run
    assert first_run["backend"] == "ray"
    assert first_run["metrics"]["val_accuracy"] >= 0.95
    assert first_run["dashboard_url"] == f"{DASHBOARD}/#/jobs/{first_run['job_id']}"


@pytest.mark.smoke
def test_the_ray_jobs_api_lists_it_under_its_name(first_run: dict[str, Any], env: dict[str, str]) -> None:
    info = jobs_api().get_job_info(first_run["job_id"])
    assert info.submission_id == first_run["job_id"]
    assert info.metadata["orchestrator_job_name"] == "on-cluster"
    assert str(info.status.value) == "SUCCEEDED"
    listed = last_json(ray_cli(["list", "-o", "json"], env).stdout)["jobs"]
    assert first_run["job_id"] in [j["job_id"] for j in listed]


def test_logs_come_from_the_cluster_and_the_entrypoint_used_the_clusters_python(
    first_run: dict[str, Any], env: dict[str, str]
) -> None:
    text = ray_cli(["logs", first_run["job_id"]], env).stdout
    assert "epoch 6 train_loss=" in text
    # the cluster runs Ray with this venv's Python; `python3` on the PATH is another interpreter
    assert f"Python {sys.executable}" in text
    assert "ORCHESTRATOR_EVENT" not in text  # the machine-readable lines stay out of people's logs
    assert ray_cli(["logs", first_run["job_id"], "--follow"], env).stdout == text  # ended: same lines


def test_a_user_entrypoint_travels_to_the_cluster_in_the_runtime_env(env: dict[str, str], tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_train.py").write_text((REPO / "examples" / "custom_train.py").read_text())
    spec = yaml.safe_load((REPO / "jobs" / "custom-entrypoint.yaml").read_text())
    spec.update(name="shipped", entrypoint=f"{code / 'my_train.py'}:train")
    spec["training"]["epochs"] = 3
    path = tmp_path / "shipped.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = last_json(ray_cli(["submit", str(path), "--dry-run", "-o", "json"], env).stdout)["submit_job"]
    assert plan["runtime_env"]["working_dir"] == str(code)
    result = last_json(ray_cli(["submit", str(path), "-o", "json", "-q"], env).stdout)
    assert result["state"] == "succeeded", result
    assert result["metrics"]["val_accuracy"] > 0.9 and result["metrics"]["epochs"] == 3
    assert "done after" in ray_cli(["logs", result["job_id"]], env).stdout  # the function's print()


def kill_queue_actor(ray_address: str) -> None:
    """ray.kill the cluster's queue actor for good (no restart), from a separate driver."""
    code = ("import ray; from orchestrator.execution.ray_local import use_local_auth_token; use_local_auth_token(); "
            f"ray.init(address={ray_address!r}, namespace='orchestrator', log_to_driver=False); "
            "ray.kill(ray.get_actor('orchestrator-queue'), no_restart=True)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True)


def test_two_gangs_that_each_need_the_cluster_queue_instead_of_deadlocking(
    env: dict[str, str], tmp_path: Path, ray_address: str
) -> None:
    # 2 workers x 0.75 CPUs = 1.5 of the head's 2 CPUs: the two gangs cannot run side by side.
    # gang-a trains long enough (600 short epochs) for the checks below to see it running
    a = ray_cli(["submit", str(job_spec(tmp_path, "gang-a", epochs=600, cpus=0.75)), "--detach", "-q"], env)
    job_a = a.stdout.strip().splitlines()[-1]
    wait_for(lambda: status(job_a, env)["state"] == "running", 300, what="gang-a to start")
    b = ray_cli(["submit", str(job_spec(tmp_path, "gang-b", epochs=2, cpus=0.75)), "--detach", "-q"], env)
    job_b = b.stdout.strip().splitlines()[-1]
    # (its first reason can be the queue's start-up wait: wait for the gang's own reason)
    waiting = wait_for(lambda: (s := status(job_b, env))["state"] == "pending"
                       and "cpus" in (s.get("message") or "") and s, 300, what="gang-b to be queued")
    assert waiting["message"].startswith("queued: needs 2 workers x 0.75 cpus as one gang"), waiting
    explained = last_json(run_cli(["explain", job_b, "--backend", "ray", "-o", "json"], env, check=True).stdout)
    assert explained["state"] == "waiting" and "2 workers x 0.75 cpus" in explained["gang"], explained
    queue = last_json(run_cli(["queue", "--backend", "ray", "-o", "json"], env, check=True).stdout)
    states = {row["job_id"]: row["state"] for row in queue["jobs"]}
    assert states.get(job_a) == "running" and states.get(job_b) == "waiting", queue
    # the queue actor dies: the drivers' next calls create a new one and rebuild the queue
    kill_queue_actor(ray_address)
    time.sleep(8)
    queue = last_json(run_cli(["queue", "--backend", "ray", "-o", "json"], env, check=True).stdout)
    states = {row["job_id"]: row["state"] for row in queue["jobs"]}
    assert states.get(job_a) == "running" and states.get(job_b) == "waiting", queue
    done_a = wait_for(lambda: (s := status(job_a, env))["state"] in ("succeeded", "failed") and s, 900,
                      what="gang-a to end")
    done_b = wait_for(lambda: (s := status(job_b, env))["state"] in ("succeeded", "failed") and s, 900,
                      what="gang-b to end")
    assert done_a["state"] == done_b["state"] == "succeeded"
    # b trained only after a had finished: never side by side
    assert done_b["attempts"][0]["started_at"] >= done_a["ended_at"] - 1.0


def test_high_priority_preempts_a_low_one_that_later_completes_from_its_checkpoint(
    env: dict[str, str], tmp_path: Path
) -> None:
    low = ray_cli(["submit", str(job_spec(tmp_path, "low", epochs=400, cpus=0.75, priority="low")), "--detach",
                   "-q"], env).stdout.strip().splitlines()[-1]
    wait_for(lambda: (status(low, env)["progress"].get("epoch") or 0) >= 2, 600, what="low to train 2 epochs")
    high = ray_cli(["submit", str(job_spec(tmp_path, "high", epochs=2, cpus=0.75, priority="high")), "--detach",
                    "-q"], env).stdout.strip().splitlines()[-1]
    done_high = wait_for(lambda: (s := status(high, env))["state"] in ("succeeded", "failed") and s, 900,
                         what="high to end")
    assert done_high["state"] == "succeeded"
    done_low = wait_for(lambda: (s := status(low, env))["state"] in ("succeeded", "failed") and s, 1200,
                        what="low to end")
    assert done_low["state"] == "succeeded", done_low
    assert done_low["preemptions"] == 1
    first, second = done_low["attempts"][0], done_low["attempts"][-1]
    assert second["restored_epoch"] and second["restored_epoch"] >= 2  # resumed from its checkpoint
    # the high job ran while low was stopped
    assert first["ended_at"] <= done_high["attempts"][0]["started_at"] + 1.0
    assert done_low["metrics"]["epochs"] == 400


def test_cancel_removes_a_queued_job_and_stops_a_running_one(env: dict[str, str], tmp_path: Path) -> None:
    running = ray_cli(["submit", str(job_spec(tmp_path, "keep-busy", epochs=5000, cpus=0.75)), "--detach", "-q"],
                      env).stdout.strip().splitlines()[-1]
    wait_for(lambda: (status(running, env)["progress"].get("epoch") or 0) >= 1, 600, what="keep-busy to train")
    queued = ray_cli(["submit", str(job_spec(tmp_path, "never-runs", epochs=2, cpus=0.75)), "--detach", "-q"],
                     env).stdout.strip().splitlines()[-1]
    wait_for(lambda: (status(queued, env).get("message") or "").startswith("queued:"), 300,
             what="never-runs to be queued")
    ray_cli(["cancel", queued], env)
    gone = wait_for(lambda: (s := status(queued, env))["state"] == "cancelled" and s, 300, what="queued cancel")
    assert gone["attempts"] == []  # it never started
    ray_cli(["cancel", running], env)
    stopped = wait_for(lambda: (s := status(running, env))["state"] in ("cancelled", "failed", "succeeded") and s,
                       300, what="running cancel")
    assert stopped["state"] == "cancelled", stopped
    assert "orchestrator resume" in stopped["message"] and stopped["checkpoint"]
    queue = last_json(run_cli(["queue", "--backend", "ray", "-o", "json"], env, check=True).stdout)
    assert not {running, queued} & {row["job_id"] for row in queue["jobs"]}


def test_missing_address_and_unknown_job_are_clear_errors(env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k != "ORCHESTRATOR_RAY_ADDRESS"}
    proc = run_cli(["status", "nope", "--backend", "ray"], bare)
    assert proc.returncode == 2 and "--address" in proc.stderr and "Traceback" not in proc.stderr
    proc = ray_cli(["status", "no-such-job"], env, check=False)
    assert proc.returncode != 0 and "no job 'no-such-job'" in proc.stderr and "Traceback" not in proc.stderr
