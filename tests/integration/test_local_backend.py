"""`orchestrator submit` on the local backend with real Ray, end to end through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.store import JobState, JobStore
from tests.conftest import REPO
from tests.integration.conftest import assert_epoch_scalars, cli_env, last_json, run_cli, small_job, wait_for

pytestmark = pytest.mark.integration

CNN = str(REPO / "jobs" / "cnn.yaml")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """jobs/cnn.yaml exactly as `make run` runs it: embedded Ray started by submit itself."""
    home = tmp_path_factory.mktemp("cnn-home")
    env = cli_env(home, ray_address=None)
    proc = run_cli(["submit", CNN, "--output", "json", "--quiet"], env, check=True)
    return {"home": home, "env": env, "result": last_json(proc.stdout), "stderr": proc.stderr}


@pytest.mark.heavy
@pytest.mark.smoke
def test_cnn_reaches_95_percent_validation_accuracy(cnn_run: dict[str, Any]) -> None:
    result = cnn_run["result"]
    assert result["state"] == "succeeded"
    metrics = result["metrics"]
    assert metrics["val_accuracy"] >= 0.95, metrics
    assert metrics["test_accuracy"] >= 0.9, metrics
    assert metrics["epochs"] == 10
    assert metrics["samples_per_second"] > 0
    assert metrics["val_loss"] < 0.5


@pytest.mark.heavy
@pytest.mark.smoke
def test_json_output_has_the_documented_fields(cnn_run: dict[str, Any]) -> None:
    result = cnn_run["result"]
    for key in ("job_id", "state", "metrics", "checkpoint", "model_path", "tensorboard_dir", "attempts"):
        assert key in result, key
    assert Path(result["checkpoint"]).name == "ckpt-0000000200"  # 10 epochs x 20 steps
    assert Path(result["model_path"]).is_file()
    assert len(result["attempts"]) == 1 and result["attempts"][0]["restored_epoch"] is None
    if result["dashboard_url"] is None:  # Ray's start-up fell back to no dashboard on a starved machine
        logs = run_cli(["logs", result["job_id"]], cnn_run["env"], check=True).stdout
        assert "Ray started without its dashboard" in logs
    else:
        assert result["dashboard_url"].startswith("http://127.0.0.1:")
    assert result["time_to_first_step_s"] > 0
    assert (result["device"], result["sync_backend"]) == ("cpu", "gloo")  # 2 CPU workers: DDP over gloo
    assert result["cluster"] == "embedded Ray (started for this job)"  # no warm cluster is up in its home


@pytest.mark.heavy
def test_each_worker_trained_on_a_disjoint_shard(cnn_run: dict[str, Any]) -> None:
    job_dir = Path(cnn_run["result"]["job_dir"])
    shards = json.loads((job_dir / "shards.json").read_text())
    assert sorted(shards) == ["0", "1"]
    for epoch in map(str, range(1, 11)):
        a, b = set(shards["0"][epoch]), set(shards["1"][epoch])
        assert len(a) == len(b) == len(shards["0"][epoch]) > 600  # 1259 // 2, no repeats
        assert not a & b, f"ranks overlap in epoch {epoch}"
    assert shards["0"]["1"] != shards["0"]["2"]  # reshuffled every epoch


@pytest.mark.heavy
@pytest.mark.smoke
def test_tensorboard_events_have_the_epoch_scalars(cnn_run: dict[str, Any]) -> None:
    assert_epoch_scalars(cnn_run["result"]["tensorboard_dir"], 10, cnn_run["result"]["metrics"]["val_accuracy"])


@pytest.mark.heavy
def test_saved_models_load_and_predict(cnn_run: dict[str, Any]) -> None:
    import torch
    from sklearn.datasets import load_digits

    model_dir = Path(cnn_run["result"]["model_path"]).parent
    scripted = torch.jit.load(str(model_dir / "model.torchscript.pt"))  # the README one-liner
    digits = load_digits()
    raw = torch.from_numpy(digits.images[:, None].astype(np.float32))
    with torch.no_grad():
        predicted = scripted(raw).argmax(1).numpy()
    assert (predicted == digits.target).mean() > 0.95  # mostly training data, raw inputs
    state = torch.load(model_dir / "model.pt")
    assert any(k.endswith("weight") for k in state)
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["preprocessing"]["kind"] == "standardize"


@pytest.mark.heavy
@pytest.mark.smoke
def test_job_records_work_across_cli_invocations(cnn_run: dict[str, Any]) -> None:
    env, job_id = cnn_run["env"], cnn_run["result"]["job_id"]
    listed = last_json(run_cli(["list", "--output", "json"], env, check=True).stdout)
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]
    status = last_json(run_cli(["status", job_id[:-2], "--output", "json"], env, check=True).stdout)
    assert status["state"] == "succeeded"
    assert status["metrics"]["val_accuracy"] == cnn_run["result"]["metrics"]["val_accuracy"]
    logs = run_cli(["logs", job_id], env, check=True).stdout
    assert "epoch 10 train_loss=" in logs
    assert f"job {job_id} succeeded" in logs
    text = run_cli(["status", job_id], env, check=True).stdout
    assert "succeeded" in text and "val_accuracy" in text


@pytest.mark.heavy
def test_unknown_job_is_a_clear_error(cnn_run: dict[str, Any]) -> None:
    proc = run_cli(["status", "no-such-job"], cnn_run["env"])
    assert proc.returncode == 2
    assert "no job 'no-such-job'" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- jobs that share one Ray instance ---------------------------------------------------------


@pytest.mark.heavy
def test_resume_continues_at_the_next_epoch_with_identical_state(
    ray_address: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    straight = last_json(run_cli(["submit", str(small_job(tmp_path, 3)), "-o", "json", "-q"], env, check=True).stdout)
    first = last_json(run_cli(["submit", str(small_job(tmp_path, 2)), "-o", "json", "-q"], env, check=True).stdout)
    assert first["state"] == "succeeded" and first["metrics"]["epochs"] == 2
    resumed = last_json(run_cli(["resume", first["job_id"], "--epochs", "3", "-o", "json", "-q"], env, check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert [a["restored_epoch"] for a in resumed["attempts"]] == [None, 2]
    assert resumed["metrics"]["epochs"] == 3
    logs = run_cli(["logs", first["job_id"]], env, check=True).stdout
    assert "restored epoch 2" in logs
    # the model restored after the checkpoint is the one that was saved...
    manifest = json.loads((Path(first["checkpoint"]) / "manifest.json").read_text())
    assert f"checksum {manifest['meta']['param_checksum']}" in logs
    # ...and 2 epochs + resume + 1 epoch ends with exactly the weights of 3 straight epochs
    assert resumed["model_checksum"] == straight["model_checksum"]
    assert resumed["metrics"]["val_accuracy"] == straight["metrics"]["val_accuracy"]


@pytest.mark.heavy
def test_detach_then_cancel_then_resume(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    proc = run_cli(["submit", str(small_job(tmp_path, 200)), "--detach"], env, check=True)
    job_id = proc.stdout.strip().splitlines()[-1]
    store = JobStore(tmp_path / "home" / "jobs.db")
    wait_for(lambda: (store.get(job_id).progress.get("epoch") or 0) >= 1, 900, what="epoch 1")
    assert store.get(job_id).state == JobState.RUNNING
    out = run_cli(["cancel", job_id], env, check=True).stdout
    assert "cancelling" in out or "cancelled" in out
    wait_for(lambda: store.get(job_id).state.terminal, 600, what="cancel to finish")
    record = store.get(job_id)
    assert record.state == JobState.CANCELLED
    assert "orchestrator resume" in (record.message or "")
    stopped_epoch = record.result["metrics"]["epochs"]
    assert record.result["checkpoint"] and stopped_epoch < 200
    resumed = last_json(run_cli(["resume", job_id, "--epochs", str(stopped_epoch + 1), "-o", "json", "-q"],
                                env, check=True).stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["attempts"][-1]["restored_epoch"] == stopped_epoch
    assert resumed["metrics"]["epochs"] == stopped_epoch + 1


@pytest.mark.heavy
def test_ctrl_c_stops_gracefully_with_a_checkpoint(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(small_job(tmp_path, 200)), "-o", "json", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    store = JobStore(tmp_path / "home" / "jobs.db")

    def running_epoch() -> bool:
        jobs = store.list()
        return bool(jobs) and (jobs[0].progress.get("epoch") or 0) >= 1

    wait_for(running_epoch, 900, what="epoch 1")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    result = last_json(out)
    assert result["state"] == "cancelled"
    assert result["checkpoint"]
    assert "Traceback" not in err


@pytest.mark.heavy
def test_user_entrypoint_runs_with_our_helpers(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = str(REPO / "jobs" / "custom-entrypoint.yaml")
    result = last_json(run_cli(["submit", spec, "--set", "training.epochs=3", "-o", "json", "-q"], env,
                               check=True).stdout)
    assert result["state"] == "succeeded"
    assert result["metrics"]["val_accuracy"] > 0.9
    assert result["metrics"]["epochs"] == 3
    assert Path(result["model_path"]).is_file()
    logs = run_cli(["logs", result["job_id"]], env, check=True).stdout
    assert "done after" in logs  # the function's print() reached the job log


@pytest.mark.heavy
def test_failing_entrypoint_fails_the_job_with_the_reason(ray_address: str, tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def train(config):\n    raise ValueError('learning went wrong')\n")
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nentrypoint: bad.py:train\nresources: {workers: 2, cpus_per_worker: 0.5}\n")
    env = cli_env(tmp_path / "home", ray_address)
    proc = run_cli(["submit", str(spec), "-o", "json", "-q"], env)
    assert proc.returncode == 1
    result = last_json(proc.stdout)
    assert result["state"] == "failed"
    assert "learning went wrong" in result["message"]
    assert "Traceback" not in proc.stderr
    logs = run_cli(["logs", result["job_id"]], env, check=True).stdout
    assert "ValueError" in logs


@pytest.mark.heavy
def test_job_that_cannot_fit_this_machine_says_why(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = small_job(tmp_path, 1, name="huge", resources={"workers": 8, "cpus_per_worker": 1})
    proc = run_cli(["submit", str(spec), "-o", "json", "-q"], env)
    assert proc.returncode == 1
    result = last_json(proc.stdout)
    assert result["state"] == "failed"
    assert "does not fit" in result["message"]


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", None)
    plan = last_json(run_cli(["submit", CNN, "--dry-run", "-o", "json"], env, check=True).stdout)
    assert plan["plan"]["workers"] == 2
    assert plan["plan"]["resources_per_worker"] == {"CPU": 0.5}
    assert plan["plan"]["collective_backend"] == "gloo"
    assert plan["spec"]["training"]["epochs"] == 10
    assert not (tmp_path / "home" / "jobs").exists()


@pytest.mark.heavy
def test_two_local_jobs_that_each_need_most_of_the_machine_take_turns(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", None)  # each embeds its own Ray: the job store is the queue
    per_worker = round((os.cpu_count() or 2) * 0.75 / 2, 2)  # a gang of 2 takes 75% of the CPUs
    # turn-a trains long enough (300 short epochs) for turn-b to be seen waiting
    first = small_job(tmp_path, 300, name="turn-a", resources={"workers": 2, "cpus_per_worker": per_worker})
    second = small_job(tmp_path, 2, name="turn-b", resources={"workers": 2, "cpus_per_worker": per_worker})
    job_a = run_cli(["submit", str(first), "--detach"], env, check=True).stdout.strip().splitlines()[-1]
    store = JobStore(tmp_path / "home" / "jobs.db")
    wait_for(lambda: store.get(job_a).state == JobState.RUNNING and store.get(job_a).progress, 600,
             what="turn-a to train")
    job_b = run_cli(["submit", str(second), "--detach"], env, check=True).stdout.strip().splitlines()[-1]
    waiting = wait_for(lambda: (r := store.get(job_b)).message and r.message.startswith("queued:") and r, 120,
                       what="turn-b to be queued")
    assert waiting.state == JobState.PENDING and f"x {per_worker:g} cpus" in waiting.message, waiting.message
    explained = last_json(run_cli(["explain", job_b, "-o", "json"], env, check=True).stdout)
    assert explained["state"] == "waiting", explained
    wait_for(lambda: store.get(job_a).state.terminal and store.get(job_b).state.terminal, 900, what="both to end")
    a, b = store.get(job_a), store.get(job_b)
    assert a.state == b.state == JobState.SUCCEEDED, (a.message, b.message)
    assert b.attempts[0]["started_at"] >= a.ended_at - 1.0  # never side by side


def submit_repo_job(job: str, ray_address: str, tmp_path: Path) -> dict[str, Any]:
    """`orchestrator submit jobs/JOB -o json -q` on the shared head: its final JSON."""
    env = cli_env(tmp_path / "home", ray_address)
    return last_json(run_cli(["submit", str(REPO / "jobs" / job), "-o", "json", "-q"], env, check=True).stdout)


@pytest.mark.heavy
@pytest.mark.parametrize(("job", "floor"), [("rnn-lstm.yaml", 0.90), ("sequential-keras.yaml", 0.93)])
def test_model_zoo_specs_train_with_ddp(ray_address: str, tmp_path: Path, job: str, floor: float) -> None:
    result = submit_repo_job(job, ray_address, tmp_path)
    assert result["state"] == "succeeded"
    assert result["metrics"]["val_accuracy"] >= floor, result["metrics"]
    assert Path(result["torchscript_path"]).is_file()


@pytest.mark.heavy
def test_sine_forecasting_beats_the_last_value_by_2x(ray_address: str, tmp_path: Path) -> None:
    result = submit_repo_job("sine-rnn.yaml", ray_address, tmp_path)
    metrics = result["metrics"]
    assert result["state"] == "succeeded" and "val_accuracy" not in metrics  # regression: MSE only
    assert metrics["val_loss"] * 2 <= metrics["val_baseline_mse"], metrics
    assert metrics["test_loss"] * 2 <= metrics["test_baseline_mse"], metrics


@pytest.mark.heavy
def test_the_gan_trains_with_ddp_draws_digits_and_logs_its_grid(ray_address: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = submit_repo_job("gan.yaml", ray_address, tmp_path)
    metrics = result["metrics"]
    assert result["state"] == "succeeded" and metrics["epochs"] == 150
    assert metrics["confident_samples"] >= 0.60, metrics  # the quality proxy (256 samples)
    assert np.isfinite([metrics["generator_loss"], metrics["discriminator_loss"]]).all()
    pngs = sorted(Path(result["samples_dir"]).glob("epoch-*.png"))
    assert len(pngs) == 150 and pngs[-1].read_bytes()[:4] == b"\x89PNG"
    acc = EventAccumulator(result["tensorboard_dir"], size_guidance={"images": 0})
    acc.Reload()
    assert "samples/grid" in acc.Tags()["images"]
    assert [e.step for e in acc.Images("samples/grid")] == list(range(1, 151))
    assert {"loss/generator", "loss/discriminator"} <= set(acc.Tags()["scalars"])
    # the exported generator draws samples in the data's raw units (0-16 for the digits)
    import torch

    generator = torch.jit.load(result["generator_path"])
    drawn = generator(torch.randn(8, 32)).detach().numpy()
    assert drawn.shape == (8, 1, 8, 8) and drawn.min() >= -1e-4 and drawn.max() <= 16 + 1e-4
    assert drawn.max() > 4  # raw units: a [0, 1] output alone (no un-normalising) would fail here
