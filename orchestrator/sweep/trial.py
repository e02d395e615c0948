"""One sweep trial as a Ray Tune trainable: the trial's job runs on the job's own Ray Train trainer.

A trial is an ordinary job with the trial's parameters set: :class:`SweepTrial` builds the trainer
with :func:`orchestrator.execution.ray_local.build_trainer` (whatever the spec's framework; a
trial with several workers is a DDP or MultiWorkerMirroredStrategy run), runs ``fit`` in a
thread, and drains the workers' event stream from the sink actor, as the job driver does. Each
``step`` returns the next epoch's metrics to Tune. When Tune stops the trial (ASHA stopped it
early, the sweep was interrupted), ``cleanup`` asks the workers through the sink to checkpoint and
stop, and waits for them, so the nested Train run ends cleanly and frees its placement group.

Each trial's artefacts live in ``<sweep dir>/trials/<trial id>/`` (checkpoints, model,
``trial.json`` with its epoch metrics); a trial restarted after an interrupted sweep resumes from
its own latest checkpoint there. This module imports Ray at the top: only the run path loads it.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.events import Epoch, events_from_wire
from orchestrator.metrics import names

#: How long a stopped trial's workers get to checkpoint and return.
GRACEFUL_STOP_S = 120.0
POLL_S = 0.25
TRIAL_FILE = "trial.json"
#: Keys of a step result that are not metrics.
EPOCH_KEY = names.EPOCH
#: The stop reason of a trial whose sweep was interrupted (cancel, Ctrl-C): it resumes later.
SWEEP_INTERRUPTED = "the sweep was interrupted"
#: In a PBT save (a Tune checkpoint): which trial it is a copy of, and its global step.
SOURCE_FILE = "source.json"
#: In a trial's checkpoint dir after PBT replaced it with a save: that save's SOURCE_FILE.
TAKEN_FILE = "taken-from.json"
#: Sweeps (by id) this process is interrupting; set from the driver's signal handler.
_INTERRUPTING: set[str] = set()


def trial_dir_of(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / trial_id


def sink_name(sweep_id: str, trial_id: str) -> str:
    """The Ray actor name of a trial's sink (the scheduler finds it by name to stop the trial at once)."""
    return f"orchestrator-sweep-sink-{sweep_id}-{trial_id}"


def _named_sink(name: str, attempts_before: int) -> Any:
    """The trial's sink actor (as :func:`orchestrator.runtime.progress.create_sink`), named."""
    from orchestrator.runtime.progress import ProgressSink, create_sink

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ProgressSink)
    try:
        return actor_cls.options(name=name).remote(attempts_before)
    except ValueError:  # the name is still held by the previous run of this trial: go unnamed
        return create_sink(attempts_before)


def trial_sink(sweep_id: str, trial_id: str) -> Any:
    """A running trial's sink actor, or None (not started yet, or gone)."""
    try:
        return ray.get_actor(sink_name(sweep_id, trial_id))
    except ValueError:
        return None


def request_trial_stop(sweep_id: str, trial_id: str, reason: str) -> bool:
    """Ask a running trial's workers to checkpoint and stop now; False when the trial has no sink."""
    sink = trial_sink(sweep_id, trial_id)
    if sink is None:
        return False
    sink.request_stop.remote(reason)
    return True


