"""The job driver: prepares data, starts Ray Train, and turns worker events into job state.

One function, :func:`run_driver`, serves every way a local job runs: in the foreground of
``orchestrator submit`` (with a terminal UI attached), detached in a background process
(``submit --detach``), and again for ``resume``. It

* marks the job running in the store (with its pid, so a killed driver is detected later),
* prepares the data once and hands it to the workers through Ray's object store,
* runs ``TorchTrainer.fit`` in a thread while the main thread drains the workers' event
  stream into TensorBoard, the job log, the store and the UI,
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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.backends.base import EventHandler
from orchestrator.errors import BackendError, NotAvailableError, OrchestratorError, TrainingError
from orchestrator.metrics import names
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore, process_start_time

log = logging.getLogger("orchestrator.driver")

POLL_INTERVAL_S = 0.25
#: After a stop request, how long workers get to checkpoint before the driver stops Ray.
GRACEFUL_STOP_TIMEOUT_S = 60.0


def job_paths(record: JobRecord, spec: JobSpec) -> dict[str, str]:
    job_dir = record.job_dir
    checkpoint_dir = Path(spec.checkpoint.dir) if spec.checkpoint.dir else job_dir / "checkpoints"
    return {
        "job_dir": str(job_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "model_dir": str(job_dir / "model"),
    }


def check_framework_available(spec: JobSpec) -> None:
    """Fail fast, before any job record exists, when the spec's framework cannot run here."""
    if spec.framework == "tensorflow":
        raise NotAvailableError(
            "framework 'tensorflow' is not available yet in this version of orchestrator",
            fix="use `framework: torch` for now",
        )
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ImportError
    except ImportError:
        raise NotAvailableError(
            "framework 'torch' is not installed",
            fix="install it: pip install 'orchestrator[torch]' (CPU: torch==2.13.0)",
        ) from None


@dataclass
class _RunState:
    """What the driver learns from the event stream while the job runs."""

    epoch_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: str | None = None
    first_step_at: float | None = None
    stopped: bool = False
    shards: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    model_checksum: str | None = None


