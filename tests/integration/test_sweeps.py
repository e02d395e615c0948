"""Sweeps end to end on a real Ray (the session's shared head): `orchestrator tune`.

* the example ASHA sweep (jobs/cnn-sweep.yaml): 6 trials, the best reaches val_accuracy >= 0.95,
  ASHA stops trials early, the budget it saved, the best trial's spec (it validates and, submitted,
  trains), checkpoint and model, the TensorBoard hparams read back with tensorboard's own reader,
  and `orchestrator status SWEEP`;
* an interrupted sweep of 2-worker DDP trials (`orchestrator cancel`) resumes
  (`orchestrator resume`) and finishes without rerunning its finished trials; Ctrl-C interrupts a
  sweep and its running trial at once, too;
* a 2-trial TensorFlow sweep (skipped while `framework: tensorflow` is not available).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, run_cli, wait_for

pytestmark = pytest.mark.integration


def read_hparams(logdir: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(hyperparameter names of the experiment, {trial id: {"hparams": ..., "val_accuracy": [...]}})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    root = EventAccumulator(str(logdir))
    root.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        root.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG])
    sessions = {}
    for run in sorted(p for p in logdir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        sessions[run.name] = {
            "hparams": {k: v.number_value for k, v in start.hparams.items()},
            "val_accuracy": [(e.step, e.value) for e in acc.Scalars("val_accuracy")],
            "metrics": [m.name.tag for m in experiment.metric_infos],
        }
    return [h.name for h in experiment.hparam_infos], sessions


def _dashboard_actors(base: str, class_name: str) -> list[dict[str, Any]]:
    """Actors of one class from the Ray dashboard's state API (with Ray's token auth)."""
    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
    query = urllib.parse.urlencode({"filter_keys": "class_name", "filter_predicates": "=",
                                    "filter_values": class_name, "limit": 10000})
    request = urllib.request.Request(f"{base}/api/v0/actors?{query}", headers=headers)
    data = json.loads(urllib.request.urlopen(request, timeout=60).read())
    actors: list[dict[str, Any]] = data["data"]["result"]["result"]
    return actors


def test_the_example_asha_sweep_finds_a_good_learning_rate_and_stops_poor_trials_early(
    ray_address: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    started = time.time()
    # batch 8: epochs of about a second here, so an ASHA stop (decided on a trial's epoch result while
    # its workers train on) lands before the trial's last epoch even on a faster machine; at the
    # example's batch 32 a trial's four epochs take about as long as that round trip
    proc = run_cli(["tune", "jobs/cnn-sweep.yaml", "--set", "training.batch_size=8", "--output", "json"], env,
                   timeout=1500, check=True)
    wall = time.time() - started
    out = last_json(proc.stdout)
    print(f"sweep wall time {wall:.1f}s; budget {out['budget']}; best {out['best']['metric']:.4f}")
    assert out["state"] == "succeeded"
    board = out["leaderboard"]
    assert len(board) == 6 and len({t["trial_id"] for t in board}) == 6
    best = out["best"]
    assert best["trial_id"] == board[0]["trial_id"]
    assert best["metric"] >= 0.95, board
    assert best["final"]["test_accuracy"] >= 0.9
    assert 1e-4 <= best["params"]["training.learning_rate"] <= 1e-1
    # ASHA stopped at least one trial before its last epoch, and the budget says what that saved
    stopped = [t for t in board if t["stopped_early"]]
    assert stopped, board
    assert all(t["epochs_trained"] < 4 for t in stopped)
    budget = out["budget"]
    assert budget["trial_epochs_full"] == 6 * 4
    assert budget["trial_epochs_used"] == sum(t["epochs_trained"] for t in board) < 24
    assert budget["trials_stopped_early"] == len(stopped)
    assert budget["saved_fraction"] == pytest.approx(1 - budget["trial_epochs_used"] / 24, abs=1e-3)
    assert budget["trial_epochs_not_trained"] == 0  # every trial finished or was stopped early

    # the best trial's spec: a job spec our loader validates, with the winning learning rate
    from orchestrator.spec import load_spec

    spec = load_spec(best["spec_path"])
    assert spec.name == "cnn-sweep-best"
    assert spec.training.learning_rate == best["params"]["training.learning_rate"]
    assert spec.training.epochs == 4 and spec.resources.workers == 1 and spec.training.batch_size == 8
    assert (Path(best["checkpoint"]) / "manifest.json").exists() or any(Path(best["checkpoint"]).iterdir())
    assert (Path(best["model_dir"]) / "model.pt").is_file()

    # TensorBoard hparams: one session per trial with its learning rate and val_accuracy per epoch
    names, sessions = read_hparams(Path(out["tensorboard_dir"]))
    assert names == ["training.learning_rate"]
    assert set(sessions) == {t["trial_id"] for t in board}
    for trial in board:
        session = sessions[trial["trial_id"]]
        assert session["hparams"]["training.learning_rate"] == pytest.approx(trial["params"]["training.learning_rate"])
        assert len(session["val_accuracy"]) == trial["epochs_trained"]
        assert session["val_accuracy"][-1][1] == pytest.approx(trial["metric"], abs=1e-6)
        assert "val_accuracy" in session["metrics"]

    # the trials were Ray actors of the sweep's Ray job, listed by the Ray dashboard's state API
    base, ray_job = out["dashboard_url"].split("/#/jobs/")
    actors = _dashboard_actors(base, "SweepTrial")
    assert len([a for a in actors if a["job_id"] == ray_job]) == 6, actors

    # later: `orchestrator status SWEEP` shows the same leaderboard
    status = last_json(run_cli(["status", out["job_id"], "-o", "json"], env, check=True).stdout)
    assert [t["trial_id"] for t in status["leaderboard"]] == [t["trial_id"] for t in board]
    text = run_cli(["status", out["job_id"]], env, check=True).stdout
    assert "leaderboard" in text and "stopped early" in text and "trial-epochs" in text

    # `orchestrator predict SWEEP` uses the best trial's model
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "some.npz", x=digits.images[:20].astype("float32"))
    predicted = last_json(run_cli(["predict", out["job_id"], "--input", str(tmp_path / "some.npz"), "-o", "json"],
                                  env, check=True).stdout)
    assert np.mean(np.array(predicted["predictions"]) == digits.target[:20]) >= 0.8

    # the best spec, submitted, trains
    job = last_json(run_cli(["submit", best["spec_path"], "--output", "json", "--quiet"], env, timeout=900,
                            check=True).stdout)
    assert job["state"] == "succeeded"
    assert job["metrics"]["val_accuracy"] >= 0.9


TINY_SWEEP = """\
name: tiny-sweep
model: {type: cnn, conv_filters: [8], dense_units: [16]}
resources: {workers: 1, cpus_per_worker: 0.5}
training: {epochs: 2, batch_size: 64}
tune:
  search_space:
    training.learning_rate: grid([0.003, 0.01])
  num_samples: 1
  scheduler: {type: fifo}
