"""The sweep driver: runs a sweep on Ray Tune to a terminal state and records it in the job store.

:class:`SweepDriver` is to a sweep what :class:`orchestrator.execution.driver.Driver` is to a job.
It marks the sweep running (with its pid, so a killed sweep is detected later), prepares the data
once, starts or joins Ray (dashboard on: a Train run nested in a Tune trial leaks its placement
group without it), and runs ``Tuner.fit`` -- or ``Tuner.restore(...).fit()`` to resume, which
reruns no finished trial. While it runs, a watcher thread reads each trial's ``trial.json`` into
the live table and the store. At the end it writes the leaderboard, the budget early stopping
saved, the best trial's job spec, checkpoint and model, and the sweep's TensorBoard hparams.

``orchestrator cancel`` (SIGTERM) and Ctrl-C (SIGINT; a second one ends the sweep at once)
interrupt the sweep the way Tune expects (its own SIGUSR1 graceful stop): Tune stops the trials,
whose workers checkpoint, and saves the experiment's state; ``orchestrator resume SWEEP``
continues it. The running trials' workers are told to stop at once
(:class:`orchestrator.sweep.trial.InterruptTrials`) rather than after their current epoch.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from orchestrator.errors import TrainingError
from orchestrator.execution.frame import RunFrame, detach_job_log, shutdown_ray
from orchestrator.private import write_private_text
from orchestrator.settings import Settings
from orchestrator.spec.loader import dump_yaml
from orchestrator.spec.models import JobSpec
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore
from orchestrator.sweep.models import SweepSpec
from orchestrator.sweep.report import (
    TrialRow,
    best_spec_data,
    best_spec_yaml,
    best_trial,
    budget,
    leaderboard,
    trial_row,
)
from orchestrator.sweep.tuning import build_scheduler, build_search, check_fits, quiet_tune, result_loggers

log = logging.getLogger("orchestrator.sweep")

WATCH_INTERVAL_S = 1.0
EXPERIMENT_DIR = "ray"



def trial_job(sweep: SweepSpec) -> JobSpec:
    """The job every trial starts from: the sweep's job, trained for at most ``max_epochs()`` epochs
    (an ASHA ``max_t`` below ``training.epochs`` ends trials there as finished, with their model).
    Typed: fewer epochs than a valid spec's is still valid, so nothing is validated again."""
    training = sweep.job.training.model_copy(update={"epochs": sweep.max_epochs()})
    return sweep.job.model_copy(update={"training": training})

class SweepEvents(Protocol):
    """What the terminal UI receives while a sweep runs."""

    def on_start(self, record: JobRecord, info: dict[str, Any]) -> None: ...

    def on_trials(self, rows: list[TrialRow], total: int) -> None: ...

    def on_finish(self, record: JobRecord) -> None: ...


def create_sweep_record(settings: Settings, sweep: SweepSpec, backend: str = "local",
                        ray_address: str | None = None) -> JobRecord:
    """A pending sweep in the job store (its spec: the job's fields plus ``tune``); ``ray_address``,
    the cluster a ``--backend ray`` sweep joined, is kept so that a resume joins it again."""
    from orchestrator.execution.driver import check_framework_available

    check_framework_available(sweep.job)
    store = JobStore(settings.db_path)
    data = sweep.to_record_spec()

    def make(sweep_id: str) -> JobRecord:
        return JobRecord(id=sweep_id, name=sweep.name, backend=backend, state=JobState.PENDING, spec=data,
                         job_dir=settings.job_dir(sweep_id), created_at=time.time(),
                         result={"kind": "sweep", "total_trials": sweep.tune.total_trials,
                                 **({"ray_address": ray_address} if ray_address else {})})

    record = store.create_new(sweep.name, make)  # the row first: a taken id never overwrites a sweep's files
    write_private_text(record.job_dir / "sweep.yaml", dump_yaml(data))
    return record


