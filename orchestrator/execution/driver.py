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

Its parts live beside it: the run's state machine (``states``), the queue it waits in
(``admission``, ``queue``), where events go (``fanout``), what it leaves (``result``), and the
frame it shares with the sweep driver (``frame``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator import events as ev
from orchestrator.errors import NotAvailableError, OrchestratorError, TrainingError
from orchestrator.execution.admission import AdmissionQueue
from orchestrator.execution.fanout import (
    Fanout,
    LogSink,
    PrometheusSink,
    Sink,
    StoreSink,
    UISink,
    save_progress,
)
from orchestrator.execution.frame import RunFrame, detach_job_log, shutdown_ray
from orchestrator.execution.handler import EventHandler
from orchestrator.execution.head import HEAD_CHECK_S, HeadWatch, head_gone_message
from orchestrator.execution.outputs import OutputSync, check_init_data, model_files, resolve_init_from
from orchestrator.execution.queue import Admission
from orchestrator.execution.ray_local import (
    build_trainer,
    check_fits_local_cluster,
    dashboard_url,
    describe_training_error,
    gcs_address,
    start_embedded_ray,
)
from orchestrator.execution.result import JobResult, write_shards
from orchestrator.execution.seat import QueueSeat
from orchestrator.execution.states import Next, RunMachine, RunState
from orchestrator.execution.tracker import RunTracker
from orchestrator.execution.warm_fit import pooled_sink, warm_refusal
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.storage import LAYOUT, Storage
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore

log = logging.getLogger("orchestrator.driver")

POLL_INTERVAL_S = 0.25
#: After a stop request, how long workers get to checkpoint before the driver stops Ray.
GRACEFUL_STOP_TIMEOUT_S = 120.0
#: How often a running job reports to its cluster's queue (which may ask it to give way).
QUEUE_REPORT_S = 2.0


def job_paths(record: JobRecord, spec: JobSpec, owner: str | None = None, *,
              with_storage: bool = True) -> dict[str, Any]:
    """Where a job writes (:class:`orchestrator.runtime.session.JobPaths`); ``job_id`` owns the
    checkpoint directory (``owner`` where the job's identity outlives its record, e.g. a
    TrainingJob whose RayJob runs again: its storage folder is named after it too).

    With ``spec.storage`` (and ``with_storage``), ``storage`` is the job's folder there (an
    :class:`orchestrator.storage.Storage`, which travels to the workers as it is, as Ray Train's
    own ``storage_filesystem`` does) and checkpoints go there unless ``checkpoint.dir`` is set.
    """
    job_dir = record.job_dir
    job_id = owner or record.id
    storage = job_storage(spec, job_id) if with_storage else None
    if spec.checkpoint.dir:
        checkpoint_dir: str | None = spec.checkpoint.dir
    else:
        checkpoint_dir = None if storage is not None else str(job_dir / "checkpoints")
    paths: dict[str, Any] = {
        "job_dir": str(job_dir),
        "checkpoint_dir": checkpoint_dir,
        "model_dir": str(job_dir / "model"),
        "job_id": job_id,
    }
    if storage is not None:
        paths["storage"] = storage
    return paths


def job_storage(spec: JobSpec, job_id: str) -> Storage | None:
    """The job's own folder in its storage (``<storage>/<job id>``), or None without storage."""
    if not spec.storage:
        return None
    return Storage.open(spec.storage).child(job_id)


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


class Driver(RunFrame):
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
        from orchestrator.execution.cluster import find_warm_cluster

        # a warm cluster this home started (`orchestrator up`) is joined like any RAY_ADDRESS
        self.warm = None if settings.local_ray_address else find_warm_cluster(settings.home)
        if self.warm is not None:
            settings = settings.with_overrides(local_ray_address=self.warm.address)
        self.settings = settings
        self.store = JobStore(settings.db_path)
        self.record = self.store.get(job_id)
        self.spec = self.record.job_spec
        #: why this job runs on Ray Train although a warm cluster is up (None: on its warm workers)
        self._warm_refusal = warm_refusal(self.spec) if self.warm is not None else None
        self.events = events
        self.install_signal_handlers = install_signal_handlers
        self.paths = job_paths(self.record, self.spec, owner=settings.checkpoint_owner)
        self.tracker = RunTracker(attempts=[dict(a) for a in self.record.attempts])
        self.machine = RunMachine()
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_linger_s = metrics_linger_s
        self._metrics: Any = None
        self._sink: Any = None  # the workers' event stream (a Ray actor) of the current fit
        self._tb: Any = None
        self._seat: QueueSeat | None = None  # the job's place in its queue
        self._head = HeadWatch(None)  # the Ray head this driver is connected to, once it is
        self.preemptions = 0
        # "submit to first step" counts from submission; for a resumed job, from the resume.
        self.requested_at = self.record.created_at if not self.record.attempts else time.time()
        self.fanout = Fanout(self.tracker)  # its sinks are registered once Ray and TensorBoard are up
        storage = self.paths.get("storage")
        self._outputs = OutputSync(storage, self.record.job_dir) if storage is not None else None

    # -- signals --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the workers to checkpoint and stop (idempotent). A second Ctrl-C forces the stop."""
        if not self.machine.request_stop(reason, time.time()):
            if reason == "interrupt":
                raise KeyboardInterrupt
            return
        log.info("stop requested (%s): workers will checkpoint and stop", reason)
        if self._sink is not None:
            self._sink.request_stop.remote(reason)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop("interrupt" if signum == signal.SIGINT else "cancelled")

    # -- main -----------------------------------------------------------------------------
    def run(self) -> JobRecord:
        """Run the job (queue, Ray, training) to a terminal state and return its final record."""
        from orchestrator.private import private_dir

        def body() -> JobRecord:
            self._start_metrics()
            return self._run()

        return self.run_framed(private_dir(self.record.job_dir), body)

    def _forced_cancel_message(self) -> str:
        return "cancelled (forced); resumable from the last checkpoint"

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

    def _run(self) -> JobRecord:
        import ray

        from orchestrator.metrics.tensorboard import TensorBoardWriter
        from orchestrator.runtime.checkpoints import check_owner
        spec = self.spec
        log.info("job %s (%s): %s", self.record.id, spec.framework, json.dumps(self.record.spec))
        # Before Ray starts. On a Ray of its own this machine is where the workers write, so the
        # job claims the directory here; on a cluster (RAY_ADDRESS: the ray and kubernetes backends)
        # the head may not even see the workers' storage: only check, rank 0 claims it.
        if self.paths["checkpoint_dir"]:  # storage: rank 0 claims the job's folder there
            check_owner(self.paths["checkpoint_dir"], self.paths["job_id"],
                        create=not self.settings.local_ray_address)
        if self._outputs is not None:
            self._outputs.write_spec(self.record)
            self._update_result(storage=self._outputs.storage.uri)
            log.info("storage: %s", self._outputs.storage.uri)
        if spec.init_from:  # before the data: a wrong source fails at once
            self.paths["init_from"] = resolve_init_from(spec, self.store)
        # a data set of files is read through Ray Data, so after Ray starts (its files were listed when
        # the spec was loaded); the built-ins and one .npz file load here, before the queue
        data = None if spec.data.is_file_set else self._prepare_data()

        if not self.settings.local_ray_address:
            # Ray of its own: the machine's queue (the job store) decides when the gang starts,
            # before Ray starts, so a waiting job holds nothing
            from orchestrator.execution.queue import MachineAdmission, machine_node
            from orchestrator.scheduler import request_from_spec

            self._seat = self._sit(MachineAdmission(self.store, self.record.id, request_from_spec(spec),
                                                    self.record.created_at, machine_node()))
            if not self._seat.wait():
                return self._finish(JobState.CANCELLED, "cancelled while queued")

        init_start = time.time()
        context = start_embedded_ray(
            self.settings.local_ray_address,
            metadata={"orchestrator_job_id": self.record.id, "orchestrator_job_name": self.record.name},
        )
        url = dashboard_url(context)
        self._head = HeadWatch(gcs_address(context))
        log.info("Ray ready in %.1fs; dashboard: %s", time.time() - init_start, url or "off")
        self._update_result(cluster=self._cluster_description())
        self._retake_signals()  # so `orchestrator cancel` (SIGTERM) stops with a final checkpoint
        check_fits_local_cluster(spec, ray.cluster_resources())  # type: ignore[no-untyped-call]
        if data is None:
            data = self._prepare_data()
        summary = data.summary()

        self._tb = TensorBoardWriter(self.record.job_dir / "tensorboard")
        tensorboard_dir = str(self.record.job_dir / "tensorboard")
        self._register_sinks()
        self._update_result(dashboard_url=url, tensorboard_dir=tensorboard_dir)
        if self.settings.local_ray_address:  # a shared cluster: its queue decides when the gang starts
            from orchestrator.scheduler import request_from_spec

            self._seat = self._sit(Admission(self.record.id, request_from_spec(spec), self.record.created_at))
        info = {"dashboard_url": url, "job_dir": str(self.record.job_dir), "tensorboard_dir": tensorboard_dir,
                "metrics_url": self.store.get(self.record.id).result.get("metrics_url"),
                "data": summary, "workers": spec.resources.workers}
        outcome = self._train(ray.put(data), info)
        if outcome is None:
            return self._finish(JobState.CANCELLED, "cancelled while queued")
        write_shards(self.record.job_dir / "shards.json", self.tracker.shards)
        return self._conclude(outcome)

    def _cluster_description(self) -> str:
        """Which Ray ran the job, for ``status``: this home's warm cluster, a given one, or its own."""
        if self.warm is not None:
            refusal = self._warm_refusal
            return self.warm.describe() + (f"; Ray Train workers: {refusal}" if refusal else "; warm workers")
        if self.settings.local_ray_address:
            return f"Ray at {self.settings.local_ray_address} (RAY_ADDRESS)"
        return "embedded Ray (started for this job)"

    def _prepare_data(self) -> Any:
        """The job's data (in memory, or a streaming plan after one pass over the files), logged and
        checked against ``init_from``."""
        from orchestrator.runtime.data import prepare_data

        spec = self.spec
        if spec.streams_data:
            from orchestrator.runtime.datasets import prepare_stream

            data = prepare_stream(spec.data, spec.training.seed, spec.resources.workers)
        else:
            data = prepare_data(spec.data, spec.training.seed)
        log.info("data: %s", json.dumps(data.summary()))
        self._update_result(data=data.summary())
        if spec.init_from:
            check_init_data(self.paths["init_from"], data.sample_shape, data.num_classes)
            log.info("init_from: %s (weights checked against this model)", self.paths["init_from"].uri)
        return data

    def _sit(self, queue: AdmissionQueue) -> QueueSeat:
        return QueueSeat(queue, self.store, self.record.id, self.machine, self.events)

    def _register_sinks(self) -> None:
        """Where worker events go, in order: log and TensorBoard, Prometheus, the UI, the store."""
        sinks: list[Sink] = [LogSink(self.tracker, self.requested_at, self._tb)]
        if self._metrics is not None:
            sinks.append(PrometheusSink(self._metrics))
        if self.events:
            sinks.append(UISink(self.events))
        sinks.append(StoreSink(self._save_progress))
        if self._outputs is not None:
            sinks.append(self._outputs)
        self.fanout.register(*sinks)

    def _train(self, data_ref: Any, info: dict[str, Any]) -> dict[str, Any] | None:
        """Fit until the job ends; a preempted fit goes back to the queue and fits again.
        The last fit's outcome (``result`` or ``error``); None if the job left the queue."""
        from orchestrator.runtime.progress import create_sink

        announced = False
        while True:
            if self.machine.state is RunState.QUEUED:
                if self._seat is not None and not self._seat.wait():
                    return None
                if self.machine.state is RunState.QUEUED:
                    self.machine.admitted()
            warm = self.warm is not None and self._warm_refusal is None
            self._sink = (pooled_sink(self.record.id, len(self.tracker.attempts)) if warm
                          else create_sink(attempts_before=len(self.tracker.attempts)))
            if self.machine.stop_reason:
                self._sink.request_stop.remote(self.machine.stop_reason)
            trainer = build_trainer(self.spec, self.record, self.paths, data_ref, self._sink, warm=warm)
            if self.events and not announced:
                announced = True
                self.events.on_start(self.store.get(self.record.id), info)
            self.machine.training()
            outcome = self._fit(trainer)
            if self.machine.after_fit(fit_failed="error" in outcome,
                                      workers_stopped=self.tracker.stopped) is Next.REQUEUE:
                self._requeue()
                continue
            return outcome

    def _conclude(self, outcome: dict[str, Any]) -> JobRecord:
        """The terminal state a finished fit means (raises TrainingError for a failure)."""
        ending = self.machine.after_fit(fit_failed="error" in outcome, workers_stopped=self.tracker.stopped)
        if ending is Next.CANCELLED:
            return self._finish(JobState.CANCELLED, self._cancel_message())
        if ending is Next.FAILED:
            if self._head.gone_now():
                raise TrainingError(self._head_gone_message())
            reason = self.tracker.last_failure()
            attempts = len(self.tracker.attempts) - len(self.record.attempts)
            if reason:
                raise TrainingError(
                    f"training failed after {attempts} attempt{'s' if attempts != 1 else ''} "
                    f"(failure.max_failures = {self.spec.failure.max_failures}): {reason}"
                )
            raise TrainingError(describe_training_error(outcome["error"]))
        if not self.tracker.final_metrics and not self.spec.entrypoint:
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
                if self._head.lost():
                    raise TrainingError(self._head_gone_message())
            self._drain()
            if self.tracker.permanent_failure:
                # a restart cannot cure it (a full disk): fail now, not after failure.max_failures restarts
                raise TrainingError(f"training stopped without a restart: {self.tracker.permanent_failure}")
            now = time.time()
            if now - last_store_check > 1.0:
                last_store_check = now
                if self.store.get(self.record.id).state == JobState.CANCELLING:
                    self.request_stop("cancelled")
            if self._seat is not None and now - last_report > QUEUE_REPORT_S:
                # keep reporting while stopping too, or the queue forgets a job whose workers still run
                last_report = now
                if reason := self._seat.report_in():
                    self.request_stop(reason)
            requested = self.machine.stop_requested_at
            if requested and now - requested > GRACEFUL_STOP_TIMEOUT_S:
                log.warning("workers did not stop within %.0fs; stopping Ray", GRACEFUL_STOP_TIMEOUT_S)
                raise KeyboardInterrupt
        self._drain()
        return outcome

    def _head_gone_message(self) -> str:
        """The failure text for a lost Ray head (and forget the cluster's queue, which lived there:
        telling it the job ended would wait on Ray until Ray ends this process)."""
        if self._seat is not None and isinstance(self._seat.queue, Admission):
            self._seat = None
        return head_gone_message(self._head.gcs_address, self.record.id, self._latest_checkpoint(),
                                 own_ray=not self.settings.local_ray_address)

    def _requeue(self) -> None:
        """After a preemption: the workers checkpointed and stopped; join the queue again."""
        by = self.machine.preempted_by
        log.info("preempted by %s: checkpointed at %s; back in the queue", by, self.tracker.last_checkpoint)
        self.tracker.close(time.time(), f"preempted by {by}")
        self.store.update(self.record.id, message=f"preempted by {by}; requeued",
                          attempts=self.tracker.public_attempts())
        self.preemptions += 1
        self._update_result(preemptions=self.preemptions)
        if self._seat is not None:
            self._seat.requeued()
        self.machine.requeue()
        self.tracker.stopped = False  # the stopped workers were the last fit's

    def _cancel_message(self) -> str:
        ckpt = self.tracker.last_checkpoint
        where = f"; latest checkpoint {ckpt}" if ckpt else ""
        return f"cancelled ({self.machine.stop_reason or 'stop requested'}){where}; `orchestrator resume` continues it"

    # -- events ---------------------------------------------------------------------------
    def _drain(self) -> None:
        """Take the workers' events from the sink and fan them out."""
        if self._sink is None:
            return
        import ray

        try:
            wire = ray.get(self._sink.drain.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a slow sink only delays progress output
            return
        self.fanout.publish(ev.events_from_wire(wire))

    def _save_progress(self) -> None:
        save_progress(self.store, self.record.id, self.tracker, self.spec.training.epochs)

    # -- end ------------------------------------------------------------------------------
    def _finish(self, state: JobState, message: str | None) -> JobRecord:
        self.machine.finish()
        if self._seat is not None:
            self._seat.leave()  # its resources are free for the next job in the queue
            self._seat = None
        now = time.time()
        self.tracker.close(now, message if state != JobState.SUCCEEDED else None)
        built = JobResult.build(self.tracker, self.record.job_dir, Path(self.paths["model_dir"]),
                                self._latest_checkpoint(), self.requested_at)
        result = {**self.store.get(self.record.id).result, **built.to_dict()}
        if self._outputs is not None:  # the model is in storage: name it there
            storage = self._outputs.storage
            result.update(model_files(storage), tensorboard_dir=storage.child(LAYOUT["tensorboard"]).uri)
        self.store.transition(
            self.record.id, state, ACTIVE_STATES, ended_at=now, message=message,
            result=result, attempts=self.tracker.public_attempts(),
        )
        self._save_progress()
        log.info("job %s %s%s", self.record.id, state.value, f": {message}" if message else "")
        final = self.store.get(self.record.id)
        if self._outputs is not None:
            problem = self._outputs.finish(final)
            if problem:
                self._update_result(storage_error=problem)
                final = self.store.get(self.record.id)
        if self._metrics is not None:
            self._metrics.set_state(final.state.value)
        if self.events:
            self.events.on_finish(final)
        return final

    def _latest_checkpoint(self) -> str | None:
        from orchestrator.runtime.session import JobPaths

        try:
            found = JobPaths.from_config(self.paths).checkpoint_manager(self.spec.checkpoint.keep).list()
        except OrchestratorError as exc:  # storage out of reach: say what the workers last reported
            log.warning("cannot list the checkpoints: %s", exc.message)
            found = []
        if found:
            return found[0].location or str(found[0].path)
        return self.tracker.last_checkpoint

    def _shutdown(self) -> None:
        shutdown_ray()
        if self._tb is not None:
            self._tb.close()
        if self._metrics is not None:
            if self.metrics_linger_s > 0:
                time.sleep(self.metrics_linger_s)  # let a scraper see the final values
            self._metrics.close()
        detach_job_log(self._log_handler)
