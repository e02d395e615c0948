"""A sweep's results without Ray: trial rows, leaderboard, budget saved, the best spec, hparams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec import load_spec
from orchestrator.sweep.hparams import write_sweep_hparams
from orchestrator.sweep.loader import load_sweep_spec
from orchestrator.sweep.report import (
    best_spec_data,
    best_spec_yaml,
    best_trial,
    budget,
    leaderboard,
    trial_row,
)
from tests.conftest import REPO


def trial(tid: str, lr: float, accs: list[float], state: str = "succeeded", final: bool = True) -> dict[str, Any]:
    return {
        "trial_id": tid, "params": {"training.learning_rate": lr}, "state": state, "starts": 1,
        "epochs": {str(i + 1): {"val_accuracy": a, "val_loss": 1 - a} for i, a in enumerate(accs)},
        "final": {"test_accuracy": accs[-1] - 0.01} if final else {},
    }


TRIALS = [
    trial("t0", 0.01, [0.8, 0.9, 0.95, 0.97]),
    trial("t1", 0.1, [0.5], state="stopped", final=False),
    trial("t2", 0.0001, [0.6, 0.7], state="stopped", final=False),
    trial("t3", 0.003, [0.85, 0.92, 0.94, 0.96]),
    # asked to stop after its last epoch: it trained everything, so it counts as finished
    trial("t4", 0.002, [0.8, 0.9, 0.93, 0.95], state="stopped"),
]


def rows() -> list[Any]:
    return [trial_row(t, "val_accuracy", "max", max_epochs=4) for t in TRIALS]


def test_rows_take_the_metric_at_the_last_epoch_and_mark_early_stops_by_epochs_trained() -> None:
    by_id = {r.trial_id: r for r in rows()}
    assert by_id["t0"].metric == 0.97 and by_id["t0"].epochs_trained == 4 and not by_id["t0"].stopped_early
    assert by_id["t1"].stopped_early and by_id["t1"].epochs_trained == 1
    assert by_id["t2"].best_metric == 0.7
    assert by_id["t4"].state == "succeeded"
    loss = trial_row(TRIALS[0], "val_loss", "min", max_epochs=4)
    assert loss.metric == pytest.approx(0.03) and loss.best_metric == pytest.approx(0.03)


def test_leaderboard_orders_by_metric_and_mode() -> None:
    assert [r.trial_id for r in leaderboard(rows(), "max")] == ["t0", "t3", "t4", "t2", "t1"]
    assert [r.trial_id for r in leaderboard(rows(), "min")] == ["t1", "t2", "t4", "t3", "t0"]


def test_the_best_trial_is_the_best_finished_one() -> None:
    best = best_trial(rows(), "max")
    assert best is not None and best.trial_id == "t0"
    # minimising val_accuracy would pick t1, which was stopped early: the best finished trial wins
    worst = best_trial(rows(), "min")
    assert worst is not None and worst.trial_id == "t4"
    assert best_trial([], "max") is None


def test_budget_counts_trial_epochs_against_the_full_sweep() -> None:
    # t1 and t2 were stopped early (3 + 2 epochs saved); the sixth trial never started
    assert budget(rows(), total_trials=6, epochs=4) == {
        "trial_epochs_used": 4 + 1 + 2 + 4 + 4, "trial_epochs_full": 24, "trial_epochs_saved": 5,
        "saved_fraction": 0.2083, "trial_epochs_not_trained": 4, "trials_stopped_early": 2,
    }
    # an interrupted trial's missing epochs were not saved by early stopping
    interrupted = trial_row(trial("t5", 0.004, [0.7, 0.8], state="interrupted", final=False), "val_accuracy",
                            "max", max_epochs=4)
    assert budget([*rows(), interrupted], total_trials=6, epochs=4) == {
        "trial_epochs_used": 17, "trial_epochs_full": 24, "trial_epochs_saved": 5,
        "saved_fraction": 0.2083, "trial_epochs_not_trained": 2, "trials_stopped_early": 2,
    }


def test_the_best_spec_is_a_job_spec_that_validates(tmp_path: Path) -> None:
    sweep = load_sweep_spec(REPO / "jobs" / "cnn-sweep.yaml")
    best = rows()[0]
    spec = sweep.job.model_copy(update={"training": sweep.job.training.model_copy(update={"learning_rate": 0.01})})
    path = tmp_path / "best.yaml"
    path.write_text(best_spec_yaml(best_spec_data(spec.model_dump(mode="json"), sweep.name), best, "sweep-1",
                                   "val_accuracy"))
    text = path.read_text()
    assert text.startswith("# The best trial of sweep sweep-1: trial t0, val_accuracy = 0.97")
    job = load_spec(path)
    assert job.name == "cnn-sweep-best" and job.training.learning_rate == 0.01
    assert job.model_dump(exclude={"name"}) == spec.model_dump(exclude={"name"})
    long = best_spec_data(spec.model_dump(mode="json"), "x" * 53)
    assert len(long["name"]) <= 53 and long["name"].endswith("-best")


def test_hparams_read_back_with_tensorboards_own_reader(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    trials = [{**t, "params": {**t["params"], "training.optimizer": "adam"}} for t in TRIALS[:2]]
    write_sweep_hparams(tmp_path, trials, ["val_accuracy", "val_loss"], description="test sweep")
    root = EventAccumulator(str(tmp_path))
    root.Reload()
    experiment = metadata.parse_experiment_plugin_data(root.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
    assert [(h.name, h.type) for h in experiment.hparam_infos] == [
        ("training.learning_rate", api_pb2.DATA_TYPE_FLOAT64), ("training.optimizer", api_pb2.DATA_TYPE_STRING)]
    assert [m.name.tag for m in experiment.metric_infos] == ["val_accuracy", "val_loss"]
    assert experiment.description == "test sweep"
    for t in trials:
        acc = EventAccumulator(str(tmp_path / t["trial_id"]))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["training.learning_rate"].number_value == t["params"]["training.learning_rate"]
        assert start.hparams["training.optimizer"].string_value == "adam"
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS
        values = [(e.step, round(e.value, 6)) for e in acc.Scalars("val_accuracy")]
        assert values == [(int(k), round(v["val_accuracy"], 6)) for k, v in t["epochs"].items()]


def test_the_tune_section_maps_onto_ray_tunes_scheduler_and_search(tmp_path: Path) -> None:
    """No Ray instance: only the objects Tuner gets (ASHA in epochs, PBT mutations, concurrency)."""
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.sample import Float

    from orchestrator.sweep.models import SweepSpec
    from orchestrator.sweep.schedulers import PromptASHAScheduler
    from orchestrator.sweep.tuning import build_scheduler, build_search, check_fits

    sweep = load_sweep_spec(REPO / "jobs" / "cnn-sweep.yaml")
    asha = build_scheduler(sweep, "sweep-1")
    assert isinstance(asha, PromptASHAScheduler) and asha.sweep_id == "sweep-1"
    assert (asha._time_attr, asha._max_t) == ("epoch", 4)
    space, search = build_search(sweep, max_concurrent=2)
    assert isinstance(space["training.learning_rate"], Float)
    assert space["training.learning_rate"].lower == 1e-4 and space["training.learning_rate"].upper == 1e-1
    assert isinstance(search, BasicVariantGenerator) and search.max_concurrent == 2

    data = sweep.to_record_spec()
    data["tune"] = {**data["tune"], "scheduler": {"type": "pbt", "perturbation_interval": 1},  # type: ignore[dict-item]
                    "search_space": {"training.learning_rate": "choice([0.001, 0.01])",
                                     "model.dropout": "uniform(0.1, 0.5)"}}
    pbt = build_scheduler(SweepSpec.from_record_spec(data), "sweep-1")
    assert pbt._perturbation_interval == 1 and pbt._time_attr == "epoch"
    assert pbt._hyperparam_mutations["training.learning_rate"] == [0.001, 0.01]
    assert isinstance(pbt._hyperparam_mutations["model.dropout"], Float)
    # PBT's x1.2 / x0.8 perturbations are clipped back into each range (a dropout of 0.6 is refused)
    assert pbt._custom_explore_fn({"model.dropout": 0.6, "training.learning_rate": 0.01}) == {
        "model.dropout": 0.5, "training.learning_rate": 0.01}
    assert pbt._custom_explore_fn({"model.dropout": 0.05})["model.dropout"] == 0.1

    # a trial needs workers x cpus_per_worker + trial_cpus = 0.6 CPUs: 3 fit in 2 CPUs, max_concurrent says 2
    assert check_fits(sweep, {"CPU": 2.0}) == 2
    assert check_fits(sweep, {"CPU": 1.0}) == 1
    from orchestrator.errors import BackendError

    with pytest.raises(BackendError) as info:
        check_fits(sweep, {"CPU": 0.5})
    assert "1 x 0.5 CPUs for its workers + 0.1 for itself = 0.6" in info.value.reasons[0]

    # a searched worker count counts at its largest value: 8 x 0.5 + 0.1 never fits 2 CPUs
    data = sweep.to_record_spec()
    data["tune"] = {**data["tune"], "search_space": {"resources.workers": "choice([1, 8])"}}  # type: ignore[dict-item]
    with pytest.raises(BackendError) as info:
        check_fits(SweepSpec.from_record_spec(data), {"CPU": 2.0})
    assert "8 x 0.5 CPUs for its workers + 0.1 for itself = 4.1 (at the largest values of resources.workers)" \
        in info.value.reasons[0], info.value.reasons
    assert "narrow the search over resources.workers" in info.value.fix


def test_an_interrupt_stops_the_running_trials_waits_for_them_then_stops_tune_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle
    import signal
    from types import SimpleNamespace

    from orchestrator.sweep import trial as trial_mod

    log: list[tuple[str, ...]] = []

    class Call:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self.fn = name, fn

        def remote(self, *args: Any) -> Any:
            log.append((self.name, *args))
            return self.fn(*args)

    class Sink:
        def __init__(self, trial_id: str, returns_after: int) -> None:
            self.polls = 0
            self.request_stop = Call(f"stop {trial_id}", lambda reason: None)

            def returned() -> bool:
                self.polls += 1
                return self.polls > returns_after
            self.returned = Call(f"returned? {trial_id}", returned)

    sinks = {"t1": Sink("t1", returns_after=2), "t3": Sink("t3", returns_after=0)}
    monkeypatch.setattr(trial_mod, "trial_sink", lambda sweep_id, trial_id: sinks.get(trial_id))
    monkeypatch.setattr(trial_mod.ray, "get", lambda value, timeout=None: value)
    monkeypatch.setattr(trial_mod, "POLL_S", 0.01)
    monkeypatch.setattr(trial_mod, "_INTERRUPTING", set())
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: log.append(("SIGUSR1",)))
    try:
        trials = [SimpleNamespace(trial_id="t0", status="TERMINATED"), SimpleNamespace(trial_id="t1", status="RUNNING"),
                  SimpleNamespace(trial_id="t2", status="PENDING"), SimpleNamespace(trial_id="t3", status="RUNNING"),
                  SimpleNamespace(trial_id="t4", status="RUNNING")]  # t4: no sink yet (its actor is starting)
        callback = trial_mod.InterruptTrials("sweep-a")
        callback.on_step_end(iteration=1, trials=trials)
        trial_mod.mark_interrupting("sweep-b")
        callback.on_step_end(iteration=2, trials=trials)
        assert log == []  # no interrupt of this sweep yet
        trial_mod.mark_interrupting("sweep-a")
        callback.on_step_end(iteration=3, trials=trials)
        callback.on_step_end(iteration=4, trials=trials)  # once only
        stops = [e for e in log if e[0].startswith("stop")]
        assert stops == [("stop t1", trial_mod.SWEEP_INTERRUPTED), ("stop t3", trial_mod.SWEEP_INTERRUPTED)]
        # Tune is stopped (SIGUSR1) only after every asked trial's training function returned
        assert log[-1] == ("SIGUSR1",) and log.count(("SIGUSR1",)) == 1
        assert sinks["t1"].polls == 3 and sinks["t3"].polls == 1
        # Tune pickles the callback with the experiment: a resumed sweep gets one that can interrupt again
        restored = pickle.loads(pickle.dumps(callback))
        assert restored.sweep_id == "sweep-a"
        trial_mod.clear_interrupting("sweep-a")  # what the driver does when it runs (or resumes) the sweep
        restored.on_step_end(iteration=1, trials=trials)
        assert log.count(("SIGUSR1",)) == 1
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_resumed_pbt_trial_keeps_its_own_newer_checkpoint_and_an_exploit_takes_the_copy(tmp_path: Path) -> None:
    import json
    import shutil

    from orchestrator.runtime.checkpoints import CheckpointManager
    from orchestrator.sweep.trial import SOURCE_FILE, TAKEN_FILE, replace_with_copy

    def write(step: int, directory: Path) -> Path:
        return CheckpointManager(directory).save(lambda d: (d / "state.bin").write_bytes(b"w" * step),
                                                 step=step, epoch=step // 10).path

    own = tmp_path / "own"
    save = tmp_path / "tune-save"
    save.mkdir()
    shutil.copytree(write(20, tmp_path / "then"), save / "ckpt-0000000020")
    (save / SOURCE_FILE).write_text(json.dumps({"trial_id": "t1", "step": 20}))
    assert replace_with_copy(save, own, "t1")  # nothing of its own yet: take the save
    write(20, own)
    assert not replace_with_copy(save, own, "t1")  # the same step: keep its own
    write(40, own)
    assert not replace_with_copy(save, own, "t1")  # a resumed sweep: continue from step 40, not 20
    assert replace_with_copy(save, own, "t2")  # PBT's exploit: another trial's weights replace its own
    # t2 took that copy (load_checkpoint notes it in its checkpoint dir) and trained on to step 60;
    # a resumed sweep restores t2 from the same copy again: t2 keeps its own step 60
    other = tmp_path / "other"
    write(60, other)
    (other / TAKEN_FILE).write_text((save / SOURCE_FILE).read_text())
    assert not replace_with_copy(save, other, "t2")
    (other / TAKEN_FILE).write_text(json.dumps({"trial_id": "t1", "step": 10}))  # took an older copy before
    assert replace_with_copy(save, other, "t2")
    (save / SOURCE_FILE).unlink()
    assert replace_with_copy(save, own, "t1")  # an unmarked (older) save: taken, as before
    empty = tmp_path / "empty-save"
    empty.mkdir()
    assert not replace_with_copy(empty, own, "t1")  # no checkpoint in it: nothing to take
