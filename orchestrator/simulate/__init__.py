"""Trace-driven simulation: replays a job trace through the real scheduler in simulated time.

No scheduling logic lives here: :mod:`orchestrator.simulate.engine` feeds arrivals and
completions to :class:`orchestrator.scheduler.Scheduler` and applies its decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from orchestrator.scheduler import Policy
from orchestrator.simulate.engine import Replay, SimulationError, replay
from orchestrator.simulate.parallel import can_fork, replay_in_processes
from orchestrator.simulate.report import PolicyReport, job_completion_times, reports_json, summarize
from orchestrator.simulate.trace import Partition, TraceError, TraceJob, assign, read_trace


def run_policy(
    partitions: Sequence[Partition],
    policy: str | Policy,
    *,
    backfill_bound_s: float | None = None,
    until: float | None = None,
    on_finished: Callable[[int], None] | None = None,
    processes: int = 1,
) -> tuple[list[Replay], float]:
    """Replay every partition with one policy; returns the replays and the wall seconds it took.

    ``processes`` > 1 replays partitions side by side in forked worker processes (complete replays
    of a policy given by name only; otherwise, or where fork is unavailable, one after another
    here). The results are the same either way: partitions share nothing.
    """
    started = time.perf_counter()
    if processes > 1 and len(partitions) > 1 and until is None and isinstance(policy, str) and can_fork():
        replays = replay_in_processes(
            partitions,
            policy,
            min(processes, len(partitions)),
            backfill_bound_s=backfill_bound_s,
            on_finished=on_finished,
        )
    else:
        replays = [
            replay(p, policy, until=until, backfill_bound_s=backfill_bound_s, on_finished=on_finished)
            for p in partitions
        ]
    return replays, time.perf_counter() - started


def load(
    trace_path: str,
    cluster_path: str,
    *,
    contended: bool = False,
    limit: int | None = None,
    only: Sequence[str] = (),
) -> list[Partition]:
    """Read a trace and split it over a cluster's partitions (``only``: keep these VCs)."""
    partitions = assign(
        read_trace(trace_path, limit), cluster_path, contended=contended, trace_name=trace_path
    )
    if only:
        unknown = sorted(set(only) - {p.name for p in partitions})
        if unknown:
            raise TraceError(
                f"no jobs for partition {', '.join(unknown)}",
                fix="use one of " + ", ".join(p.name for p in partitions),
            )
        partitions = [p for p in partitions if p.name in only]
    return partitions


__all__ = [
    "Partition",
    "PolicyReport",
    "Replay",
    "SimulationError",
    "TraceError",
    "TraceJob",
    "job_completion_times",
    "load",
    "replay",
    "reports_json",
    "run_policy",
    "summarize",
]