def experiment_path(record: JobRecord) -> Path:
    return record.job_dir / EXPERIMENT_DIR / record.id


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every trial's ``trial.json`` (trials that have not started have none)."""
    out = []
    for path in sorted((sweep_dir / "trials").glob("*/trial.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now: the next look sees it
    return out


class SweepDriver(RunFrame):
    """Runs one sweep (new or resumed) to a terminal state. Construct, then call :meth:`run`."""

    error_label = "sweep driver"

    def __init__(self, settings: Settings, sweep_id: str, events: SweepEvents | None = None, *,
                 install_signal_handlers: bool = True) -> None:
        self.settings = settings
        self.store = JobStore(settings.db_path)
        self.record = self.store.get(sweep_id)
        self.sweep = SweepSpec.from_record_spec(self.record.spec)
        self.events = events
        self.install_signal_handlers = install_signal_handlers
        self._stop_reason: str | None = None
        self._tuning = False
        self._watch_stop = threading.Event()

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        reason = "interrupted" if signum == signal.SIGINT else "cancelled"
        if self._stop_reason is not None and reason == "interrupted":  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_reason = reason
        log.info("stop requested (%s): trials checkpoint and stop; the sweep can be resumed", reason)
        if self._tuning and hasattr(signal, "SIGUSR1"):
            from orchestrator.sweep.trial import mark_interrupting

            # InterruptTrials, at the end of Tune's next step, stops the running trials at once
            # and then Tune itself with its SIGUSR1 graceful stop (the experiment's state saved)
            mark_interrupting(self.record.id)
        elif not self._tuning:
            raise KeyboardInterrupt

    # -- main ---------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> JobRecord:
        """Run (or, ``resume``, continue) the sweep to a terminal state; returns its final record."""
        sweep_dir = self.record.job_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Ctrl-C is ours too: like cancel, it stops the trials at once, then Tune (SIGUSR1)
        return self.run_framed(sweep_dir, lambda: self._run(resume),
                               signal_env={"TUNE_DISABLE_SIGINT_HANDLER": "1"})

    def _forced_cancel_message(self) -> str:
        return self._resume_message(self._stop_reason or "cancelled")

    def _run(self, resume: bool) -> JobRecord:
        quiet_tune()
        import ray
        from ray import tune

        from orchestrator.execution.ray_local import dashboard_url, start_embedded_ray
        from orchestrator.runtime.data import prepare_data
        from orchestrator.sweep.trial import InterruptTrials, SweepTrial, clear_interrupting

        sweep, record = self.sweep, self.record
        clear_interrupting(record.id)  # an interrupt of an earlier run in this process is over
        log.info("sweep %s%s: %s", record.id, " (resumed)" if resume else "", json.dumps(record.spec))
        data = prepare_data(sweep.job.data, sweep.job.training.seed)
        context = start_embedded_ray(self.settings.local_ray_address,
                                     metadata={"orchestrator_job_id": record.id, "orchestrator_job_name": record.name,
                                               "orchestrator_kind": "sweep"})
        url = dashboard_url(context)
        if not url:
            log.warning("the Ray dashboard is off: a Train run inside a Tune trial may leak its placement group")
        self._retake_signals()
        concurrent = check_fits(sweep, ray.cluster_resources())
        tb_dir = record.job_dir / "tensorboard"
        self._update_result(dashboard_url=url, tensorboard_dir=str(tb_dir), max_concurrent=concurrent,
                            experiment_path=str(experiment_path(record)))
        trainable = tune.with_resources(
            tune.with_parameters(SweepTrial, sweep={"job": trial_job(sweep),
                                                    "sweep_dir": str(record.job_dir), "sweep_id": record.id},
                                 data=data),
            {"cpu": sweep.tune.trial_cpus},
        )
        # the trial actors' class name in the Ray dashboard (else "with_resources.<locals>.ResourceTrainable")
        trainable.__name__ = trainable.__qualname__ = SweepTrial.__name__
        path = experiment_path(record)
        if resume and tune.Tuner.can_restore(str(path)):
            log.info("restoring the sweep from %s (finished trials are kept, not rerun)", path)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            space, search = build_search(sweep, concurrent)
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=sweep.tune.metric, mode=sweep.tune.mode, num_samples=sweep.tune.num_samples,
                    scheduler=build_scheduler(sweep, record.id), search_alg=search,
                    reuse_actors=False,
                ),
                run_config=tune.RunConfig(name=record.id, storage_path=str(record.job_dir / EXPERIMENT_DIR),
                                          verbose=0, log_to_file=True, callbacks=[*result_loggers(), InterruptTrials(record.id)]),
            )
        if self.events:
            self.events.on_start(self.store.get(record.id), {
                "dashboard_url": url, "tensorboard_dir": str(tb_dir), "trials": sweep.tune.total_trials,
                "max_concurrent": concurrent, "sweep_dir": str(record.job_dir), "resumed": resume,
            })
        watcher = threading.Thread(target=self._watch, name="sweep-watch", daemon=True)
        watcher.start()
        self._tuning = True
        try:
            grid = tuner.fit()
        except Exception as exc:  # noqa: BLE001 - Tune's own failure (not a trial's): one line, log has the rest
            from orchestrator.execution.ray_local import describe_training_error

            log.error("Ray Tune failed:\n%s", traceback.format_exc())
            raise TrainingError("the sweep failed in Ray Tune: " + describe_training_error(exc).removeprefix(
                "training failed: ").replace("orchestrator logs JOB", f"orchestrator logs {record.id}")) from None
        finally:
            self._tuning = False
            self._watch_stop.set()
            watcher.join(5)
        statuses = _trial_statuses(grid)
        unfinished = sum(1 for s in statuses if s not in ("TERMINATED", "ERROR"))
        errored = sum(1 for s in statuses if s == "ERROR")
        rows = self._rows()
        self._publish(rows)
        self._export(rows)
        if self._stop_reason or unfinished:
            return self._finish(JobState.CANCELLED, self._resume_message(self._stop_reason or "interrupted"))
        if not any(r.metric is not None for r in rows):
            raise TrainingError(f"no trial reported {sweep.tune.metric}: {errored} of {len(statuses)} trials failed "
                                "(see the trial logs under the sweep directory)")
        message = f"{errored} of {len(statuses)} trials failed" if errored else None
        return self._finish(JobState.SUCCEEDED, message)

    # -- live view ----------------------------------------------------------------------------------
    def _rows(self) -> list[TrialRow]:
        return [trial_row(t, self.sweep.tune.metric, self.sweep.tune.mode, self.sweep.max_epochs())
                for t in read_trials(self.record.job_dir)]

    def _watch(self) -> None:
        last: Any = None
        states: dict[str, str] = {}
        while not self._watch_stop.wait(WATCH_INTERVAL_S):
            try:
                rows = self._rows()
                key = [(r.trial_id, r.state, r.epochs_trained) for r in rows]
                if key != last:
                    last = key
                    self._publish(rows)
                    for r in rows:
                        if states.get(r.trial_id) != r.state:
                            states[r.trial_id] = r.state
                            log.info("trial %s %s (epoch %d): %s = %s, parameters %s", r.trial_id, r.state,
                                     r.epochs_trained, self.sweep.tune.metric, r.metric, r.params)
            except Exception:  # noqa: BLE001 - the view must never stop the sweep
                log.warning("sweep watcher:\n%s", traceback.format_exc())

    def _publish(self, rows: list[TrialRow]) -> None:
        total = self.sweep.tune.total_trials
        done = sum(1 for r in rows if r.state in ("succeeded", "stopped", "failed"))
        best = best_trial(rows, self.sweep.tune.mode)
        progress = {
            "trials_done": done, "trials_total": total,
            "trials_running": sum(1 for r in rows if r.state == "running"),
            "best_trial": best.trial_id if best else None,
            self.sweep.tune.metric: best.metric if best else None,
            "epochs": self.sweep.job.training.epochs,
            "trials": [r.to_json() for r in rows],
        }
        self.store.update(self.record.id, progress=progress)
        if self.events:
            self.events.on_trials(rows, total)

    # -- results ------------------------------------------------------------------------------------
    def _export(self, rows: list[TrialRow]) -> None:
        """Leaderboard, budget, TensorBoard hparams, and the best trial's spec, checkpoint and model."""
        from orchestrator.sweep.hparams import write_sweep_hparams

        sweep, sweep_dir = self.sweep, self.record.job_dir
        tune_spec = sweep.tune
        board = leaderboard(rows, tune_spec.mode)
        result: dict[str, Any] = {
            "leaderboard": [r.to_json() for r in board],
            "budget": budget(rows, tune_spec.total_trials, sweep.max_epochs()),
        }
        trials = read_trials(sweep_dir)
        tb_dir = sweep_dir / "tensorboard"
        shutil.rmtree(tb_dir, ignore_errors=True)  # rewritten whole on every run (resume included)
        metrics = [tune_spec.metric] + [m for m in ("val_accuracy", "val_loss", "train_loss")
                                        if m != tune_spec.metric]
        write_sweep_hparams(tb_dir, [{**t, "params": t.get("params") or {}} for t in trials], metrics,
                            description=f"sweep {self.record.id}: {tune_spec.metric} ({tune_spec.mode})")
        best = best_trial(rows, tune_spec.mode)
        if best is not None:
            spec = next(t["spec"] for t in trials if t["trial_id"] == best.trial_id)
            best_dir = sweep_dir / "best"
            shutil.rmtree(best_dir, ignore_errors=True)
            best_dir.mkdir(parents=True)
            spec_path = best_dir / "spec.yaml"
            spec_path.write_text(best_spec_yaml(best_spec_data(spec, sweep.name), best, self.record.id,
                                                tune_spec.metric))
            checkpoint = model = None
            if best.checkpoint and Path(best.checkpoint).is_dir():
                checkpoint = best_dir / "checkpoint" / Path(best.checkpoint).name
                shutil.copytree(best.checkpoint, checkpoint)
            if best.model_dir and Path(best.model_dir).is_dir():
                model = best_dir / "model"
                shutil.copytree(best.model_dir, model)
            result["best"] = {**best.to_json(), "spec_path": str(spec_path),
                              "checkpoint": str(checkpoint) if checkpoint else None,
                              "model_dir": str(model) if model else None}
            result["metrics"] = {**best.final, tune_spec.metric: best.metric, "epochs": best.epochs_trained}
            result["best_spec_path"] = str(spec_path)
            result["checkpoint"] = str(checkpoint) if checkpoint else None
            result["model_path"] = str(model / "model.pt") if model and (model / "model.pt").exists() else None
            # `orchestrator predict SWEEP` predicts with the best trial's model
            script = model / "model.torchscript.pt" if model else None
            result["torchscript_path"] = str(script) if script and script.exists() else None
            result["model_dir"] = str(model) if model and (model / "model.json").exists() else None  # tensorflow too
        self._update_result(**result)
        log.info("budget: %s", json.dumps(result["budget"]))

    def _resume_message(self, why: str) -> str:
        return f"{why}; `orchestrator resume {self.record.id}` continues the sweep (finished trials are kept)"

    def _finish(self, state: JobState, message: str | None) -> JobRecord:
        self.store.transition(self.record.id, state, ACTIVE_STATES, ended_at=time.time(), message=message)
        log.info("sweep %s %s%s", self.record.id, state.value, f": {message}" if message else "")
        final = self.store.get(self.record.id)
        if self.events:
            self.events.on_finish(final)
        return final

    def _shutdown(self) -> None:
        self._watch_stop.set()
        shutdown_ray()
        detach_job_log(self._log_handler)


def _trial_statuses(grid: Any) -> list[str]:
    """Each trial's Tune status (TERMINATED, ERROR, PENDING, PAUSED, RUNNING) from a ResultGrid."""
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    return [str(t.status) for t in trials]
