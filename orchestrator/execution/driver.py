"""The job driver: prepares data, starts Ray Train, and turns worker events into job state.

One class, :class:`Driver`, serves every way a local job runs: in the foreground of
``orchestrator submit`` (with a terminal UI attached), detached in a background process
(``submit --detach``), and again for ``resume``. It

* marks the job running in the store (with its pid, so a killed driver is detected later),
* prepares the data once and hands it to the workers through Ray's object store,
* runs ``TorchTrainer.fit`` in a thread while the main thread drains the workers' event
  stream into the run tracker, TensorBoard, Prometheus, the job log, the store and the UI,
* turns SIGINT/SIGTERM (and ``orchestrator cancel``) into a graceful stop: workers checkpoint
  and return, the job ends ``cancelled`` and can be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator import events as ev
from orchestrator.backends.base import EventHandler
from orchestrator.backends.ray_local import (
    build_trainer,
    check_fits_local_cluster,
    dashboard_url,
    describe_training_error,
    gcs_address,
    ray_head_gone,
    start_embedded_ray,
)
from orchestrator.errors import NotAvailableError, OrchestratorError, TrainingError
from orchestrator.execution.queue import Admission
from orchestrator.execution.tracker import RunTracker
from orchestrator.metrics import names
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore, process_start_time

log = logging.getLogger("orchestrator.driver")

POLL_INTERVAL_S = 0.25
#: After a stop request, how long workers get to checkpoint before the driver stops Ray.
GRACEFUL_STOP_TIMEOUT_S = 120.0
#: How often a running job reports to its cluster's queue (which may ask it to give way).
QUEUE_REPORT_S = 2.0
#: How often the driver checks that the Ray head (its GCS) still listens, and how many checks in a
#: row must find it gone before the job fails (Ray itself would end this process after 60 s).
HEAD_CHECK_S = 1.0
HEAD_GONE_CHECKS = 2


def job_paths(record: JobRecord, spec: JobSpec, owner: str | None = None) -> dict[str, str]:
    """Where a job writes (:class:`orchestrator.runtime.session.JobPaths`); ``job_id`` owns the
    checkpoint directory (``owner`` where the job's identity outlives its record, e.g. a
    TrainingJob whose RayJob runs again)."""
    job_dir = record.job_dir
    checkpoint_dir = Path(spec.checkpoint.dir) if spec.checkpoint.dir else job_dir / "checkpoints"
    return {
        "job_dir": str(job_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "model_dir": str(job_dir / "model"),
        "job_id": owner or record.id,
    }


def check_framework_available(spec: JobSpec) -> None:
    """Fail fast, before any job record exists, when the spec's framework cannot run here."""
    import importlib.util

    if spec.framework == "tensorflow":
        missing = [m for m in ("tensorflow", "tf_keras") if importlib.util.find_spec(m) is None]
        if missing:
            raise NotAvailableError(
                f"framework 'tensorflow' needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                "not installed",
                fix="install them: pip install 'train-orchestrator[tensorflow]' (tensorflow and tf-keras)",
            )
        return
    if importlib.util.find_spec("torch") is None:
        raise NotAvailableError(
            "framework 'torch' is not installed",
            fix="install it: pip install 'train-orchestrator[torch]' (CPU: torch==2.13.0)",
        )


def attach_job_log(path: Path) -> logging.Handler:
    """Send the ``orchestrator`` loggers' records (INFO and up) to a job's ``driver.log``."""
    from orchestrator.private import private_file

    handler = logging.FileHandler(private_file(path), encoding="utf-8")  # the log repeats the spec
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def detach_job_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("orchestrator").removeHandler(handler)
        handler.close()


