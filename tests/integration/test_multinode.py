"""A job on a real Ray cluster of three nodes that loses a whole node mid-training.

The cluster (:class:`orchestrator.testing.ray_nodes.LocalRayCluster`): a head with no CPUs (it
runs the job's driver and Ray Train's controller) and two worker nodes, ``node_b`` and
``node_c``, 2 CPUs each, each with its own temp dir, raylet, worker processes and node-local
scratch folder (the only cache the workers get). The job asks for 2 workers x 1 CPU spread over
the nodes, so one worker lands on each. When the job has committed a checkpoint in storage, the
test SIGKILLs every process of ``node_c`` (raylet first) and deletes its scratch folder: the node
is gone. The job must finish on ``node_b`` alone with its accuracy, restore the newest committed
checkpoint from storage (not from a disk that no longer exists), and leave its checkpoints, model,
events and record in storage, from where a fresh ``ORCHESTRATOR_HOME`` predicts with it.

Run twice: storage on the S3 API server (moto, a separate process, as object storage would be)
and on a shared path. Heavy: each run takes minutes on a 2-CPU machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.conftest import cli_env, last_json, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

EPOCHS = 8


@pytest.fixture(scope="module")
def cluster(s3: Any) -> Iterator[Any]:
    from orchestrator.testing.ray_nodes import LocalRayCluster

    base = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # short: Ray's socket paths are limited
    home = base / "head-home"  # the driver's job store, on the head node
    c = LocalRayCluster(base, env={**s3.env, "ORCHESTRATOR_HOME": str(home)}, head_port=6395, dashboard_port=8275)
    try:
        c.start_head(num_cpus=0)
        c.add_node("node_b", num_cpus=2)
        c.add_node("node_c", num_cpus=2)
        wait_for(lambda: len(c.node_ids()) == 3, 300, 2, "three alive nodes")
        yield c
    finally:
        c.shutdown()


def spec_file(tmp_path: Path, storage: str) -> Path:
    spec = {
        "name": "node-loss",
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 1, "placement": "spread"},
        "training": {"epochs": EPOCHS, "batch_size": 64, "learning_rate": 0.002, "seed": 7},
        "checkpoint": {"every_epochs": 1, "keep": 3},
        "failure": {"max_failures": 3, "backoff_s": 0},
        "storage": storage,
    }
    path = tmp_path / "node-loss.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def committed_checkpoints(storage: Any) -> list[int]:
    """Steps of the checkpoints whose manifest is in storage (what a restore may choose)."""
    steps = []
    for name in storage.list_dirs("checkpoints"):
        if name.startswith("ckpt-") and storage.is_file(f"checkpoints/{name}/manifest.json"):
            steps.append(int(name[len("ckpt-"):]))
    return sorted(steps)


def newest_committed(storage: Any) -> int | None:
    steps = committed_checkpoints(storage)
    return steps[-1] if steps and steps[-1] > 0 else None


def run_node_loss(cluster: Any, s3: Any, storage_root: str, tmp_path: Path, victim: str) -> dict[str, Any]:
    import subprocess
    import sys

    from orchestrator.storage import Storage

    if victim not in cluster.node_ids():  # a node of its own for each run (a killed one stays dead)
        cluster.add_node(victim, num_cpus=2)
        wait_for(lambda: victim in cluster.node_ids(), 300, 2, f"node {victim}")
    env = cli_env(tmp_path / "client-home", None)
    env.update(s3.env, ORCHESTRATOR_RAY_ADDRESS=cluster.dashboard)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(spec_file(tmp_path, storage_root)), "--backend", "ray",
         "-o", "json", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # the job id is the folder the driver creates under the storage root
    root = Storage.open(storage_root, env=s3.env)

    def running(value: Any) -> Any:
        if proc.poll() is not None:  # the submit ended before the node was killed: show why
            out, err = proc.communicate()
            raise AssertionError(f"submit exited {proc.returncode} early\nstdout:\n{out}\nstderr:\n{err}")
        return value

    job_id = wait_for(lambda: running(next(iter(root.list_dirs()), None)), 600, 2, "the job's storage folder")
    job = root.child(job_id)
    before = wait_for(lambda: running(newest_committed(job)), 900, 1, "a committed checkpoint")
    nodes = cluster.node_ids()
    killed = cluster.kill_node(victim)
    killed_at = time.time()
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    result = last_json(out)
    return {"result": result, "job": job, "job_id": job_id, "before": before, "nodes": nodes, "killed": killed,
            "killed_at": killed_at, "env": env, "victim": victim}


def check_recovered(run: dict[str, Any], s3: Any) -> None:
    result, job = run["result"], run["job"]
    assert run["killed"] >= 2  # the raylet and the worker processes of node_c
    assert result["state"] == "succeeded", result
    assert result["metrics"]["val_accuracy"] >= 0.95
    assert result["metrics"]["epochs"] == EPOCHS
    attempts = result["attempts"]
    assert len(attempts) >= 2, attempts
    first, last = attempts[0], attempts[-1]
    # one worker on each worker node at first; after the loss, both on node_b (the head has no CPUs)
    assert sorted(first["nodes"]) == sorted([run["nodes"]["node_b"], run["nodes"][run["victim"]]])
    assert set(last["nodes"]) == {run["nodes"]["node_b"]}
    # restored from the newest checkpoint committed before the kill (or a newer one): nothing
    # committed is lost, so at most the steps since that checkpoint (one interval) are trained again
    assert last["restored_step"] is not None and last["restored_step"] >= run["before"]
    # everything the job produced is in storage
    files = job.list_files()
    assert {"spec.yaml", "job.json", "result.json", "driver.log", "model/model.pt", "model/model.torchscript.pt",
            "model/model.json"} <= set(files), sorted(files)
    assert any(f.startswith("tensorboard/") and "tfevents" in f for f in files)
    steps = committed_checkpoints(job)
    assert 1 <= len(steps) <= 3 and steps[-1] > run["before"]  # keep: 3, the final epoch's included
    assert result["model_path"] == f"{job.uri}/model/model.pt"
    stored = json.loads(job.read_text("result.json"))
    assert stored["metrics"]["val_accuracy"] == result["metrics"]["val_accuracy"]
    log_text = job.read_text("driver.log")
    assert f"attempt {len(attempts)} started (restored epoch {last['restored_epoch']}, step {last['restored_step']})" \
        in log_text


def check_predict_from_fresh_home(run: dict[str, Any], tmp_path: Path) -> None:
    """`orchestrator predict LOCATION` on another machine's view: a new ORCHESTRATOR_HOME, a new cache."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "x.npz", x=digits.images[:200].astype("float32"))
    env = cli_env(tmp_path / "fresh-home", None)
    env.update({k: v for k, v in run["env"].items() if k.startswith("AWS_")},
               ORCHESTRATOR_CACHE_DIR=str(tmp_path / "fresh-cache"))
    out = last_json(run_cli(["predict", run["job"].uri, "--input", str(tmp_path / "x.npz"), "-o", "json"], env,
                            check=True).stdout)
    assert out["samples"] == 200
    # the job's own model, loaded directly from the files in storage, predicts the same
    import torch

    local = tmp_path / "model"
    run["job"].get_dir("model", local)  # the test process reads storage with the job's credentials
    scripted = torch.jit.load(str(local / "model.torchscript.pt"))
    with torch.no_grad():
        own = scripted(torch.from_numpy(digits.images[:200, None].astype(np.float32))).argmax(1).numpy()
    assert out["predictions"] == [int(v) for v in own]
    assert np.mean(np.array(out["predictions"]) == digits.target[:200]) >= 0.95
    # logs and the record come from storage too
    logs = run_cli(["logs", run["job"].uri], env, check=True).stdout
    assert f"job {run['job_id']}" in logs