class Driver:
    """Runs one job to a terminal state. Construct, then call :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        events: EventHandler | None = None,
        *,
        install_signal_handlers: bool = True,
    ) -> None:
        self.settings = settings
        self.store = JobStore(settings.db_path)
        self.record = self.store.get(job_id)
        self.spec = JobSpec.model_validate(self.record.spec)
        self.events = events
        self.install_signal_handlers = install_signal_handlers
        self.paths = job_paths(self.record, self.spec)
        self.state = _RunState(attempts=list(self.record.attempts))
        self._stop_reason: str | None = None
        self._stop_requested_at: float | None = None
        self._sink: Any = None
        self._tb: Any = None
        self._log_handler: logging.Handler | None = None
        # "submit to first step" counts from submission; for a resumed job, from the resume.
        self.requested_at = self.record.created_at if not self.record.attempts else time.time()

    # -- signals --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the workers to checkpoint and stop (idempotent). A second call forces the stop."""
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
        job_dir = self.record.job_dir
        job_dir.mkdir(parents=True, exist_ok=True)
        self._setup_logging(job_dir / "driver.log")
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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._shutdown()

    def _setup_logging(self, path: Path) -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("orchestrator")
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        self._log_handler = handler

    def _run(self) -> JobRecord:
        import ray

        from orchestrator.metrics.tensorboard import TensorBoardWriter
        from orchestrator.runtime.data import prepare_data
        from orchestrator.runtime.progress import create_sink

        spec = self.spec
        log.info("job %s (%s): %s", self.record.id, spec.framework, json.dumps(self.record.spec))
        data = prepare_data(spec.data, spec.training.seed)
        summary = data.summary()
        log.info("data: %s", json.dumps(summary))

        init_start = time.time()
        context = start_embedded_ray(self.settings.local_ray_address)
        dashboard_url = _dashboard_url(context)
        log.info("Ray started in %.1fs; dashboard: %s", time.time() - init_start, dashboard_url or "off")
        check_fits_local_cluster(spec, ray.cluster_resources())

        self._tb = TensorBoardWriter(self.record.job_dir / "tensorboard")
        self._sink = create_sink()
        if self._stop_reason:
            self._sink.request_stop.remote(self._stop_reason)
        data_ref = ray.put(data)
        trainer = build_torch_trainer(spec, self.record, self.paths, data_ref, self._sink)

        info = {
            "dashboard_url": dashboard_url,
            "job_dir": str(self.record.job_dir),
            "tensorboard_dir": str(self.record.job_dir / "tensorboard"),
            "data": summary,
            "workers": spec.resources.workers,
            "submitted_at": self.record.created_at,
        }
        self.store.update(self.record.id, result={"dashboard_url": dashboard_url,
                                                  "tensorboard_dir": info["tensorboard_dir"]})
        if self.events:
            self.events.on_start(self.store.get(self.record.id), info)

        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name="train-fit", daemon=True)
        thread.start()
        last_store_check = 0.0
        while thread.is_alive():
            thread.join(POLL_INTERVAL_S)
            self._drain()
            now = time.time()
            if now - last_store_check > 1.0:
                last_store_check = now
                current = self.store.get(self.record.id).state
                if current == JobState.CANCELLING:
                    self.request_stop("cancelled")
            if self._stop_requested_at and now - self._stop_requested_at > GRACEFUL_STOP_TIMEOUT_S:
                log.warning("workers did not stop within %.0fs; stopping Ray", GRACEFUL_STOP_TIMEOUT_S)
                raise KeyboardInterrupt
        self._drain()
        self._write_shards()

        if "error" in outcome:
            if self._stop_reason:
                return self._finish(JobState.CANCELLED, self._cancel_message())
            raise TrainingError(_describe_training_error(outcome["error"]))
        if self._stop_reason or self.state.stopped:
            return self._finish(JobState.CANCELLED, self._cancel_message())
        if not self.state.final_metrics and not spec.entrypoint:
            raise TrainingError("training ended without final metrics (see the job log)")
        return self._finish(JobState.SUCCEEDED, None)

    def _cancel_message(self) -> str:
        ckpt = self.state.last_checkpoint
        where = f"; latest checkpoint {ckpt}" if ckpt else ""
        return f"cancelled ({self._stop_reason or 'stop requested'}){where}; `orchestrator resume` continues it"

    # -- events ---------------------------------------------------------------------------
    def _drain(self) -> None:
        if self._sink is None:
            return
        import ray

        try:
            events = ray.get(self._sink.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a slow sink only delays progress output
            return
        progress_changed = False
        for event in events:
            progress_changed |= self._handle(event)
            if self.events:
                self.events.on_event(event)
        if progress_changed:
            self._save_progress()

    def _handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "epoch":
            epoch, metrics = int(event["epoch"]), event["metrics"]
            self.state.epoch_metrics[epoch] = metrics
            if self._tb is not None:
                tags = {names.TENSORBOARD_TAGS[k]: v for k, v in metrics.items() if k in names.TENSORBOARD_TAGS}
                self._tb.scalars(tags, step=epoch)
                self._tb.flush()
            log.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            return True
        if kind == "final":
            self.state.final_metrics = dict(event["metrics"])
            self.state.model_checksum = event.get("param_checksum")
            log.info("final %s", " ".join(f"{k}={v:.4g}" for k, v in event["metrics"].items()))
            return True
        if kind == "checkpoint":
            self.state.last_checkpoint = event["path"]
            log.info("checkpoint epoch %s step %s -> %s (%.2fs)", event["epoch"], event["global_step"],
                     event["path"], event["seconds"])
            return True
        if kind == "checkpoint_skipped":
            log.warning("skipped checkpoint %s: %s", event["path"], event["reason"])
        elif kind == "attempt_start":
            attempt = {
                "attempt": len(self.state.attempts) + 1,
                "started_at": event["time"],
                "restored_epoch": event.get("restored_epoch"),
                "restored_step": event.get("restored_step"),
            }
            if self.state.attempts and self.state.attempts[-1].get("ended_at") is None:
                self.state.attempts[-1]["ended_at"] = event["time"]
                self.state.attempts[-1].setdefault("failure", "worker group restarted")
            self.state.attempts.append(attempt)
            log.info("attempt %d started (restored epoch %s)", attempt["attempt"], attempt["restored_epoch"])
            return True
        elif kind == "first_step" and self.state.first_step_at is None:
            self.state.first_step_at = event["time"]
            log.info("first training step %.2fs after submit", event["time"] - self.requested_at)
        elif kind == "shard":
            self.state.shards.setdefault(int(event["rank"]), {})[int(event["epoch"])] = event["indices"]
        elif kind == "stopped":
            self.state.stopped = True
            log.info("workers stopped at epoch %s step %s", event["epoch"], event["global_step"])
        elif kind == "log":
            for line in event["lines"]:
                log.info("[rank %s %s] %s", event.get("rank"), event.get("stream"), line)
        elif kind == "model":
            log.info("model: %s parameters (checksum %s)", event["parameters"], event["param_checksum"])
        return False

    def _save_progress(self) -> None:
        latest = max(self.state.epoch_metrics) if self.state.epoch_metrics else None
        progress = {"epoch": latest, "epochs": self.spec.training.epochs}
        if latest is not None:
            progress.update(self.state.epoch_metrics[latest])
        self.store.update(self.record.id, progress=progress, attempts=self.state.attempts)

    def _write_shards(self) -> None:
        if self.state.shards:
            path = self.record.job_dir / "shards.json"
            existing: dict[str, dict[str, list[int]]] = {}
            if path.exists():
                existing = json.loads(path.read_text())
            for rank, epochs in self.state.shards.items():
                for epoch, indices in epochs.items():
                    existing.setdefault(str(rank), {})[str(epoch)] = indices
            path.write_text(json.dumps(existing))

    # -- end ------------------------------------------------------------------------------
    def _finish(self, state: JobState, message: str | None) -> JobRecord:
        now = time.time()
        if self.state.attempts and self.state.attempts[-1].get("ended_at") is None:
            self.state.attempts[-1]["ended_at"] = now
            if state != JobState.SUCCEEDED:
                self.state.attempts[-1]["failure"] = message
        metrics = self._summary_metrics()
        model_dir = Path(self.paths["model_dir"])
        record = self.store.get(self.record.id)
        result = dict(record.result)
        result.update({
            "metrics": metrics,
            "checkpoint": self._latest_checkpoint(),
            "model_path": str(model_dir / "model.pt") if (model_dir / "model.pt").exists() else None,
            "torchscript_path": str(model_dir / "model.torchscript.pt")
            if (model_dir / "model.torchscript.pt").exists() else None,
            "tensorboard_dir": str(self.record.job_dir / "tensorboard"),
            "time_to_first_step_s": (self.state.first_step_at - self.requested_at)
            if self.state.first_step_at else None,
            "model_checksum": self.state.model_checksum,
        })
        self.store.transition(
            self.record.id, state, ACTIVE_STATES, ended_at=now, message=message,
            result=result, attempts=self.state.attempts,
        )
        self._save_progress()
        log.info("job %s %s%s", self.record.id, state.value, f": {message}" if message else "")
        final = self.store.get(self.record.id)
        if self.events:
            self.events.on_finish(final)
        return final

    def _latest_checkpoint(self) -> str | None:
        from orchestrator.runtime.checkpoints import CheckpointManager

        found = CheckpointManager(self.paths["checkpoint_dir"]).list()
        return str(found[0].path) if found else self.state.last_checkpoint

    def _summary_metrics(self) -> dict[str, Any]:
        epochs = self.state.epoch_metrics
        out: dict[str, Any] = {}
        if epochs:
            last = epochs[max(epochs)]
            out.update(last)
            out["epochs"] = max(epochs)
            total_time = sum(m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values())
            total_samples = sum(
                m.get(names.SAMPLES_PER_SECOND, 0.0) * m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values()
            )
            if total_time > 0:
                out[names.SAMPLES_PER_SECOND] = total_samples / total_time
            out.pop(names.EPOCH, None)
        out.update(self.state.final_metrics)
        return out

    def _shutdown(self) -> None:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            log.warning("ray.shutdown failed:\n%s", traceback.format_exc())
        if self._tb is not None:
            self._tb.close()
        if self._log_handler is not None:
            logging.getLogger("orchestrator").removeHandler(self._log_handler)
            self._log_handler.close()


#: How often ray.init is tried when Ray's node fails to come up in time (see start_embedded_ray).
RAY_START_ATTEMPTS = 3


def start_embedded_ray(join_address: str | None = None) -> Any:
    """``ray.init()`` for the local backend, retried when the node times out during start-up.

    With ``join_address`` (Ray's own ``RAY_ADDRESS`` convention) the driver joins that running
    Ray instance instead of starting one; tests use this to share one Ray across jobs.

    On a slow or contended machine the raylet can give up waiting (a fixed 15 s) for its
    dashboard agent to import and report its ports, and ``ray.init`` fails with "The current
    node timed out during startup". The agent's modules are then in the page cache, so a
    second try usually succeeds.
    """
    import ray

    if join_address:
        return ray.init(address=join_address, log_to_driver=False, logging_level=logging.WARNING,
                        namespace="orchestrator")
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            return ray.init(
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.WARNING,
                namespace="orchestrator",
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            if "timed out during startup" not in str(exc) or attempt == RAY_START_ATTEMPTS:
                raise BackendError(
                    f"the embedded Ray instance did not start: {exc}",
                    fix="check /tmp/ray/session_latest/logs/raylet.out; on a very busy machine try again",
                ) from None
            log.warning("Ray start-up timed out (attempt %d of %d); retrying", attempt, RAY_START_ATTEMPTS)
            ray.shutdown()
    raise AssertionError("unreachable")


def _dashboard_url(context: Any) -> str | None:
    url = getattr(context, "dashboard_url", None)
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def check_fits_local_cluster(spec: JobSpec, resources: dict[str, float]) -> None:
    """Refuse, with the numbers, a job this machine's Ray can never place (it would hang)."""
    r = spec.resources
    need_cpu = r.workers * r.cpus_per_worker
    have_cpu = resources.get("CPU", 0.0)
    reasons = []
    if need_cpu > have_cpu + 1e-9:
        reasons.append(f"needs {r.workers} x {r.cpus_per_worker:g} = {need_cpu:g} CPUs; this machine has {have_cpu:g}")
    need_gpu = r.workers * r.gpus_per_worker
    have_gpu = resources.get("GPU", 0.0)
    if need_gpu > have_gpu + 1e-9:
        reasons.append(f"needs {need_gpu:g} GPUs; this machine has {have_gpu:g}")
    if r.memory_bytes and r.workers * r.memory_bytes > resources.get("memory", 0.0):
        reasons.append(
            f"needs {r.workers} x {r.memory_bytes / 2**30:.1f} GiB memory; Ray has "
            f"{resources.get('memory', 0.0) / 2**30:.1f} GiB"
        )
    if r.accelerator and r.gpus_per_worker > 0:
        key = f"accelerator_type:{_ray_accelerator_name(r.accelerator)}"
        if key not in resources:
            reasons.append(f"needs accelerator {r.accelerator}; this machine has none")
    if reasons:
        raise BackendError(
            "the job does not fit this machine (local backend)",
            reasons=reasons,
            fix="lower resources.workers / cpus_per_worker (fractions such as 0.5 are fine), "
            "or submit to a cluster with --backend ray or kubernetes",
        )


def _ray_accelerator_name(accelerator: str) -> str:
    """Our accelerator names to Ray's accelerator_type resource names (A100, H100, T4...)."""
    parts = accelerator.split("-")
    if parts[0] == "nvidia" and len(parts) > 1:
        return parts[1].upper()
    if parts[0] == "tpu" and len(parts) > 1:
        return "TPU-" + parts[1].upper()
    return accelerator


def build_torch_trainer(spec: JobSpec, record: JobRecord, paths: dict[str, str], data_ref: Any, sink: Any) -> Any:
    """The Ray Train TorchTrainer for a spec (DDP over gloo on CPU, nccl on GPU)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.runtime.torch_ddp import train_loop_per_worker

    r = spec.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        per_worker["GPU"] = r.gpus_per_worker
    if r.memory_bytes:
        per_worker["memory"] = float(r.memory_bytes)
    scaling = ScalingConfig(
        num_workers=r.workers,
        use_gpu=r.uses_gpu,
        resources_per_worker=per_worker,
        accelerator_type=_ray_accelerator_name(r.accelerator) if r.accelerator and r.uses_gpu else None,
    )
    run = RunConfig(
        name=record.id,
        storage_path=str(record.job_dir / "ray"),
        failure_config=FailureConfig(max_failures=spec.failure.max_failures),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "paths": paths,
            "data": data_ref,
            "sink": sink,
        },
        torch_config=TorchConfig(backend=spec.sync_backend),
        scaling_config=scaling,
        run_config=run,
    )


def _describe_training_error(exc: BaseException) -> str:
    """A one-paragraph reason from Ray Train's error (the worker's exception, not Ray's wrapping)."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray's message ends with the user exception's "Type: message" line; show that first.
    tail = [line for line in lines if not line.startswith(" ") and ":" in line]
    reason = tail[-1] if tail else (lines[-1] if lines else type(exc).__name__)
    return f"training failed: {reason} (full traceback in the job log: orchestrator logs JOB)"
