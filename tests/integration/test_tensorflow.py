"""TensorFlow jobs through Ray Train's TensorflowTrainer with MultiWorkerMirroredStrategy (2 workers).

The same spec, CLI, JSON, checkpoints and resume as torch jobs: jobs/cnn-tf.yaml reaches 95%,
each worker trains its own shard, TensorBoard has the torch path's tags, the SavedModel predicts
what the Keras model does; the rnn, the Keras example and the gan train; a resume continues at the
next epoch; an injected failure is recovered from the last checkpoint; `compare` runs both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.conftest import assert_epoch_scalars, cli_env, last_json, run_cli, small_job

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
pytest.importorskip("tf_keras", reason="the tensorflow extra is not installed (pip install 'train-orchestrator[tensorflow]')")


@pytest.fixture(scope="module")
def cnn_tf(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = cli_env(tmp_path_factory.mktemp("tf-home"), ray_address)
    proc = run_cli(["submit", str(REPO / "jobs" / "cnn-tf.yaml"), "-o", "json", "-q"], env, check=True)
    return {"env": env, "result": last_json(proc.stdout)}


def test_the_tensorflow_cnn_reaches_95_percent_with_two_mwms_workers(cnn_tf: dict[str, Any]) -> None:
    result = cnn_tf["result"]
    assert result["state"] == "succeeded"
    assert result["metrics"]["val_accuracy"] >= 0.95, result["metrics"]
    assert result["metrics"]["test_accuracy"] >= 0.9 and result["metrics"]["epochs"] == 10
    assert result["sync_backend"].startswith("mwms-")  # MultiWorkerMirroredStrategy across 2 workers
    assert Path(result["checkpoint"]).name == "ckpt-0000000200"  # 10 epochs x 20 steps, as torch
    assert result["peak_worker_rss_bytes"] > 100 * 2**20


def test_each_tensorflow_worker_trained_on_its_own_shard(cnn_tf: dict[str, Any]) -> None:
    shards = json.loads((Path(cnn_tf["result"]["job_dir"]) / "shards.json").read_text())
    assert sorted(shards) == ["0", "1"]
    for epoch in map(str, range(1, 11)):
        a, b = set(shards["0"][epoch]), set(shards["1"][epoch])
        assert len(a) == len(b) > 600 and not a & b


def test_tensorflow_tensorboard_events_have_the_torch_tags(cnn_tf: dict[str, Any]) -> None:
    assert_epoch_scalars(cnn_tf["result"]["tensorboard_dir"], 10, cnn_tf["result"]["metrics"]["val_accuracy"])


def test_predict_on_the_savedmodel_equals_the_keras_model(cnn_tf: dict[str, Any], tmp_path: Path) -> None:
    import tf_keras as keras
    from sklearn.datasets import load_digits

    result = cnn_tf["result"]
    raw = load_digits().images[:40, None].astype(np.float32)
    np.savez(tmp_path / "x.npz", x=raw)
    out = last_json(run_cli(["predict", result["job_id"], "--input", str(tmp_path / "x.npz"), "-o", "json"],
                            cnn_tf["env"], check=True).stdout)
    from orchestrator.runtime.data import Preprocessor

    meta = json.loads((Path(result["model_dir"]) / "model.json").read_text())
    pre = Preprocessor.from_json(meta["preprocessing"])
    logits = keras.models.load_model(result["keras_path"])(pre.apply(raw)).numpy()
    assert out["predictions"] == [int(v) for v in logits.argmax(1)]
    assert (np.array(out["predictions"]) == load_digits().target[:40]).mean() >= 0.9


@pytest.mark.parametrize(("job", "extra", "floor"), [
    ("rnn-gru-tf.yaml", [], 0.90),
    ("sequential-keras.yaml", ["--set", "framework=tensorflow"], 0.93),  # the seed's Keras example, verbatim
])
def test_tensorflow_model_zoo_specs_train(ray_address: str, tmp_path: Path, job: str, extra: list[str],
                                          floor: float) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    result = last_json(run_cli(["submit", str(REPO / "jobs" / job), *extra, "-o", "json", "-q"], env,
                               check=True).stdout)
    assert result["state"] == "succeeded" and result["sync_backend"].startswith("mwms-")
    assert result["metrics"]["val_accuracy"] >= floor, result["metrics"]
    assert Path(result["saved_model_path"]).is_dir()


def test_the_tensorflow_gan_trains_end_to_end(ray_address: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = cli_env(tmp_path / "home", ray_address)
    result = last_json(run_cli(["submit", str(REPO / "jobs" / "gan-tf.yaml"), "-o", "json", "-q"], env,
                               check=True).stdout)
    metrics = result["metrics"]
    assert result["state"] == "succeeded" and metrics["epochs"] == 150
    assert np.isfinite([metrics["generator_loss"], metrics["discriminator_loss"]]).all()
    assert metrics["confident_real"] >= 0.9 and metrics["confident_samples"] >= 0.60, metrics  # as torch's
    acc = EventAccumulator(result["tensorboard_dir"], size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("samples/grid")] == list(range(1, 151))
    assert Path(result["generator_path"]).is_dir()  # the generator's SavedModel


def small_tf_job(tmp_path: Path, epochs: int, **extra: Any) -> Path:
    return small_job(tmp_path, epochs, name=extra.pop("name", "small-tf"), framework="tensorflow", **extra)


@pytest.mark.smoke
def test_one_mwms_epoch_on_two_workers_trains_each_on_its_shard(ray_address: str, tmp_path: Path) -> None:
    """`make test`'s tensorflow job: one epoch of two MultiWorkerMirroredStrategy workers."""
    env = cli_env(tmp_path / "home", ray_address)
    result = last_json(run_cli(["submit", str(small_tf_job(tmp_path, 1)), "-o", "json", "-q"], env,
                               check=True).stdout)
    assert result["state"] == "succeeded"
    assert result["sync_backend"].startswith("mwms-")  # MultiWorkerMirroredStrategy across 2 workers
    metrics = result["metrics"]
    assert metrics["epochs"] == 1
    assert 0.5 <= metrics["val_accuracy"] <= 1.0, metrics  # one epoch learns most digits (chance: 0.1)
    assert 0.0 < metrics["val_loss"] < 2.3, metrics  # below chance's ln(10) = 2.30
    assert metrics["samples_per_second"] > 0
    assert Path(result["checkpoint"]).name == "ckpt-0000000020"  # 1 epoch x 20 steps
    shards = json.loads((Path(result["job_dir"]) / "shards.json").read_text())
    a, b = set(shards["0"]["1"]), set(shards["1"]["1"])
    assert len(a) == len(b) > 600 and not a & b  # each worker its own half of the 1,259 training digits
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(result["tensorboard_dir"])
    events.Reload()
    [point] = events.Scalars("accuracy/validation")
    assert point.step == 1 and abs(point.value - metrics["val_accuracy"]) <= 1e-6