def test_a_gang_larger_than_any_node_spans_the_nodes(cluster: Any, s3: Any, tmp_path: Path) -> None:
    """Two 2-CPU workers on two 2-CPU nodes: the cluster's queue once made each node a pool of its
    own and refused this gang ("the job can never start on this cluster"); Ray places it across."""
    bucket = s3.create_bucket()
    spec = yaml.safe_load(spec_file(tmp_path, f"{bucket}/gang").read_text())
    spec.update(name="wide-gang", resources={"workers": 2, "cpus_per_worker": 2})
    spec["training"]["epochs"] = 1
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = cli_env(tmp_path / "client-home", None)
    env.update(s3.env, ORCHESTRATOR_RAY_ADDRESS=cluster.dashboard)
    out = last_json(run_cli(["submit", str(path), "--backend", "ray", "-o", "json", "-q"], env, check=True).stdout)
    assert out["state"] == "succeeded", out
    nodes = cluster.node_ids()
    assert sorted(out["attempts"][0]["nodes"]) == sorted([nodes["node_b"], nodes["node_c"]])


def test_a_job_survives_the_loss_of_a_node_with_s3_storage(cluster: Any, s3: Any, tmp_path: Path) -> None:
    bucket = s3.create_bucket()
    run = run_node_loss(cluster, s3, f"{bucket}/runs", tmp_path, victim="node_c")
    check_recovered(run, s3)
    keys = s3.keys(bucket, f"runs/{run['job_id']}/checkpoints/")
    assert any(k.endswith("/manifest.json") for k in keys)  # in the bucket itself, as S3 lists it
    check_predict_from_fresh_home(run, tmp_path)


def test_a_job_survives_the_loss_of_a_node_with_a_shared_path(cluster: Any, s3: Any, tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="shared-", dir=cluster.base))
    run = run_node_loss(cluster, s3, str(shared), tmp_path, victim="node_d")
    check_recovered(run, s3)
    assert (shared / run["job_id"] / "model" / "model.pt").is_file()
    check_predict_from_fresh_home(run, tmp_path)