def replace_with_copy(copy_dir: Path, own_dir: Path, trial_id: str) -> Path | None:
    """The checkpoint in the Tune checkpoint ``copy_dir`` (a :meth:`SweepTrial.save_checkpoint`
    copy) that a trial restored from it should replace its own checkpoints with, or None: another
    trial's copy (PBT's exploit) and its own copy when it has nothing newer are taken; not when the
    trial has since written a newer valid checkpoint (a resumed sweep: continue from that one)."""
    from orchestrator.runtime.checkpoints import PREFIX, CheckpointManager

    copies = sorted(p for p in copy_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    if not copies:
        return None
    try:
        source = json.loads((copy_dir / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return copies[-1]  # an unmarked copy: as before, take it
    if source.get("trial_id") != trial_id:
        # PBT's exploit: take the other trial's weights, unless this trial took this very copy
        # before and trained on since (Tune restores a resumed trial from its last checkpoint,
        # which after an exploit is the other trial's save)
        try:
            taken = json.loads((own_dir / TAKEN_FILE).read_text())
        except (OSError, ValueError):
            return copies[-1]
        if taken != {"trial_id": source.get("trial_id"), "step": source.get("step")}:
            return copies[-1]
    own = CheckpointManager(own_dir).latest_valid().checkpoint if own_dir.exists() else None
    return copies[-1] if own is None or own.step < int(source.get("step", 0)) else None


def mark_interrupting(sweep_id: str) -> None:
    """Called from the sweep driver's signal handler (so it only records the fact): the next
    :class:`InterruptTrials` callback stops the running trials, then Tune."""
    _INTERRUPTING.add(sweep_id)


def clear_interrupting(sweep_id: str) -> None:
    """Forget an interrupt (a sweep run or resumed again in this process starts afresh)."""
    _INTERRUPTING.discard(sweep_id)


class InterruptTrials(tune.Callback):  # type: ignore[misc]
    """Interrupts a sweep: its running trials stop at once, then Tune stops with its state saved.

    The driver's signal handler (cancel, Ctrl-C) only records the interrupt
    (:func:`mark_interrupting`). At the end of the next step of Tune's loop, this callback asks each
    running trial's workers through the trial's sink to checkpoint and stop now, waits (at most
    ``GRACEFUL_STOP_S``) until each has (rank 0's training function has returned: the sink has its
    last event), and then raises SIGUSR1, Tune's own
    graceful stop, whose handler sets Tune's interrupt flag before the loop looks at it again.
    So Tune leaves its loop right after this step: the trials stay RUNNING in the experiment state
    it saved (a resume reruns them from their checkpoints), the results their stop produced are
    never processed, and when Tune then stops the trial actors (killing any still busy after about
    10 s) their workers have long written their checkpoints. Without this, Tune stops a trial only
    after its ``step`` in flight returns (the trial's next epoch), and the workers' stop comes after
    that. Only the sweep id is kept: Tune pickles the callback with the experiment and restores it
    on resume.
    """

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        self._sent = False

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._sent or self.sweep_id not in _INTERRUPTING:
            return
        self._sent = True
        sinks = {}
        for trial in trials:
            if trial.status == "RUNNING":
                sink = trial_sink(self.sweep_id, trial.trial_id)
                if sink is not None:
                    sink.request_stop.remote(SWEEP_INTERRUPTED)
                    sinks[trial.trial_id] = sink
        deadline = time.time() + GRACEFUL_STOP_S
        while sinks and time.time() < deadline:
            for trial_id, sink in list(sinks.items()):
                try:
                    ended = ray.get(sink.returned.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - a lost sink: nothing to wait for
                    ended = True
                if ended:
                    del sinks[trial_id]
            if sinks:
                time.sleep(POLL_S)
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.raise_signal(signal.SIGUSR1)  # Tune's handler: it leaves its loop after this step

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "_sent": False}


class SweepTrial(tune.Trainable):  # type: ignore[misc]
    """Runs one trial's job; see the module docstring."""

    def setup(self, config: dict[str, Any], sweep: dict[str, Any] | None = None, data: Any = None) -> None:
        from orchestrator.execution.driver import job_paths
        from orchestrator.execution.tracker import RunTracker
        from orchestrator.spec.models import JobSpec
        from orchestrator.store import JobRecord, JobState
        from orchestrator.sweep.loader import apply_params

        assert sweep is not None
        self.params = {k: v for k, v in config.items()}
        base: JobSpec = sweep["job"]  # typed (trial_job): the sweep's spec was validated when it was loaded
        self.spec = apply_params(base, self.params)
        self.trial_path = trial_dir_of(sweep["sweep_dir"], self.trial_id)
        self.trial_path.mkdir(parents=True, exist_ok=True)
        self.record = JobRecord(
            id=f"{sweep['sweep_id']}-{self.trial_id}", name=self.spec.name, backend="local",
            state=JobState.RUNNING, spec=self.spec.model_dump(mode="json"), job_dir=self.trial_path,
            created_at=time.time(),
        )
        self.paths = job_paths(self.record, self.spec, with_storage=False)
        if self.spec.checkpoint.dir:  # one directory per trial below it: a directory has one owner
            self.paths["checkpoint_dir"] = str(Path(self.spec.checkpoint.dir) / self.record.id)
        self.tracker = RunTracker()
        self.data_ref = ray.put(data)
        self.sink = _named_sink(sink_name(sweep["sweep_id"], self.trial_id), self._previous_starts())
        self._pending: list[dict[str, Any]] = []
        self._outcome: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._stopped_by_tune = False
        self._interrupted = False
        self._stop_reason_seen: str | None = None
        self._saved = False
        self._restore_recorded = False
        self._write_trial_file(state="running")

    # -- Tune's interface ----------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        if self._thread is None:
            self._start_fit()
        while True:
            if self._pending:
                return self._pending.pop(0)
            assert self._thread is not None
            if not self._thread.is_alive():
                self._drain()
                self._note_interrupt()
                if self._pending:
                    continue
                return self._final_result()
            self._thread.join(POLL_S)
            self._drain()

    def cleanup(self) -> None:
        """Stop the workers gracefully (they checkpoint), wait for them, record the outcome."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            last = max(self.tracker.epoch_metrics, default=0)
            if last < self.spec.training.epochs:  # past the last epoch the workers only export the model
                # the scheduler (PromptASHAScheduler) has already told the workers why; no reason yet
                # means the sweep itself is stopping (interrupted, or PBT replacing this trial)
                reason = self._stop_reason()
                self._stopped_by_tune = True
                self._interrupted = reason in (None, SWEEP_INTERRUPTED)
                if reason is None:
                    self._stop_reason_seen = "the sweep stopped this trial"
                    self.sink.request_stop.remote(self._stop_reason_seen)
            deadline = time.time() + GRACEFUL_STOP_S
            while thread.is_alive() and time.time() < deadline:
                thread.join(POLL_S)
                self._drain()
        self._drain()
        self._note_interrupt()
        self._write_trial_file(state=self._state())

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """For PBT: a copy of this trial's newest valid checkpoint (the workers write them), marked
        with the trial it came from."""
        from orchestrator.runtime.checkpoints import CheckpointManager

        for _ in range(3):  # the workers may replace the newest one while it is copied (checkpoint.keep)
            found = CheckpointManager(self.paths["checkpoint_dir"]).latest_valid().checkpoint
            if found is None:
                return
            try:
                shutil.copytree(found.path, Path(checkpoint_dir) / found.path.name, dirs_exist_ok=True)
                (Path(checkpoint_dir) / SOURCE_FILE).write_text(json.dumps({"trial_id": self.trial_id,
                                                                            "step": found.step}))
                return
            except (FileNotFoundError, shutil.Error):
                shutil.rmtree(Path(checkpoint_dir) / found.path.name, ignore_errors=True)

    def load_checkpoint(self, checkpoint: str | dict[str, Any] | None) -> None:
        """For PBT: continue from another trial's checkpoint, copied into this trial's checkpoint dir
        before the workers start (they restore the newest one there, then train with this trial's
        own parameters). Tune also restores a trial from its last Tune checkpoint when an
        interrupted sweep resumes: the trial's own newer checkpoints are then kept (no roll-back,
        :func:`replace_with_copy`)."""
        if not isinstance(checkpoint, str):
            return
        target = Path(self.paths["checkpoint_dir"])
        taken = replace_with_copy(Path(checkpoint), target, self.trial_id)
        if taken is None:
            return
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(taken, target / taken.name)
        if (Path(checkpoint) / SOURCE_FILE).is_file():
            shutil.copyfile(Path(checkpoint) / SOURCE_FILE, target / TAKEN_FILE)

    # -- the nested Train run ------------------------------------------------------------------
    def _start_fit(self) -> None:
        from orchestrator.execution.ray_local import build_trainer

        trainer = build_trainer(self.spec, self.record, self.paths, self.data_ref, self.sink)

        def fit() -> None:
            try:
                self._outcome["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to step()
                self._outcome["error"] = exc

        self._thread = threading.Thread(target=fit, name="trial-fit", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            wire = ray.get(self.sink.drain.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a slow sink only delays the next result
            return
        for event in events_from_wire(wire):
            self.tracker.apply(event)
            match event:
                case Epoch():
                    metrics = {k: float(v) for k, v in event.metrics.items()}
                    self._pending.append({EPOCH_KEY: int(event.epoch), **metrics})
                    self._write_trial_file(state="running")

    def _final_result(self) -> dict[str, Any]:
        from orchestrator.errors import TrainingError
        from orchestrator.execution.ray_local import describe_training_error

        self._write_trial_file(state=self._state())
        if "error" in self._outcome:
            reason = self.tracker.last_failure() or describe_training_error(self._outcome["error"])
            raise TrainingError(f"trial {self.trial_id} failed: {reason}")
        # a trial restarted after its last epoch (the sweep was interrupted while it exported its
        # model) trains no epoch again: its metrics are those it recorded before
        epochs = {**self._previous_epochs(), **self.tracker.epoch_metrics}
        last = max(epochs, default=0)
        result: dict[str, Any] = {EPOCH_KEY: last, **(epochs.get(last) or {}), **self.tracker.final_metrics}
        result["done"] = True
        return result

    def _stop_reason(self) -> str | None:
        """Why the workers were asked to stop (the first request wins); None: not asked."""
        try:
            reason = ray.get(self.sink.stop_reason.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a lost sink: count it as the sweep stopping
            return None
        self._stop_reason_seen = reason or self._stop_reason_seen
        return reason

    def _note_interrupt(self) -> None:
        """The workers stopped because the sweep is being interrupted (:class:`InterruptTrials`):
        the trial is interrupted (it resumes), not stopped."""
        if self.tracker.stopped and self._stop_reason_seen is None:
            self._stop_reason()
        if self._stop_reason_seen == SWEEP_INTERRUPTED:
            self._interrupted = True

    # -- the trial's record ---------------------------------------------------------------------
    def _state(self) -> str:
        if "error" in self._outcome:
            return "failed"
        if self._interrupted and not self.tracker.final_metrics:
            return "interrupted"
        if self._stopped_by_tune or self.tracker.stopped:
            return "stopped"
        if self.tracker.final_metrics:
            return "succeeded"
        return "running"

    def _previous(self) -> dict[str, Any]:
        """This trial's ``trial.json`` from an earlier start (empty for a new trial)."""
        try:
            data = json.loads((self.trial_path / TRIAL_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _restored_steps(self, previous: dict[str, Any]) -> list[int | None]:
        """Per start of this trial, the global step its workers restored (None: from scratch)."""
        steps = list(previous.get("restored_steps") or [])
        if self.tracker.attempts and not self._restore_recorded:
            self._restore_recorded = True
            steps.append(self.tracker.attempts[0].get("restored_step"))
        return steps

    def _previous_starts(self) -> int:
        return int(self._previous().get("starts", 0))

    def _previous_epochs(self) -> dict[int, dict[str, float]]:
        return {int(k): v for k, v in (self._previous().get("epochs") or {}).items()}

    def _write_trial_file(self, state: str) -> None:
        """``trial.json``: what this trial did, for the leaderboard (read by the sweep driver)."""
        path = self.trial_path / TRIAL_FILE
        previous = self._previous()
        starts = int(previous.get("starts", 0)) + (0 if self._saved else 1)
        self._saved = True
        epochs = {**{int(k): v for k, v in (previous.get("epochs") or {}).items()}, **self.tracker.epoch_metrics}
        model_dir = Path(self.paths["model_dir"])
        from orchestrator.runtime.checkpoints import CheckpointManager

        found = CheckpointManager(self.paths["checkpoint_dir"]).list()
        data = {
            "trial_id": self.trial_id,
            "params": self.params,
            "state": state,
            "starts": starts,
            "epochs": {str(k): v for k, v in sorted(epochs.items())},
            "final": self.tracker.final_metrics or previous.get("final") or {},
            "checkpoint": str(found[0].path) if found else None,
            "model_dir": str(model_dir) if model_dir.exists() and any(model_dir.iterdir()) else None,
            "spec": self.spec.model_dump(mode="json"),
            "restored_steps": self._restored_steps(previous),
            "stop_reason": self._stop_reason_seen if self.tracker.stopped else None,
            "workers": self.spec.resources.workers,
            "sync_backend": self.tracker.sync_backend or previous.get("sync_backend"),
            "device": self.tracker.device or previous.get("device"),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, default=str))
        tmp.replace(path)