def test_a_tensorflow_job_resumes_at_the_next_epoch(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    first = last_json(run_cli(["submit", str(small_tf_job(tmp_path, 2)), "-o", "json", "-q"], env, check=True).stdout)
    assert first["state"] == "succeeded" and first["metrics"]["epochs"] == 2
    resumed = last_json(run_cli(["resume", first["job_id"], "--epochs", "4", "-o", "json", "-q"], env,
                                check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert [a["restored_epoch"] for a in resumed["attempts"]] == [None, 2]
    assert resumed["metrics"]["epochs"] == 4
    assert Path(resumed["checkpoint"]).name == "ckpt-0000000080"  # 4 epochs x 20 steps: steps went on from 40
    # two MWMS workers, each with its own dropout stream (its replica's): the generator state is
    # checkpointed, so 2 epochs + resume + 2 epochs end with exactly the weights of 4 straight epochs
    straight = last_json(run_cli(["submit", str(small_tf_job(tmp_path, 4, name="straight-tf")), "-o", "json", "-q"],
                                 env, check=True).stdout)
    assert straight["model_checksum"] == resumed["model_checksum"]
    assert straight["metrics"]["val_accuracy"] == resumed["metrics"]["val_accuracy"]


def test_a_tensorflow_worker_failure_is_recovered_from_the_last_checkpoint(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = small_tf_job(tmp_path, 3, name="tf-fault", checkpoint={"every_steps": 10},
                        failure={"max_failures": 2, "backoff_s": 0})
    proc = run_cli(["submit", str(spec), "--inject-failure", "kind=exception,rank=1,at_step=33", "-o", "json", "-q"],
                   env, check=True)
    result = last_json(proc.stdout)
    assert result["state"] == "succeeded" and result["metrics"]["epochs"] == 3
    assert [a["restored_step"] for a in result["attempts"]] == [None, 30]
    assert result["metrics"]["val_accuracy"] >= 0.9


def test_compare_runs_one_spec_in_both_frameworks(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    proc = run_cli(["compare", str(small_tf_job(tmp_path, 3, name="both")), "-o", "json", "-q"], env, check=True)
    runs = last_json(proc.stdout)["runs"]
    assert [r["framework"] for r in runs] == ["torch", "tensorflow"]
    for run in runs:
        assert run["state"] == "succeeded" and run["metrics"]["val_accuracy"] >= 0.85, run
        assert run["metrics"]["samples_per_second"] > 0 and run["wall_s"] > 0
        assert run["peak_worker_rss_bytes"] > 50 * 2**20
    assert runs[0]["sync_backend"] == "gloo" and runs[1]["sync_backend"].startswith("mwms-")
    text = run_cli(["status", runs[1]["job_id"]], env, check=True).stdout
    assert "succeeded" in text


def test_a_tensorflow_entrypoint_runs_with_our_helpers(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = str(REPO / "jobs" / "custom-entrypoint-tf.yaml")
    result = last_json(run_cli(["submit", spec, "--set", "training.epochs=3", "-o", "json", "-q"], env,
                               check=True).stdout)
    assert result["state"] == "succeeded" and result["metrics"]["epochs"] == 3
    assert result["metrics"]["val_accuracy"] > 0.9
    assert Path(result["keras_path"]).is_file() and Path(result["saved_model_path"]).is_dir()
    assert Path(result["checkpoint"]).name == "ckpt-0000000060"  # 3 epochs x 20 steps
    assert "done after 60 steps" in run_cli(["logs", result["job_id"]], env, check=True).stdout
