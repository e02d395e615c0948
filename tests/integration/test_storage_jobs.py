"""Jobs whose outputs live in object storage (the S3 API server), on the local backend with real Ray.

One job trains with ``storage: s3://...``; everything it produces is then read from the bucket
alone, from a fresh ``ORCHESTRATOR_HOME`` and a fresh cache, as another machine would:
``resume LOCATION`` continues it from its checkpoint in storage, ``predict``, ``logs`` and the
TensorBoard events come from there, and a new job starts from its weights (``init_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.conftest import assert_epoch_scalars, cli_env, last_json, run_cli, small_job

pytestmark = [pytest.mark.integration, pytest.mark.heavy, pytest.mark.smoke]


def env_for(home: Path, s3: Any, cache: Path) -> dict[str, str]:
    env = cli_env(home, None)
    env.update(s3.env, ORCHESTRATOR_CACHE_DIR=str(cache))
    return env


@pytest.fixture(scope="module")
def stored(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-epoch job with its storage in a fresh bucket, submitted from one home."""
    tmp = tmp_path_factory.mktemp("stored")
    bucket = s3.create_bucket()
    env = env_for(tmp / "home", s3, tmp / "cache")
    env["ORCHESTRATOR_STORAGE"] = f"{bucket}/jobs"  # the default storage of every job
    spec = small_job(tmp, 3, name="stored", checkpoint={"every_epochs": 1, "keep": 2})
    result = last_json(run_cli(["submit", str(spec), "-o", "json", "-q"], env, check=True).stdout)
    return {"result": result, "bucket": bucket, "env": env, "tmp": tmp,
            "location": f"{bucket}/jobs/{result['job_id']}"}


def test_everything_the_job_produced_is_in_the_bucket(stored: dict[str, Any], s3: Any) -> None:
    result, job_id = stored["result"], stored["result"]["job_id"]
    assert result["state"] == "succeeded", result
    assert result["metrics"]["val_accuracy"] >= 0.9
    assert result["storage"] == stored["location"]
    assert result["model_path"] == f"{stored['location']}/model/model.pt"
    assert result["checkpoint"] == f"{stored['location']}/checkpoints/ckpt-{3 * 20:010d}"
    keys = set(s3.keys(stored["bucket"], f"jobs/{job_id}/"))
    prefix = f"jobs/{job_id}/"
    for name in ("spec.yaml", "job.json", "result.json", "driver.log", "model/model.pt", "model/model.torchscript.pt",
                 "model/model.json", f"checkpoints/ckpt-{60:010d}/manifest.json",
                 f"checkpoints/ckpt-{60:010d}/state.pt"):
        assert prefix + name in keys, (name, sorted(keys))
    # keep: 2, the oldest checkpoint deleted from the bucket
    assert not any(k.startswith(f"{prefix}checkpoints/ckpt-{20:010d}/") for k in keys)
    assert any(k.startswith(f"{prefix}tensorboard/") and "tfevents" in k for k in keys)
    # the local job directory holds no checkpoints: node-local disk is only a cache
    assert not (Path(result["job_dir"]) / "checkpoints").exists()
    spec = yaml.safe_load(s3.client().get_object(Bucket=stored["bucket"].removeprefix("s3://"),
                                                 Key=prefix + "spec.yaml")["Body"].read())
    assert spec["storage"] == f"{stored['bucket']}/jobs"  # the resolved spec: the default applied


def test_predict_logs_and_tensorboard_from_a_fresh_home(stored: dict[str, Any], s3: Any, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    env = env_for(tmp_path / "fresh", s3, tmp_path / "fresh-cache")
    digits = load_digits()
    np.savez(tmp_path / "x.npz", x=digits.images[:100].astype("float32"))
    out = last_json(run_cli(["predict", stored["location"], "--input", str(tmp_path / "x.npz"), "-o", "json"], env,
                            check=True).stdout)
    same = last_json(run_cli(["predict", stored["result"]["job_id"], "--input", str(tmp_path / "x.npz"), "-o",
                              "json"], stored["env"], check=True).stdout)
    assert out["predictions"] == same["predictions"]  # the job's own record, its own home: same model
    assert np.mean(np.array(out["predictions"]) == digits.target[:100]) >= 0.9
    logs = run_cli(["logs", stored["location"]], env, check=True).stdout
    assert "epoch 3 train_loss=" in logs
    # TensorBoard's own reader on the events copied from storage
    import os

    from orchestrator.execution.outputs import JobOutputs

    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env, ORCHESTRATOR_CACHE_DIR=str(tmp_path / "tb-cache"))
    try:
        board = JobOutputs.at(stored["location"]).tensorboard_dir()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        os.environ.pop("ORCHESTRATOR_CACHE_DIR", None)
    assert str(board).startswith(str(tmp_path / "tb-cache"))
    assert_epoch_scalars(str(board), 3, stored["result"]["metrics"]["val_accuracy"])


def test_resume_from_the_storage_location_on_another_home(stored: dict[str, Any], s3: Any, tmp_path: Path) -> None:
    env = env_for(tmp_path / "other", s3, tmp_path / "other-cache")
    out = last_json(run_cli(["resume", stored["location"], "--epochs", "4", "-o", "json", "-q"], env,
                            check=True).stdout)
    assert out["job_id"] == stored["result"]["job_id"]
    assert out["state"] == "succeeded", out
    assert out["metrics"]["epochs"] == 4
    assert out["attempts"][-1]["restored_epoch"] == 3 and out["attempts"][-1]["restored_step"] == 60
    assert out["checkpoint"] == f"{stored['location']}/checkpoints/ckpt-{80:010d}"
    listed = last_json(run_cli(["list", "-o", "json"], env, check=True).stdout)["jobs"]
    assert [j["job_id"] for j in listed] == [stored["result"]["job_id"]]


def test_a_new_job_starts_from_the_stored_weights(stored: dict[str, Any], s3: Any, tmp_path: Path) -> None:
    env = env_for(tmp_path / "tune", s3, tmp_path / "tune-cache")
    source = json.loads(s3.client().get_object(
        Bucket=stored["bucket"].removeprefix("s3://"),
        Key=f"jobs/{stored['result']['job_id']}/result.json")["Body"].read())
    spec = small_job(tmp_path, 1, name="finetune", init_from=stored["location"])
    out = last_json(run_cli(["submit", str(spec), "-o", "json", "-q"], env, check=True).stdout)
    assert out["state"] == "succeeded", out
    logs = run_cli(["logs", out["job_id"]], env, check=True).stdout
    # the model rank 0 reports before training is the stored job's final model, bit for bit
    assert f"(checksum {source['model_checksum']})" in logs, logs[-3000:]
    assert f"initialised the model from {stored['location']}/model" in logs
    assert out["metrics"]["val_accuracy"] >= 0.9

    # another architecture is refused before a job exists, with the difference named
    bad = small_job(tmp_path, 1, name="badtune", init_from=stored["location"])
    data = yaml.safe_load(bad.read_text())
    data["model"]["conv_filters"] = [8, 16]
    bad.write_text(yaml.safe_dump(data))
    proc = run_cli(["submit", str(bad), "-o", "json", "-q"], env)
    assert proc.returncode == 2, proc.stderr
    assert "init_from" in proc.stderr and "conv_filters" in proc.stderr and "fix:" in proc.stderr
    listed = last_json(run_cli(["list", "-o", "json"], env, check=True).stdout)["jobs"]
    assert [j["job_id"] for j in listed] == [out["job_id"]]
