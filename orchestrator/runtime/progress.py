"""The channel between workers and the driver: a tiny Ray actor.

``ray.train.report`` is a barrier and Ray keeps only reports that carry a checkpoint, so the
workers stream their events (step progress, epoch metrics, shard indices, printed lines,
attempt starts) to this actor with fire-and-forget calls, and the driver drains it a few times
a second. The same actor carries the driver's stop request (cancel, Ctrl-C) to the workers.
"""

from __future__ import annotations

import time
from typing import Any


class ProgressSink:
    """Buffers worker events for the driver and holds the stop flag. Runs as a 0-CPU actor."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._stop_reason: str | None = None

    def push(self, events: list[dict[str, Any]]) -> None:
        self._events.extend(events)

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


def create_sink(name: str | None = None) -> Any:
    """Start the sink actor (0 CPUs, so it never competes with the training workers)."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ProgressSink)
    options: dict[str, Any] = {}
    if name:
        options["name"] = name
    return actor_cls.options(**options).remote()
