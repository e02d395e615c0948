"""The channel between workers and the driver: a tiny Ray actor.

``ray.train.report`` is a barrier and Ray keeps only reports that carry a checkpoint, so the
workers stream their events (step progress, epoch metrics, shard indices, printed lines,
attempt starts) to this actor with fire-and-forget calls, and the driver drains it a few times
a second. The same actor carries the driver's stop request (cancel, Ctrl-C) to the workers.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.events import Failure, Memory, WorkerError, from_wire


class ProgressSink:
    """Buffers worker events for the driver and holds the stop flag. Runs as a 0-CPU actor."""

    def __init__(self, attempts_before: int = 0) -> None:
        self._events: list[dict[str, Any]] = []
        self._stop_reason: str | None = None
        self._attempt = attempts_before  # attempts of earlier runs of this job (resume)
        self._first_attempt = attempts_before + 1
        self._returned = False  # rank 0's training function returned or raised (see returned())

    def next_attempt(self) -> tuple[int, int]:
        """Called by rank 0 when a worker group starts: (attempt number, restarts in this run)."""
        self._attempt += 1
        return self._attempt, self._attempt - self._first_attempt

    def push(self, events: list[dict[str, Any]]) -> None:
        """Buffer events in their wire form (:meth:`orchestrator.events.Event.to_wire`)."""
        self._events.extend(events)
        self._returned = self._returned or any(_rank0_returned(e) for e in events)

    def returned(self) -> bool:
        """True once rank 0's training function has returned or raised, in any attempt (its last
        events, the peak memory or the error, are sent after its checkpoints are written)."""
        return self._returned

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def stop_reason(self) -> str | None:
        return self._stop_reason

    def ping(self) -> float:
        return time.time()


def _rank0_returned(wire: dict[str, Any]) -> bool:
    """Whether a wire event says rank 0's training function returned (its peak memory) or raised."""
    try:
        event = from_wire(wire)
    except KeyError:  # a malformed event still tells who sent it and what it was
        return wire.get("type") in (Memory.KIND, WorkerError.KIND) and wire.get("rank") == 0
    match event:
        case Memory(rank=0) | WorkerError(rank=0):
            return True
        case _:
            return False


def create_sink(attempts_before: int = 0) -> Any:
    """Start the sink actor (0 CPUs, so it never competes with the training workers), on the
    driver's node as Ray Train's controller is: a lost worker node must not take the job's events."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ProgressSink)
    return actor_cls.options(scheduling_strategy=on_this_node()).remote(attempts_before)


def on_this_node() -> Any:
    """A scheduling strategy that keeps an actor on the node of the calling process."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def failure_reporter(sink: Any) -> Any:
    """A Ray Train callback that tells the driver, through the sink, when workers fail.

    It runs in Ray Train's controller, which notices a failed worker group (an exception, a
    dead process) before restarting it; the event marks when the failure was detected.
    """
    from ray.train import UserCallback

    class FailureReporter(UserCallback):  # type: ignore[misc]
        def __init__(self, sink: Any) -> None:
            self.sink = sink

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            errors = {int(rank): one_line(exc) for rank, exc in worker_exceptions.items()}
            self.sink.push.remote([Failure(errors=errors).to_wire()])

    return FailureReporter(sink)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    tail = [line for line in text if line and not line.startswith(" ")]
    return f"{type(exc).__name__}: {tail[-1] if tail else ''}".strip()