"""


def test_the_gcs_address_is_asked_of_the_cluster_whose_jobs_api_address_names(
        ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tune -b ray --address http://HEAD:8265`: the sweep's driver joins the GCS address that the
    cluster itself gives its jobs (a short Ray job prints RAY_ADDRESS; nothing is left behind)."""
    from orchestrator.cli.tune_cmds import sweep_gcs_address
    from orchestrator.execution.ray_local import use_local_auth_token
    from orchestrator.settings import Settings

    use_local_auth_token()
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dashboard = "http://127.0.0.1:8265"
    before = {j.submission_id for j in JobSubmissionClient(dashboard).list_jobs()}
    assert sweep_gcs_address(Settings.from_env(), None, dashboard, dry_run=False) == ray_address
    after = {j.submission_id for j in JobSubmissionClient(dashboard).list_jobs()}
    assert after == before  # the short job was deleted


def test_backend_ray_runs_the_sweep_on_a_running_cluster(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", None)  # no RAY_ADDRESS: the cluster comes from --ray-address
    spec = tmp_path / "tiny-sweep.yaml"
    spec.write_text(TINY_SWEEP)
    out = last_json(run_cli(["tune", str(spec), "--backend", "ray", "--ray-address", ray_address, "-q", "-o", "json"],
                            env, timeout=900, check=True).stdout)
    assert out["state"] == "succeeded"
    assert sorted(t["params"]["training.learning_rate"] for t in out["leaderboard"]) == [0.003, 0.01]
    assert all(t["epochs_trained"] == 2 for t in out["leaderboard"])
    assert out["ray_address"] == ray_address  # kept: `orchestrator resume` joins the same cluster
    # it ran on that cluster: the Ray job of the sweep is in the cluster's dashboard, tagged as a sweep
    base, ray_job = out["dashboard_url"].split("/#/jobs/")
    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
    jobs = json.loads(urllib.request.urlopen(urllib.request.Request(f"{base}/api/jobs/", headers=headers),
                                             timeout=60).read())
    [mine] = [j for j in jobs if j.get("job_id") == ray_job]
    assert mine["metadata"] == {"orchestrator_job_id": out["job_id"], "orchestrator_job_name": "tiny-sweep",
                                "orchestrator_kind": "sweep"}


RESUME_SWEEP = """\
name: ddp-sweep
# epochs long enough (a second or two: small batches, many all-reduces) to interrupt a trial
# between its first and last epoch (at batch 32 its five epochs take about as long as one poll)
model: {type: cnn, conv_filters: [64, 128], dense_units: [256]}
resources: {workers: 2, cpus_per_worker: 0.5}
training: {epochs: 5, batch_size: 4, seed: 1}
checkpoint: {keep: 1}
tune:
  search_space:
    training.learning_rate: grid([0.002, 0.008])
  num_samples: 1
  max_concurrent: 1
  scheduler: {type: fifo}
"""


def _sweep_record(home: Path) -> Any:
    from orchestrator.store import JobStore

    records = JobStore(home / "jobs.db").list()
    return records[0] if records else None


def _halfway(trial: dict[str, Any]) -> bool:
    """A trial between its first and last epochs (5), with epochs left to interrupt."""
    return bool(trial["state"] == "running" and 1 <= trial["epochs_trained"] <= 2)


def _interrupt_sweep(spec: Path, env: dict[str, str], ready: Any, interrupt: Any,
                     what: str) -> tuple[Any, subprocess.Popen[str], str, str]:
    """`orchestrator tune SPEC` in a subprocess; once ``ready(trials)`` holds for the sweep's live
    trials, ``interrupt(proc, record)``; then wait for it to end: (record then, proc, stdout, stderr)."""
    home = Path(env["ORCHESTRATOR_HOME"])
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "tune", str(spec), "-q", "-o", "json"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def when_ready() -> Any:
            record = _sweep_record(home)
            return record if record and ready((record.progress or {}).get("trials", [])) else None

        record = wait_for(when_ready, timeout=900, interval=0.2, what=what)
        interrupt(proc, record)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return record, proc, stdout, stderr


def one_done_one_halfway(trials: list[dict[str, Any]]) -> bool:
    """One trial finished and another halfway: the moment the interrupt tests stop a sweep."""
    return any(t["state"] == "succeeded" for t in trials) and any(_halfway(t) for t in trials)


def test_an_interrupted_sweep_of_ddp_trials_resumes_without_rerunning_finished_trials(
    ray_address: str, tmp_path: Path
) -> None:
    from orchestrator.backends.local import LocalBackend
    from orchestrator.settings import Settings

    home = tmp_path / "home"
    env = cli_env(home, ray_address)
    spec = tmp_path / "ddp-sweep.yaml"
    spec.write_text(RESUME_SWEEP)

    def cancel(proc: subprocess.Popen[str], record: Any) -> None:
        # what `orchestrator cancel SWEEP` does (in-process: the CLI's start-up would let the trial finish)
        assert LocalBackend(Settings(home=home)).cancel(record.id).state.value == "cancelling"

    record, _, stdout, stderr = _interrupt_sweep(spec, env, one_done_one_halfway, cancel,
                                                 "one finished trial, one halfway")
    before = {t["trial_id"]: t for t in record.progress["trials"]}
    interrupted = last_json(stdout)
    assert interrupted["state"] == "cancelled", stderr[-3000:]
    assert "orchestrator resume" in interrupted["message"]
    finished_before = {tid for tid, t in before.items() if t["state"] == "succeeded"}
    halfway = [tid for tid, t in before.items() if t["state"] == "running"]
    assert finished_before and len(halfway) == 1
    assert interrupted["budget"]["trial_epochs_used"] < 10
    # the interrupted trial is not counted as stopped early (no scheduler stopped it)
    assert {t["trial_id"]: t["state"] for t in interrupted["leaderboard"]}[halfway[0]] == "interrupted"
    assert interrupted["budget"]["trials_stopped_early"] == 0
    # nothing was saved by early stopping: the epochs left are the interrupted trial's, still to train
    assert interrupted["budget"]["trial_epochs_saved"] == 0
    assert interrupted["budget"]["trial_epochs_not_trained"] == 10 - interrupted["budget"]["trial_epochs_used"]
    # its workers were told at once by the sweep (InterruptTrials), not by Tune stopping the trial
    # actor after its epoch in flight ("the sweep stopped this trial")
    stopped = json.loads((Path(interrupted["job_dir"]) / "trials" / halfway[0] / "trial.json").read_text())
    assert stopped["state"] == "interrupted" and stopped["stop_reason"] == "the sweep was interrupted"

    resumed = last_json(run_cli(["resume", record.id, "-q", "-o", "json"], env, timeout=1200, check=True).stdout)
    assert resumed["state"] == "succeeded"
    trials = {t["trial_id"]: t for t in resumed["leaderboard"]}
    assert len(trials) == 2  # the same two trials, none added, none lost
    assert sorted(t["params"]["training.learning_rate"] for t in trials.values()) == [0.002, 0.008]
    assert all(t["state"] == "succeeded" and t["epochs_trained"] == 5 for t in trials.values())
    for tid in finished_before:  # finished trials were not rerun
        assert trials[tid]["starts"] == 1
        assert trials[tid]["final"] == before[tid]["final"]
    files = {tid: json.loads((Path(resumed["job_dir"]) / "trials" / tid / "trial.json").read_text())
             for tid in trials}
    # the trial interrupted halfway started again and its workers continued from its own checkpoint
    [tid] = halfway
    assert trials[tid]["starts"] == 2
    first, second = files[tid]["restored_steps"]
    assert first is None and second is not None and second > 0
    # each trial was a 2-worker DDP run (gradients all-reduced over gloo)
    assert all(f["workers"] == 2 and f["sync_backend"] == "gloo" for f in files.values())
    assert resumed["budget"]["trial_epochs_used"] == 10 and resumed["budget"]["trials_stopped_early"] == 0


def test_ctrl_c_interrupts_a_sweep_and_its_running_trial_at_once(ray_address: str, tmp_path: Path) -> None:
    import signal

    spec = tmp_path / "one-trial.yaml"
    spec.write_text(RESUME_SWEEP.replace("grid([0.002, 0.008])", "grid([0.004])"))
    record, proc, stdout, stderr = _interrupt_sweep(
        spec, cli_env(tmp_path / "home", ray_address), lambda trials: any(_halfway(t) for t in trials),
        lambda proc, record: proc.send_signal(signal.SIGINT), "the trial halfway")
    assert proc.returncode == 130, stderr[-3000:]  # EXIT_INTERRUPTED
    out = last_json(stdout)
    assert out["state"] == "cancelled" and out["message"].startswith("interrupted; `orchestrator resume ")
    [trial] = out["leaderboard"]
    assert trial["state"] == "interrupted" and trial["epochs_trained"] < 5
    saved = json.loads((Path(out["job_dir"]) / "trials" / trial["trial_id"] / "trial.json").read_text())
    assert saved["stop_reason"] == "the sweep was interrupted"  # told at once, as `orchestrator cancel` does
    assert saved["checkpoint"] and "Traceback" not in stderr
    assert "Tuner.restore" not in stderr  # Tune's own resume advice is dropped: ours is in the message
    assert record.id == out["job_id"]


PBT_SWEEP = """\
name: pbt-sweep
# epochs of a few seconds, so the two trials' epochs overlap and PBT can compare them
model: {type: cnn, conv_filters: [64, 128], dense_units: [256]}
resources: {workers: 1, cpus_per_worker: 0.5}
training: {epochs: 5, batch_size: 32}
tune:
  search_space:
    training.learning_rate: choice([0.0001, 0.003])
  num_samples: 2
  max_concurrent: 2
  scheduler: {type: pbt, perturbation_interval: 1, quantile_fraction: 0.5}
  seed: 3
"""


@pytest.mark.heavy
def test_pbt_replaces_the_poor_trial_with_a_copy_of_the_good_one(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = tmp_path / "pbt-sweep.yaml"
    spec.write_text(PBT_SWEEP)
    out = last_json(run_cli(["tune", str(spec), "-q", "-o", "json"], env, timeout=1500, check=True).stdout)
    assert out["state"] == "succeeded"
    files = [json.loads(p.read_text()) for p in sorted((Path(out["job_dir"]) / "trials").glob("*/trial.json"))]
    assert len(files) == 2
    # the trial PBT exploited started again from the other trial's checkpoint (copied into its own)
    exploited = [f for f in files if f["starts"] >= 2 and (f["restored_steps"][-1] or 0) > 0]
    assert exploited, [(f["trial_id"], f["starts"], f["restored_steps"], f["params"]) for f in files]
    # continuing a good model, both trials end well, whatever rate the poor one was given
    assert all(t["metric"] >= 0.9 for t in out["leaderboard"])


TF_SWEEP = """\
name: tf-sweep
framework: tensorflow
model: {type: cnn, conv_filters: [8], dense_units: [16]}
resources: {workers: 2, cpus_per_worker: 0.5}
training: {epochs: 2, batch_size: 64}
tune:
  search_space:
    training.learning_rate: grid([0.003, 0.01])
  num_samples: 1
  max_concurrent: 1
  scheduler: {type: fifo}
"""


def _tensorflow_unavailable() -> str | None:
    from orchestrator.errors import NotAvailableError
    from orchestrator.execution.driver import check_framework_available
    from orchestrator.spec.models import JobSpec

    try:
        check_framework_available(JobSpec.model_validate({"name": "x", "framework": "tensorflow",
                                                          "model": {"type": "cnn"}}))
    except NotAvailableError as exc:
        return exc.message
    return None


@pytest.mark.skipif(_tensorflow_unavailable() is not None,
                    reason=f"framework: tensorflow is refused here: {_tensorflow_unavailable()}")
def test_a_two_trial_tensorflow_sweep_completes(ray_address: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home", ray_address)
    spec = tmp_path / "tf-sweep.yaml"
    spec.write_text(textwrap.dedent(TF_SWEEP))
    out = last_json(run_cli(["tune", str(spec), "-q", "-o", "json"], env, timeout=1500, check=True).stdout)
    assert out["state"] == "succeeded"
    board = out["leaderboard"]
    assert sorted(t["params"]["training.learning_rate"] for t in board) == [0.003, 0.01]
    assert all(t["state"] == "succeeded" and t["epochs_trained"] == 2 for t in board)
    assert out["best"]["metric"] > 0.5
