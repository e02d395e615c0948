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

from orchestrator import events as ev
from orchestrator.execution.handler import EventHandler
from orchestrator.execution.tracker import Recovery, RunTracker
from orchestrator.metrics import names
from orchestrator.store import JobProgress

log = logging.getLogger("orchestrator.driver")


class Sink:
    """Where worker events go; each hook does nothing unless a sink overrides it."""

    def on_event(self, event: ev.Event) -> None:
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

    def publish(self, events: Sequence[ev.Event]) -> None:
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

    def on_event(self, event: ev.Event) -> None:
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

class PrometheusSink(Sink):
    """The job's Prometheus metrics (:class:`orchestrator.metrics.prometheus.JobMetrics`)."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def on_event(self, event: ev.Event) -> None:
        self.metrics.on_event(event)

    def on_recovery(self, recovery: Recovery) -> None:
        self.metrics.on_recovery(recovery.seconds, recovery.lost_steps)


class UISink(Sink):
    """The terminal UI (or any :class:`~orchestrator.execution.handler.EventHandler`) of a foreground run."""

    def __init__(self, events: EventHandler) -> None:
        self.events = events

    def on_event(self, event: ev.Event) -> None:
        self.events.on_event(event)


def save_progress(store: Any, job_id: str, tracker: RunTracker, epochs_planned: int) -> None:
    """The job's progress in the store: its latest epoch (with that epoch's metrics) and attempts."""
    epochs = tracker.epoch_metrics
    latest = max(epochs) if epochs else None
    progress = JobProgress(epoch=latest, epochs=epochs_planned, metrics=dict(epochs[latest]) if latest is not None else {})
    store.update(job_id, progress=progress.to_dict(), attempts=tracker.public_attempts())


class StoreSink(Sink):
    """The job's progress (latest epoch and its metrics) and attempts, in the job store."""

    def __init__(self, save: Callable[[], None]) -> None:
        self.save = save

    def on_progress(self) -> None:
        self.save()
