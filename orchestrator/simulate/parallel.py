"""Replaying independent partitions side by side, one worker process each at a time.

Partitions (a trace's virtual clusters) share nothing, so a policy's replay of a trace takes as
long as its largest partition when there are cores enough. Opt-in (``--processes``): on the
2-vCPU development VM two processes were slower than one (the replay's CPU seconds doubled: its
vCPUs do not give two cores' worth of time), so one process stays the default. Workers are
forked, so they inherit the partitions instead of receiving them pickled; each sends back only
its jobs (their full history) and the replay's end time. The parent rebuilds each :class:`Replay` from them: after a
complete replay no job runs, so the cluster state is "every job's history, all capacity free",
exactly what the replay left. Progress reaches the caller's ``on_finished`` through a queue.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import SimpleQueue

from orchestrator.scheduler import ClusterState, JobStatus, ManualClock, Scheduler, get_policy
from orchestrator.scheduler.state import Job
from orchestrator.simulate.engine import Replay, replay
from orchestrator.simulate.trace import Partition


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


@dataclass
class _Outcome:
    index: int
    time: float
    passes: int
    jobs: list[Job]


# What forked workers inherit: (partitions, policy name, backfill bound, progress queue or None).
_SHARED: tuple[Sequence[Partition], str, float | None, SimpleQueue[int] | None] | None = None


def _replay_one(index: int) -> _Outcome:
    assert _SHARED is not None  # set by replay_in_processes before the workers fork
    partitions, policy, bound, progress = _SHARED
    done = replay(
        partitions[index],
        policy,
        backfill_bound_s=bound,
        on_finished=progress.put if progress is not None else None,
    )
    jobs = list(done.state.jobs.values())
    for job in jobs:
        job.rank_cache = None  # the policy's cache, meaningless in the parent
    return _Outcome(index, done.time, done.passes, jobs)


def _rebuild(partition: Partition, policy: str, bound: float | None, outcome: _Outcome) -> Replay:
    state = ClusterState(partition.cluster)
    for job in outcome.jobs:
        state.jobs[job.id] = job
        if job.status is JobStatus.PENDING:  # never placed (e.g. too large for its partition)
            state._enqueue(job)  # the state's own bookkeeping of waiting jobs
        elif job.status is JobStatus.RUNNING:  # a complete replay ends every run
            raise AssertionError(f"job {job.id} still runs at the end of a complete replay")
    scheduler = Scheduler(
        partition.cluster, get_policy(policy), ManualClock(outcome.time), backfill_bound_s=bound
    )
    return Replay(partition, state, scheduler, outcome.time, outcome.passes)


def replay_in_processes(
    partitions: Sequence[Partition],
    policy: str,
    processes: int,
    *,
    backfill_bound_s: float | None = None,
    on_finished: Callable[[int], None] | None = None,
) -> list[Replay]:
    """Complete replays of ``partitions`` (in their order) by ``processes`` forked workers."""
    global _SHARED
    context = multiprocessing.get_context("fork")
    progress = context.SimpleQueue() if on_finished is not None else None
    # Largest first: the longest replay starts at once, the small ones fill the other cores.
    order = sorted(range(len(partitions)), key=lambda i: -len(partitions[i].jobs))
    _SHARED = (partitions, policy, backfill_bound_s, progress)
    outcomes: dict[int, _Outcome] = {}
    try:
        with context.Pool(processes) as pool:
            pending = [pool.apply_async(_replay_one, (index,)) for index in order]
            while pending:
                pending[0].wait(timeout=0.2)
                _drain(progress, on_finished)
                still = []
                for result in pending:
                    if result.ready():
                        outcome = result.get()  # re-raises a worker's error (SimulationError)
                        outcomes[outcome.index] = outcome
                    else:
                        still.append(result)
                pending = still
            _drain(progress, on_finished)
    finally:
        _SHARED = None
    return [_rebuild(p, policy, backfill_bound_s, outcomes[i]) for i, p in enumerate(partitions)]


def _drain(progress: SimpleQueue[int] | None, on_finished: Callable[[int], None] | None) -> None:
    if progress is None or on_finished is None:
        return
    try:
        while not progress.empty():
            on_finished(progress.get())
    except (OSError, EOFError, queue_module.Empty):  # the queue closed with the pool
        return