def shutdown_ray() -> None:
    """``ray.shutdown()`` at a driver's exit, best effort (a failure is logged, never raised)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort at exit
        log.warning("ray.shutdown failed:\n%s", traceback.format_exc())


class Driver:
    """Runs one job to a terminal state. Construct, then call :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        events: EventHandler | None = None,
        *,
        install_signal_handlers: bool = True,
        metrics_port: int | None = 0,
        metrics_host: str = "127.0.0.1",
        metrics_linger_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.store = JobStore(settings.db_path)
        self.record = self.store.get(job_id)
        self.spec = JobSpec.model_validate(self.record.spec)
        self.events = events
        self.install_signal_handlers = install_signal_handlers
        self.paths = job_paths(self.record, self.spec, owner=settings.checkpoint_owner)
        self.tracker = RunTracker(attempts=[dict(a) for a in self.record.attempts])
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_linger_s = metrics_linger_s
        self._metrics: Any = None
        self._stop_reason: str | None = None
        self._stop_requested_at: float | None = None
        self._sink: Any = None
        self._tb: Any = None
        self._log_handler: logging.Handler | None = None
        self._admission: Any = None  # the cluster queue's handle, when the driver joined a cluster
        self._preempted_by: str | None = None
        self._gcs_address: str | None = None  # the Ray head this driver is connected to
        self._head_gone_checks = 0
        self._admitted_once = False
        self.preemptions = 0
        # "submit to first step" counts from submission; for a resumed job, from the resume.
        self.requested_at = self.record.created_at if not self.record.attempts else time.time()

    # -- signals --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the workers to checkpoint and stop (idempotent). A second Ctrl-C forces the stop."""
        if self._stop_reason is not None:
            if reason == "interrupt":
                raise KeyboardInterrupt
            return
        self._stop_reason = reason
        self._stop_requested_at = time.time()
        log.info("stop requested (%s): workers will checkpoint and stop", reason)
        if self._sink is not None:
            self._sink.request_stop.remote(reason)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop("interrupt" if signum == signal.SIGINT else "cancelled")

    # -- main -----------------------------------------------------------------------------
    def run(self) -> JobRecord:
        from orchestrator.private import private_dir

        job_dir = private_dir(self.record.job_dir)
        self._log_handler = attach_job_log(job_dir / "driver.log")
        started = self.store.transition(
            self.record.id,
            JobState.RUNNING,
            {JobState.PENDING},
            started_at=time.time(),
            driver_pid=os.getpid(),
            driver_started=process_start_time(os.getpid()),
            message=None,
        )
        if not started:
            log.info("job %s is no longer pending; nothing to run", self.record.id)
            return self.store.get(self.record.id)
        previous: dict[int, Any] = {}
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self._start_metrics()
            return self._run()
        except KeyboardInterrupt:
            return self._finish(JobState.CANCELLED, "cancelled (forced); resumable from the last checkpoint")
        except OrchestratorError as exc:
            log.error("%s", exc.render())
            return self._finish(JobState.FAILED, exc.message)
        except Exception as exc:  # noqa: BLE001 - the job must end in a state, never stay running
            log.error("driver error:\n%s", traceback.format_exc())
            return self._finish(JobState.FAILED, f"driver error: {type(exc).__name__}: {exc}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._shutdown()

    def _start_metrics(self) -> None:
        """Serve this job's Prometheus metrics while it runs (port 0 picks a free one)."""
        if self.metrics_port is None:
            return
        from orchestrator.metrics.prometheus import JobMetrics

        self._metrics = JobMetrics(self.record.id, self.spec.framework)
        self._metrics.set_state(JobState.RUNNING.value)
        port = self._metrics.serve(self.metrics_port, self.metrics_host)
        url = f"http://{self.metrics_host}:{port}/metrics"
        log.info("Prometheus metrics: %s", url)
        self._update_result(metrics_url=url)

    def _update_result(self, **values: Any) -> None:
        record = self.store.get(self.record.id)
        self.store.update(self.record.id, result={**record.result, **values})

    def _run(self) -> JobRecord:
        import ray

        from orchestrator.metrics.tensorboard import TensorBoardWriter
        from orchestrator.runtime.checkpoints import check_owner
        from orchestrator.runtime.data import prepare_data
        from orchestrator.runtime.progress import create_sink

        spec = self.spec
        log.info("job %s (%s): %s", self.record.id, spec.framework, json.dumps(self.record.spec))
        # Before Ray starts. On a Ray of its own this machine is where the workers write, so the
        # job claims the directory here; on a cluster (RAY_ADDRESS: the ray and kubernetes backends)
        # the head may not even see the workers' storage: only check, rank 0 claims it.
        check_owner(self.paths["checkpoint_dir"], self.paths["job_id"], create=not self.settings.local_ray_address)
        data = prepare_data(spec.data, spec.training.seed)
        summary = data.summary()
        log.info("data: %s", json.dumps(summary))

        if not self.settings.local_ray_address:
            # Ray of its own: the machine's queue (the job store) decides when the gang starts,
            # before Ray starts, so a waiting job holds nothing
            from orchestrator.execution.queue import MachineAdmission, machine_node
            from orchestrator.scheduler import request_from_spec

            self._admission = MachineAdmission(self.store, self.record.id, request_from_spec(spec),
                                               self.record.created_at, machine_node())
            if not self._admitted():
                return self._finish(JobState.CANCELLED, "cancelled while queued")
            self._admitted_once = True

        init_start = time.time()
        context = start_embedded_ray(
            self.settings.local_ray_address,
            metadata={"orchestrator_job_id": self.record.id, "orchestrator_job_name": self.record.name},
        )
        url = dashboard_url(context)
        self._gcs_address = gcs_address(context)
        log.info("Ray ready in %.1fs; dashboard: %s", time.time() - init_start, url or "off")
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            # ray.init installs its own SIGTERM handler (it logs "SIGTERM received" and exits):
            # take it back, so `orchestrator cancel` (SIGTERM) stops with a final checkpoint.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
        check_fits_local_cluster(spec, ray.cluster_resources())

        self._tb = TensorBoardWriter(self.record.job_dir / "tensorboard")
        tensorboard_dir = str(self.record.job_dir / "tensorboard")
        self._update_result(dashboard_url=url, tensorboard_dir=tensorboard_dir)
        if self.settings.local_ray_address:  # a shared cluster: its queue decides when the gang starts
            from orchestrator.scheduler import request_from_spec

            self._admission = Admission(self.record.id, request_from_spec(spec), self.record.created_at)
        announced = False
        data_ref = ray.put(data)
        while True:
            if self._admitted_once:
                self._admitted_once = False  # admitted before Ray started
            elif self._admission is not None and not self._admitted():
                return self._finish(JobState.CANCELLED, "cancelled while queued")
            self._sink = create_sink(attempts_before=len(self.tracker.attempts))
            if self._stop_reason:
                self._sink.request_stop.remote(self._stop_reason)
            trainer = build_trainer(spec, self.record, self.paths, data_ref, self._sink)
            if self.events and not announced:
                announced = True
                info = {
                    "dashboard_url": url,
                    "job_dir": str(self.record.job_dir),
                    "tensorboard_dir": tensorboard_dir,
                    "metrics_url": self.store.get(self.record.id).result.get("metrics_url"),
                    "data": summary,
                    "workers": spec.resources.workers,
                }
                self.events.on_start(self.store.get(self.record.id), info)
            outcome = self._fit(trainer)
            if self._preempted_by and ("error" in outcome or self.tracker.stopped):
                self._requeue()
                continue
            break
        self._write_shards()

        if "error" in outcome:
            if self._stop_reason:
                return self._finish(JobState.CANCELLED, self._cancel_message())
            if self._gcs_address and ray_head_gone(self._gcs_address):
                raise TrainingError(self._head_gone_message())
            reason = self.tracker.last_failure()
            attempts = len(self.tracker.attempts) - len(self.record.attempts)
            if reason:
                raise TrainingError(
                    f"training failed after {attempts} attempt{'s' if attempts != 1 else ''} "
                    f"(failure.max_failures = {spec.failure.max_failures}): {reason}"
                )
            raise TrainingError(describe_training_error(outcome["error"]))
        if self._stop_reason or self.tracker.stopped:
            return self._finish(JobState.CANCELLED, self._cancel_message())
        if not self.tracker.final_metrics and not spec.entrypoint:
            raise TrainingError("training ended without final metrics (see the job log)")
        return self._finish(JobState.SUCCEEDED, None)

    def _fit(self, trainer: Any) -> dict[str, Any]:
        """Run ``trainer.fit()`` while draining events, watching for cancel and preemption."""
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name="train-fit", daemon=True)
        thread.start()
        last_store_check = last_report = last_head_check = 0.0
        while thread.is_alive():
            thread.join(POLL_INTERVAL_S)
            now = time.time()
            if now - last_head_check > HEAD_CHECK_S:  # before draining: a drain waits on the dead head
                last_head_check = now
                self._check_head()
            self._drain()
            if self.tracker.permanent_failure:
                # a restart cannot cure it (a full disk): fail now, not after failure.max_failures restarts
                raise TrainingError(f"training stopped without a restart: {self.tracker.permanent_failure}")
            now = time.time()
            if now - last_store_check > 1.0:
                last_store_check = now
                if self.store.get(self.record.id).state == JobState.CANCELLING:
                    self.request_stop("cancelled")
            if self._admission is not None and now - last_report > QUEUE_REPORT_S:
                # keep reporting while stopping too, or the queue forgets a job whose workers still run
                last_report = now
                try:
                    answer = self._admission.report()
                except Exception as exc:  # noqa: BLE001 - a queue hiccup must not fail a healthy job
                    log.warning("could not report to the queue (%s); training goes on", exc)
                    answer = {"action": "continue"}
                if answer["action"] == "preempt" and not self._stop_reason:
                    self._preempted_by = answer.get("by") or "a job of higher priority"
                    self.request_stop(f"preempted by {self._preempted_by}")
            if self._stop_requested_at and now - self._stop_requested_at > GRACEFUL_STOP_TIMEOUT_S:
                log.warning("workers did not stop within %.0fs; stopping Ray", GRACEFUL_STOP_TIMEOUT_S)
                raise KeyboardInterrupt
        self._drain()
        return outcome

    def _check_head(self) -> None:
        """Fail the job, with the reason, once the Ray head (its GCS) stopped listening."""
        if not self._gcs_address:
            return
        self._head_gone_checks = self._head_gone_checks + 1 if ray_head_gone(self._gcs_address) else 0
        if self._head_gone_checks >= HEAD_GONE_CHECKS:
            raise TrainingError(self._head_gone_message())

    def _head_gone_message(self) -> str:
        """The failure text for a lost Ray head (and forget the cluster's queue, which lived there:
        telling it the job ended would wait on Ray until Ray ends this process)."""
        if isinstance(self._admission, Admission):
            self._admission = None
        ckpt = self._latest_checkpoint()
        where = f"; latest checkpoint {ckpt}" if ckpt else "; no checkpoint was written yet"
        restart = "start Ray again (`ray start --head ...`), then" if self.settings.local_ray_address else "then"
        return (
            f"the Ray head at {self._gcs_address} went away while the job ran (its GCS no longer accepts "
            f"connections: the head node died or Ray was stopped), and the workers with it{where}; "
            f"{restart} `orchestrator resume {self.record.id}` continues from the latest checkpoint"
        )

    def _admitted(self) -> bool:
        """Wait in the cluster's queue until the scheduler places the whole gang; False if cancelled."""
        assert self._admission is not None

        def waiting(reason: str) -> None:
            log.info("queued: %s", reason)
            self.store.transition(self.record.id, JobState.PENDING, {JobState.RUNNING, JobState.PENDING},
                                  message=f"queued: {reason}")
            if self.events:
                self.events.on_event(ev.Queued(reason=reason))

        def should_stop() -> bool:
            return bool(self._stop_reason) or self.store.get(self.record.id).state == JobState.CANCELLING

        admitted = self._admission.wait(should_stop, waiting)
        if admitted:
            self.store.transition(self.record.id, JobState.RUNNING, {JobState.RUNNING, JobState.PENDING},
                                  message=None)
            log.info("admitted by the cluster's queue")
        return admitted

    def _requeue(self) -> None:
        """After a preemption: the workers checkpointed and stopped; join the queue again."""
        log.info("preempted by %s: checkpointed at %s; back in the queue", self._preempted_by,
                 self.tracker.last_checkpoint)
        self.tracker.close(time.time(), f"preempted by {self._preempted_by}")
        self.store.update(self.record.id, message=f"preempted by {self._preempted_by}; requeued",
                          attempts=self.tracker.public_attempts())
        self.preemptions += 1
        self._update_result(preemptions=self.preemptions)
        if self._admission is not None:
            self._admission.requeued()
        self._preempted_by = None
        self._stop_reason = None
        self._stop_requested_at = None
        self.tracker.stopped = False

    def _cancel_message(self) -> str:
        ckpt = self.tracker.last_checkpoint
        where = f"; latest checkpoint {ckpt}" if ckpt else ""
        return f"cancelled ({self._stop_reason or 'stop requested'}){where}; `orchestrator resume` continues it"

    # -- events ---------------------------------------------------------------------------
    def _drain(self) -> None:
        if self._sink is None:
            return
        import ray

        try:
            wire = ray.get(self._sink.drain.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a slow sink only delays progress output
            return
        progress_changed = False
        for event in ev.events_from_wire(wire):
            progress_changed |= self.tracker.apply(event)
            self._side_effects(event)
            if self._metrics is not None:
                self._metrics.on_event(event)
            if self.events:
                self.events.on_event(event)
        for recovery in self.tracker.new_recoveries:
            if self._metrics is not None:
                self._metrics.on_recovery(recovery.seconds, recovery.lost_steps)
        self.tracker.new_recoveries.clear()
        if progress_changed:
            self._save_progress()

    def _side_effects(self, event: ev.Event) -> None:
        """Log lines and TensorBoard points for one event."""
        match event:
            case ev.Epoch():
                epoch, metrics = int(event.epoch), event.metrics
                if self._tb is not None:
                    tags = {names.TENSORBOARD_TAGS[k]: v for k, v in metrics.items() if k in names.TENSORBOARD_TAGS}
                    self._tb.scalars(tags, step=epoch)
                    self._tb.flush()
                log.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            case ev.Final():
                if self._tb is not None and self.tracker.epoch_metrics:
                    final = event.metrics
                    tags = {t: final[k] for k, t in names.FINAL_TENSORBOARD_TAGS.items() if k in final}
                    self._tb.scalars(tags, step=max(self.tracker.epoch_metrics))
                    self._tb.flush()
                log.info("final %s", " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items()))
            case ev.Image():
                if self._tb is not None:
                    import base64

                    self._tb.image_png(event.tag, base64.b64decode(event.png), int(event.height), int(event.width),
                                       step=int(event.epoch),
                                       colorspace=int(3 if event.colorspace is None else event.colorspace))
                    self._tb.flush()
            case ev.Checkpoint():
                log.info("checkpoint epoch %s step %s -> %s (%.2fs)", event.epoch, event.global_step, event.path,
                         event.seconds)
            case ev.CheckpointSkipped():
                log.warning("skipped checkpoint %s: %s", event.path, event.reason)
            case ev.AttemptStart():
                log.info("attempt %s started (restored epoch %s, step %s)", event.attempt, event.restored_epoch,
                         event.restored_step)
            case ev.FirstStep(attempt=attempt) if (attempt or 1) == (self.tracker.current or {}).get("attempt"):
                log.info("first training step %.2fs after submit", event.time - self.requested_at)
            case ev.Injected() | ev.Hang():
                log.warning("%s", event.reason)
            case ev.WorkerError():
                log.error("rank %s raised %s\n%s", event.rank, event.error,
                          "" if event.traceback is None else event.traceback)
            case ev.Failure():
                log.warning("worker group failed: %s", event.errors)
            case ev.Stopped():
                log.info("workers stopped at epoch %s step %s", event.epoch, event.global_step)
            case ev.Log():
                for line in event.lines:
                    log.info("[rank %s %s] %s", event.rank, event.stream, line)
            case ev.Model():
                log.info("model: %s parameters (checksum %s) on %s, gradients over %s", event.parameters,
                         event.param_checksum, "?" if event.device is None else event.device,
                         "?" if event.sync_backend is None else event.sync_backend)

    def _save_progress(self) -> None:
        epochs = self.tracker.epoch_metrics
        latest = max(epochs) if epochs else None
        progress: dict[str, Any] = {"epoch": latest, "epochs": self.spec.training.epochs}
        if latest is not None:
            progress.update(epochs[latest])
        self.store.update(self.record.id, progress=progress, attempts=self.tracker.public_attempts())

    def _write_shards(self) -> None:
        if not self.tracker.shards:
            return
        path = self.record.job_dir / "shards.json"
        existing: dict[str, dict[str, list[int]]] = json.loads(path.read_text()) if path.exists() else {}
        for rank, epochs in self.tracker.shards.items():
            for epoch, indices in epochs.items():
                existing.setdefault(str(rank), {})[str(epoch)] = indices
        path.write_text(json.dumps(existing))

    # -- end ------------------------------------------------------------------------------
    def _finish(self, state: JobState, message: str | None) -> JobRecord:
        if self._admission is not None:
            self._admission.leave()  # its resources are free for the next job in the queue
            self._admission = None
        now = time.time()
        self.tracker.close(now, message if state != JobState.SUCCEEDED else None)
        model_dir = Path(self.paths["model_dir"])
        result = dict(self.store.get(self.record.id).result)
        result.update({
            "metrics": self._summary_metrics(),
            "checkpoint": self._latest_checkpoint(),
            "model_path": str(model_dir / "model.pt") if (model_dir / "model.pt").exists() else None,
            "torchscript_path": str(model_dir / "model.torchscript.pt")
            if (model_dir / "model.torchscript.pt").exists() else None,
            # tensorflow: the Keras file and a SavedModel that takes raw inputs
            "keras_path": str(model_dir / "model.keras") if (model_dir / "model.keras").exists() else None,
            "saved_model_path": str(model_dir / "saved_model") if (model_dir / "saved_model").is_dir() else None,
            "model_dir": str(model_dir) if (model_dir / "model.json").exists() else None,
            **({"generator_path": str(generator), "samples_dir": str(self.record.job_dir / "samples")}
               if (generator := next((model_dir / name for name in ("generator.torchscript.pt", "generator_saved_model")
                                      if (model_dir / name).exists()), None)) else {}),
            "tensorboard_dir": str(self.record.job_dir / "tensorboard"),
            "time_to_first_step_s": (self.tracker.first_step_at - self.requested_at)
            if self.tracker.first_step_at else None,
            "model_checksum": self.tracker.model_checksum,
            "device": self.tracker.device,
            "sync_backend": self.tracker.sync_backend,
            "peak_worker_rss_bytes": self.tracker.peak_worker_rss_bytes,
        })
        self.store.transition(
            self.record.id, state, ACTIVE_STATES, ended_at=now, message=message,
            result=result, attempts=self.tracker.public_attempts(),
        )
        self._save_progress()
        log.info("job %s %s%s", self.record.id, state.value, f": {message}" if message else "")
        final = self.store.get(self.record.id)
        if self._metrics is not None:
            self._metrics.set_state(final.state.value)
        if self.events:
            self.events.on_finish(final)
        return final

    def _latest_checkpoint(self) -> str | None:
        from orchestrator.runtime.checkpoints import CheckpointManager

        found = CheckpointManager(self.paths["checkpoint_dir"]).list()
        return str(found[0].path) if found else self.tracker.last_checkpoint

    def _summary_metrics(self) -> dict[str, Any]:
        epochs = self.tracker.epoch_metrics
        out: dict[str, Any] = {}
        if epochs:
            out.update(epochs[max(epochs)])
            out["epochs"] = max(epochs)
            total_time = sum(m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values())
            total_samples = sum(
                m.get(names.SAMPLES_PER_SECOND, 0.0) * m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values()
            )
            if total_time > 0:
                out[names.SAMPLES_PER_SECOND] = total_samples / total_time
        out.update(self.tracker.final_metrics)
        return out

    def _shutdown(self) -> None:
        shutdown_ray()
        if self._tb is not None:
            self._tb.close()
        if self._metrics is not None:
            if self.metrics_linger_s > 0:
                time.sleep(self.metrics_linger_s)  # let a scraper see the final values
            self._metrics.close()
        detach_job_log(self._log_handler)
