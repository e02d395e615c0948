"""What the driver learns from the workers' event stream, as plain state (no Ray, no I/O).

:class:`RunTracker` folds events into epoch metrics, the latest checkpoint, per-rank shard
records and the attempt history: when each attempt started, what it restored, when and why it
failed, how long recovery took (failure detected to the first step after the restore) and how
many steps were redone. The driver feeds it and turns its state into TensorBoard, Prometheus,
the job store and the terminal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from orchestrator.events import (
    AttemptStart,
    Checkpoint,
    Epoch,
    Event,
    Failure,
    Final,
    FirstStep,
    Hang,
    Injected,
    Memory,
    Model,
    Shard,
    Step,
    Stopped,
    WorkerError,
)

log = logging.getLogger("orchestrator.driver")

#: Event kinds that mean "this attempt failed", most precise first (their reason wins).
_FAILURE_KINDS = (Injected.KIND, WorkerError.KIND, Hang.KIND, Failure.KIND)


@dataclass
class Recovery:
    """One completed recovery: seconds from failure detection to first step, steps redone."""

    attempt: int
    seconds: float | None
    lost_steps: int


@dataclass
class RunTracker:
    """Folds worker events into the state of one driver run."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    epoch_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None
    first_step_at: float | None = None
    stopped: bool = False
    model_checksum: str | None = None
    device: str | None = None
    sync_backend: str | None = None
    peak_worker_rss_bytes: int | None = None
    shards: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    new_recoveries: list[Recovery] = field(default_factory=list)
    #: A worker's failure that a restart cannot cure (e.g. a full disk): the driver stops at once.
    permanent_failure: str | None = None
    _attempts_before: int = 0

    def __post_init__(self) -> None:
        self._attempts_before = len(self.attempts)

    @property
    def current(self) -> dict[str, Any] | None:
        if len(self.attempts) > self._attempts_before:
            return self.attempts[-1]
        return None

    def apply(self, event: Event) -> bool:
        """Fold one event in; True when the job's visible progress changed."""
        match event:
            case Step():
                self._seen_step(event.global_step)
                return False
            case Epoch():
                self.epoch_metrics[int(event.epoch)] = dict(event.metrics)
                self._seen_step(event.global_step)
                return True
            case Model():
                self.device = event.device
                self.sync_backend = event.sync_backend
                return False
            case Memory():
                self.peak_worker_rss_bytes = max(int(event.peak_rss_bytes), self.peak_worker_rss_bytes or 0)
                return False
            case Final():
                self.final_metrics = dict(event.metrics)
                self.model_checksum = event.param_checksum
                return True
            case Checkpoint():
                self.last_checkpoint = event.path
                self._seen_step(event.global_step)
                return True
            case Shard():
                if event.rank is None:
                    raise KeyError("rank")  # a shard record is per rank
                per_epoch = self.shards.setdefault(int(event.rank), {})
                epoch = int(event.epoch)
                per_epoch[epoch] = per_epoch.get(epoch, []) + list(event.indices)  # a resumed epoch adds on
                return False
            case Stopped():
                self.stopped = True
                return False
            case AttemptStart():
                return self._attempt_started(event)
            case FirstStep():
                return self._first_step(event)
            case Injected() | Hang():
                return self._failed(event, str(event.reason))
            case WorkerError():
                reason = f"rank {event.rank}: {event.error}"
                if event.permanent and self.permanent_failure is None:
                    self.permanent_failure = reason
                return self._failed(event, reason)
            case Failure():
                errors = event.errors or {}
                reason = "; ".join(f"rank {rank}: {text}" for rank, text in sorted(errors.items())) or "worker failure"
                return self._failed(event, reason)
            case _:
                return False

    # -- progress -------------------------------------------------------------------------
    def _seen_step(self, step: Any) -> None:
        if self.current is not None and step is not None:
            self.current["last_step"] = max(int(step), int(self.current.get("last_step") or 0))

    # -- attempts -------------------------------------------------------------------------
    def _attempt_started(self, event: AttemptStart) -> bool:
        previous = self.current
        now = float(event.time)
        attempt: dict[str, Any] = {
            "attempt": int(event.attempt or len(self.attempts) + 1),
            "started_at": now,
            "ended_at": None,
            "restored_epoch": event.restored_epoch,
            "restored_step": event.restored_step,
            "failure": None,
        }
        if event.pid is not None:  # rank 0's process (a warm cluster's jobs share them)
            attempt["pid"] = int(event.pid)
        if event.nodes:  # the Ray node of each rank (rank order)
            attempt["nodes"] = list(event.nodes)
        if previous is not None and previous.get("ended_at") is None:
            previous["ended_at"] = previous.get("failure_detected_at") or now
            if not previous.get("failure"):
                previous["failure"] = "the worker group failed and was restarted"
                previous["failure_detected_at"] = now
        self.attempts.append(attempt)
        return True

    def _failed(self, event: Injected | WorkerError | Hang | Failure, reason: str) -> bool:
        current = self.current
        if current is None or current.get("ended_at") is not None:
            return False
        if current.get("failure_detected_at") is None:
            current["failure_detected_at"] = float(event.time)
            current["failure"] = reason
        elif _rank(event.KIND) < _rank(current.get("failure_kind")):
            current["failure"] = reason  # a more precise account of the same failure
        else:
            return False
        current["failure_kind"] = event.KIND
        step = event.global_step if isinstance(event, Injected) else None
        if step is not None:
            self._seen_step(step)
        return True

    def _first_step(self, event: FirstStep) -> bool:
        at = float(event.time)
        if self.first_step_at is None:
            self.first_step_at = at
        current = self.current
        if current is None or current.get("first_step_at") is not None:
            return False
        current["first_step_at"] = at
        previous = self.attempts[-2] if len(self.attempts) >= 2 else None
        if previous is None or not previous.get("failure"):
            return False  # a fresh start or a resume after a clean stop: nothing was recovered
        detected = previous.get("failure_detected_at") or previous.get("ended_at")
        seconds = at - float(detected) if detected else None
        restored = int(current.get("restored_step") or 0)
        lost = max(0, int(previous.get("last_step") or 0) - restored)
        current["recovery_seconds"] = seconds
        current["lost_steps"] = lost
        self.new_recoveries.append(Recovery(int(current["attempt"]), seconds, lost))
        log.info(
            "attempt %s recovered: restored step %s, %s steps redone, %.2fs from failure detection "
            "to first step", current["attempt"], restored, lost, seconds or float("nan"),
        )
        return True

    # -- end ------------------------------------------------------------------------------
    def close(self, now: float, failure: str | None) -> None:
        """The run ended: close the open attempt (with the failure text, if it failed)."""
        current = self.current
        if current is not None and current.get("ended_at") is None:
            current["ended_at"] = now
            if failure and not current.get("failure"):
                current["failure"] = failure

    def last_failure(self) -> str | None:
        for attempt in reversed(self.attempts):
            if attempt.get("failure"):
                return str(attempt["failure"])
        return None

    def public_attempts(self) -> list[dict[str, Any]]:
        """The attempt records as shown to users (no internal bookkeeping keys)."""
        hidden = {"failure_kind", "first_step_at"}
        return [{k: v for k, v in a.items() if k not in hidden} for a in self.attempts]


def _rank(kind: Any) -> int:
    return _FAILURE_KINDS.index(kind) if kind in _FAILURE_KINDS else len(_FAILURE_KINDS)
