"""One event fan-out: every worker event goes to each sink registered in one list.

The driver drains the workers' events and hands each batch to :class:`Fanout`, which folds them
into the run tracker and then passes every event to the sinks in order: the job log and
TensorBoard (:class:`LogSink`), Prometheus (:class:`PrometheusSink`), the terminal UI
(:class:`UISink`), and, once per batch that changed the job's visible progress, the job store
(:class:`StoreSink`). A new destination is a new sink, not a new branch in the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.backends.base import EventHandler
from orchestrator.execution.tracker import Recovery, RunTracker
from orchestrator.metrics import names

log = logging.getLogger("orchestrator.driver")


class Sink:
    """Where worker events go; each hook does nothing unless a sink overrides it."""

    def on_event(self, event: dict[str, Any]) -> None:
        """One worker event, after the tracker folded it in."""

    def on_recovery(self, recovery: Recovery) -> None:
        """A restarted worker group trained again (seconds from failure to first step, steps redone)."""

    def on_progress(self) -> None:
        """The job's visible progress changed in the last batch."""


class Fanout:
    """Folds event batches into the tracker and passes them to every sink, in registration order."""

    def __init__(self, tracker: RunTracker, sinks: Sequence[Sink] = ()) -> None:
        self.tracker = tracker
        self.sinks: list[Sink] = list(sinks)

    def register(self, *sinks: Sink) -> None:
        """Add sinks; they receive events after those already registered."""
        self.sinks.extend(sinks)

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """One drained batch: each event to the tracker, then to every sink; recoveries; progress."""
        progress_changed = False
        for event in events:
            progress_changed |= self.tracker.apply(event)
            for sink in self.sinks:
                sink.on_event(event)
        for recovery in self.tracker.new_recoveries:
            for sink in self.sinks:
                sink.on_recovery(recovery)
        self.tracker.new_recoveries.clear()
        if progress_changed:
            for sink in self.sinks:
                sink.on_progress()


class LogSink(Sink):
    """Log lines (the job's ``driver.log``) and TensorBoard points for each event."""

    def __init__(self, tracker: RunTracker, requested_at: float, tb: Any = None) -> None:
        self.tracker = tracker
        self.requested_at = requested_at  # "first step after submit" counts from here
        self._tb = tb

    def on_event(self, event: dict[str, Any]) -> None:
        """Log lines and TensorBoard points for one event."""
        kind = event.get("type")
        if kind == "epoch":
            epoch, metrics = int(event["epoch"]), event["metrics"]
            if self._tb is not None:
                tags = {names.TENSORBOARD_TAGS[k]: v for k, v in metrics.items() if k in names.TENSORBOARD_TAGS}
                self._tb.scalars(tags, step=epoch)
                self._tb.flush()
            log.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        elif kind == "final":
            if self._tb is not None and self.tracker.epoch_metrics:
                final = event["metrics"]
                tags = {t: final[k] for k, t in names.FINAL_TENSORBOARD_TAGS.items() if k in final}
                self._tb.scalars(tags, step=max(self.tracker.epoch_metrics))
                self._tb.flush()
            log.info("final %s", " ".join(f"{k}={v:.4g}" for k, v in event["metrics"].items()))
        elif kind == "image":
            if self._tb is not None:
                import base64

                self._tb.image_png(event["tag"], base64.b64decode(event["png"]), int(event["height"]),
                                   int(event["width"]), step=int(event["epoch"]),
                                   colorspace=int(event.get("colorspace", 3)))
                self._tb.flush()
        elif kind == "checkpoint":
            log.info("checkpoint epoch %s step %s -> %s (%.2fs)", event["epoch"], event["global_step"],
                     event["path"], event["seconds"])
        elif kind == "checkpoint_skipped":
            log.warning("skipped checkpoint %s: %s", event["path"], event["reason"])
        elif kind == "attempt_start":
            log.info("attempt %s started (restored epoch %s, step %s)", event.get("attempt"),
                     event.get("restored_epoch"), event.get("restored_step"))
        elif kind == "first_step" and event.get("attempt", 1) == (self.tracker.current or {}).get("attempt"):
            log.info("first training step %.2fs after submit", event["time"] - self.requested_at)
        elif kind in ("injected", "hang"):
            log.warning("%s", event["reason"])
        elif kind == "worker_error":
            log.error("rank %s raised %s\n%s", event.get("rank"), event["error"], event.get("traceback", ""))
        elif kind == "failure":
            log.warning("worker group failed: %s", event.get("errors"))
        elif kind == "stopped":
            log.info("workers stopped at epoch %s step %s", event["epoch"], event["global_step"])
        elif kind == "log":
            for line in event["lines"]:
                log.info("[rank %s %s] %s", event.get("rank"), event.get("stream"), line)
        elif kind == "model":
            log.info("model: %s parameters (checksum %s) on %s, gradients over %s", event["parameters"],
                     event["param_checksum"], event.get("device", "?"), event.get("sync_backend", "?"))


class PrometheusSink(Sink):
    """The job's Prometheus metrics (:class:`orchestrator.metrics.prometheus.JobMetrics`)."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def on_event(self, event: dict[str, Any]) -> None:
        self.metrics.on_event(event)

    def on_recovery(self, recovery: Recovery) -> None:
        self.metrics.on_recovery(recovery.seconds, recovery.lost_steps)


class UISink(Sink):
    """The terminal UI (or any :class:`~orchestrator.backends.base.EventHandler`) of a foreground run."""

    def __init__(self, events: EventHandler) -> None:
        self.events = events

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.on_event(event)


def save_progress(store: Any, job_id: str, tracker: RunTracker, epochs_planned: int) -> None:
    """The job's progress in the store: its latest epoch (with that epoch's metrics) and attempts."""
    epochs = tracker.epoch_metrics
    latest = max(epochs) if epochs else None
    progress: dict[str, Any] = {"epoch": latest, "epochs": epochs_planned}
    if latest is not None:
        progress.update(epochs[latest])
    store.update(job_id, progress=progress, attempts=tracker.public_attempts())


class StoreSink(Sink):
    """The job's progress (latest epoch and its metrics) and attempts, in the job store."""

    def __init__(self, save: Callable[[], None]) -> None:
        self.save = save

    def on_progress(self) -> None:
        self.save()
