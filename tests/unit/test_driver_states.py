"""The driver's parts without Ray: its state machine step by step, the event fan-out, the typed
result, and the queues' decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import events as ev
from orchestrator.execution.admission import Admitted, Continue, Preempted, Waiting, decision_of
from orchestrator.execution.fanout import Fanout, Sink, StoreSink
from orchestrator.execution.result import JobResult
from orchestrator.execution.states import TRANSITIONS, IllegalTransition, Next, RunMachine, RunState
from orchestrator.execution.tracker import Recovery, RunTracker


def training() -> RunMachine:
    m = RunMachine()
    m.admitted()
    m.training()
    assert m.state is RunState.TRAINING
    return m


def test_a_run_that_completes_goes_queued_starting_training_done() -> None:
    m = training()
    assert m.after_fit(fit_failed=False, workers_stopped=False) is Next.COMPLETED
    m.finish()
    assert m.history == [RunState.QUEUED, RunState.STARTING, RunState.TRAINING]
    assert m.state is RunState.DONE and m.done


def test_a_preempted_run_stops_requeues_and_trains_again() -> None:
    m = training()
    assert m.preempt("high") == "preempted by high"
    assert m.request_stop("preempted by high", now=10.0)
    assert (m.state, m.preempted_by, m.stop_requested_at) == (RunState.STOPPING, "high", 10.0)
    assert m.after_fit(fit_failed=False, workers_stopped=True) is Next.REQUEUE
    m.requeue()
    assert m.state is RunState.QUEUED and (m.stop_reason, m.preempted_by, m.stop_requested_at) == (None, None, None)
    m.admitted()
    m.training()
    assert m.after_fit(fit_failed=False, workers_stopped=False) is Next.COMPLETED
    m.finish()
    assert m.history == [RunState.QUEUED, RunState.STARTING, RunState.TRAINING, RunState.STOPPING,
                         RunState.REQUEUED, RunState.QUEUED, RunState.STARTING, RunState.TRAINING]


def test_a_preempted_run_whose_fit_failed_while_stopping_requeues_too() -> None:
    m = training()
    m.request_stop(m.preempt("high") or "", now=1.0)
    assert m.after_fit(fit_failed=True, workers_stopped=False) is Next.REQUEUE


def test_a_cancel_stops_once_and_ends_cancelled() -> None:
    m = training()
    assert m.request_stop("cancelled", now=5.0)
    assert not m.request_stop("interrupt", now=6.0)  # the first reason wins; the driver forces a second Ctrl-C
    assert (m.state, m.stop_reason, m.stop_requested_at) == (RunState.STOPPING, "cancelled", 5.0)
    assert m.preempt("high") is None  # stopping anyway: a preemption changes nothing
    assert m.preempted_by is None
    assert m.after_fit(fit_failed=False, workers_stopped=True) is Next.CANCELLED
    assert m.after_fit(fit_failed=True, workers_stopped=False) is Next.CANCELLED  # Ray stopped: still a cancel
    m.finish()
    assert m.state is RunState.DONE


def test_workers_that_stopped_on_their_own_end_the_run_cancelled() -> None:
    assert training().after_fit(fit_failed=False, workers_stopped=True) is Next.CANCELLED


def test_a_failed_fit_nobody_stopped_is_a_failure() -> None:
    m = training()
    assert m.after_fit(fit_failed=True, workers_stopped=False) is Next.FAILED
    m.finish()
    m.finish()  # the frame may finish again after an error in the first finish: no change
    assert m.state is RunState.DONE and m.history[-1] is RunState.TRAINING


def test_a_stop_while_queued_marks_the_run_and_it_ends_from_the_queue() -> None:
    m = RunMachine()
    assert m.request_stop("cancelled", now=1.0)
    assert m.state is RunState.QUEUED and m.stop_reason == "cancelled"
    m.finish()
    assert m.history == [RunState.QUEUED]


def test_a_stop_while_starting_keeps_the_run_stopping_when_training_begins() -> None:
    m = RunMachine()
    m.admitted()
    m.request_stop("interrupt", now=1.0)
    m.training()  # the workers start already told to stop
    assert m.state is RunState.STOPPING


@pytest.mark.parametrize(("path", "bad"), [
    ((), RunState.TRAINING),  # never admitted
    ((), RunState.REQUEUED),
    ((RunState.STARTING, RunState.TRAINING), RunState.REQUEUED),  # requeued without stopping
    ((RunState.STARTING, RunState.TRAINING), RunState.QUEUED),
    ((RunState.STARTING, RunState.TRAINING, RunState.DONE), RunState.QUEUED),  # nothing after done
    ((RunState.STARTING, RunState.TRAINING, RunState.STOPPING), RunState.TRAINING),
])
def test_illegal_transitions_are_refused(path: tuple[RunState, ...], bad: RunState) -> None:
    m = RunMachine()
    for state in path:
        m.to(state)
    with pytest.raises(IllegalTransition, match=f"from {m.state.value} to {bad.value}"):
        m.to(bad)
    assert m.state is (path[-1] if path else RunState.QUEUED)  # a refused transition changes nothing


def test_a_requeue_needs_a_stopping_run() -> None:
    with pytest.raises(IllegalTransition):
        training().requeue()


def test_every_state_but_done_can_end() -> None:
    assert all(RunState.DONE in nxt for state, nxt in TRANSITIONS.items() if state is not RunState.DONE)
    assert TRANSITIONS[RunState.DONE] == frozenset()


# -- the queues' decisions ------------------------------------------------------------------------
def test_queue_answers_become_decisions() -> None:
    assert decision_of({"action": "run"}) == Admitted()
    wait = decision_of({"action": "wait", "reason": "2 more CPUs needed", "permanent": False})
    assert wait == Waiting(("2 more CPUs needed",), False) and isinstance(wait, Waiting)
    assert wait.reason == "2 more CPUs needed"
    assert decision_of({"action": "continue"}) == Continue()
    assert decision_of({"action": "preempt", "by": "high"}) == Preempted("high")
    assert decision_of({"action": "preempt", "by": None}) == Preempted("a job of higher priority")
    with pytest.raises(ValueError, match="unknown queue answer"):
        decision_of({"action": "dance"})


# -- the fan-out ----------------------------------------------------------------------------------
class Recorder(Sink):
    def __init__(self, name: str, seen: list[tuple[str, Any]]) -> None:
        self.name, self.seen = name, seen

    def on_event(self, event: ev.Event) -> None:
        self.seen.append((self.name, event.KIND))

    def on_recovery(self, recovery: Recovery) -> None:
        self.seen.append((self.name, f"recovery {recovery.attempt}"))


def test_the_fanout_folds_events_then_passes_each_to_every_sink_in_order() -> None:
    tracker = RunTracker()
    seen: list[tuple[str, Any]] = []
    saves: list[int] = []
    fanout = Fanout(tracker, [Recorder("a", seen), Recorder("b", seen), StoreSink(lambda: saves.append(1))])
    fanout.publish([
        ev.AttemptStart(time=1.0, attempt=1),
        ev.Epoch(epoch=1, metrics={"val_accuracy": 0.5}),
        ev.FirstStep(time=2.0, attempt=1),
    ])
    assert seen == [("a", "attempt_start"), ("b", "attempt_start"), ("a", "epoch"), ("b", "epoch"),
                    ("a", "first_step"), ("b", "first_step")]
    assert tracker.epoch_metrics == {1: {"val_accuracy": 0.5}}  # the tracker saw each event first
    assert saves == [1]  # the store once per batch that changed progress
    fanout.publish([ev.Step(epoch=1, step=3, steps=10, loss=0.5, global_step=3)])
    assert saves == [1]  # a step changes no visible progress


def test_recoveries_reach_the_sinks_once() -> None:
    tracker = RunTracker()
    seen: list[tuple[str, Any]] = []
    fanout = Fanout(tracker, [Recorder("m", seen)])
    fanout.publish([
        ev.AttemptStart(time=1.0, attempt=1),
        ev.Step(epoch=1, step=10, steps=10, loss=0.5, global_step=10),
        ev.Injected(time=2.0, reason="boom", global_step=10),
        ev.AttemptStart(time=3.0, attempt=2, restored_step=4),
        ev.FirstStep(time=5.0, attempt=2),
    ])
    assert ("m", "recovery 2") in seen and tracker.new_recoveries == []
    fanout.publish([])
    assert seen.count(("m", "recovery 2")) == 1


# -- the typed result -----------------------------------------------------------------------------
def test_the_result_keeps_the_stored_keys_and_their_order(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.pt").write_bytes(b"x")
    (model_dir / "model.json").write_text("{}")
    tracker = RunTracker(epoch_metrics={1: {"val_accuracy": 0.5, "epoch_seconds": 2.0, "samples_per_second": 10.0},
                                        2: {"val_accuracy": 0.75, "epoch_seconds": 2.0, "samples_per_second": 30.0}},
                         final_metrics={"test_accuracy": 0.8}, first_step_at=105.0, device="cpu")
    result = JobResult.build(tracker, tmp_path, model_dir, "/ckpt/3", requested_at=100.0).to_dict()
    assert list(result) == ["metrics", "checkpoint", "model_path", "torchscript_path", "keras_path",
                            "saved_model_path", "model_dir", "tensorboard_dir", "time_to_first_step_s",
                            "model_checksum", "device", "sync_backend", "peak_worker_rss_bytes"]
    assert result["metrics"] == {"val_accuracy": 0.75, "epoch_seconds": 2.0, "samples_per_second": 20.0,
                                 "epochs": 2, "test_accuracy": 0.8}
    assert result["model_path"] == str(model_dir / "model.pt") and result["torchscript_path"] is None
    assert result["model_dir"] == str(model_dir) and result["checkpoint"] == "/ckpt/3"
    assert result["time_to_first_step_s"] == 5.0 and result["device"] == "cpu"
    assert result["tensorboard_dir"] == str(tmp_path / "tensorboard")


def test_a_gans_result_names_its_generator_and_samples(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "generator_saved_model").mkdir(parents=True)
    result = JobResult.build(RunTracker(), tmp_path, model_dir, None, requested_at=0.0).to_dict()
    assert result["generator_path"] == str(model_dir / "generator_saved_model")
    assert result["samples_dir"] == str(tmp_path / "samples")
    assert list(result).index("generator_path") == list(result).index("model_dir") + 1
    assert result["time_to_first_step_s"] is None and result["metrics"] == {}


def test_sinks_registered_later_receive_the_next_batches() -> None:
    seen: list[tuple[str, Any]] = []
    fanout = Fanout(RunTracker())
    fanout.publish([ev.Step(epoch=1, step=1, steps=10, loss=0.5, global_step=1)])
    fanout.register(Recorder("late", seen))
    fanout.publish([ev.Step(epoch=1, step=2, steps=10, loss=0.5, global_step=2)])
    assert seen == [("late", "step")]


# -- the driver's own wiring, without Ray ---------------------------------------------------------
class FakeBoard:
    def __init__(self) -> None:
        self.points: list[tuple[dict[str, float], int]] = []

    def scalars(self, tags: dict[str, float], step: int) -> None:
        self.points.append((tags, step))

    def flush(self) -> None:
        pass


class FakeUI:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def on_event(self, event: ev.Event) -> None:
        self.events.append(event)


def test_the_driver_sends_each_event_to_tensorboard_the_ui_and_the_store(tmp_path: Path) -> None:
    from orchestrator.backends.base import SubmitOptions
    from orchestrator.backends.local import LocalBackend
    from orchestrator.execution.driver import Driver
    from orchestrator.settings import Settings
    from orchestrator.spec.models import JobSpec

    settings = Settings.from_env({"ORCHESTRATOR_HOME": str(tmp_path / "home")})
    record = LocalBackend(settings).create_record(
        JobSpec.model_validate({"name": "wired", "model": {"type": "cnn"}, "training": {"epochs": 4}}), SubmitOptions())
    ui = FakeUI()
    driver = Driver(settings, record.id, ui, install_signal_handlers=False, metrics_port=None)  # type: ignore[arg-type]
    assert driver.machine.state is RunState.QUEUED and driver.spec.training.epochs == 4
    driver._tb = FakeBoard()
    driver._register_sinks()
    epoch = ev.Epoch(epoch=1, global_step=5, metrics={"train_loss": 0.5, "val_accuracy": 0.25})
    driver.fanout.publish([epoch])
    assert driver._tb.points == [({"loss/train": 0.5, "accuracy/validation": 0.25}, 1)]
    assert ui.events == [epoch]
    assert driver.store.get(record.id).progress == {"epoch": 1, "epochs": 4, "train_loss": 0.5, "val_accuracy": 0.25}
