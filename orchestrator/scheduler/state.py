"""The scheduler's view of jobs and of the cluster's free resources, and its bookkeeping.

One owner applies decisions here (a backend, or the simulator), so job state is kept in one
place. Time accounting is lazy: a running job's progress is settled when it stops; in between,
``attained_at(now)`` and ``remaining_at(now)`` extrapolate.

Preemption is checkpoint-and-requeue: the job keeps its progress and owes a checkpoint/restore
cost (seconds) that it pays when it next runs, before it makes progress again.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.scheduler.capacity import Capacity
from orchestrator.scheduler.cluster import ClusterSpec
from orchestrator.scheduler.decisions import Decision, Place, Placement, Preempt
from orchestrator.scheduler.jobs import GangRequest


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"


def default_checkpoint_cost(size: float) -> float:
    """Seconds to checkpoint and restore a gang of ``size`` accelerators: 7 s for one, 30 s up
    to 8, 60 s above (the cost model the simulator charges a preempted job)."""
    if size <= 1:
        return 7.0
    return 30.0 if size <= 8 else 60.0


@dataclass(eq=False, slots=True)
class Job:
    """A job as the scheduler sees it. ``duration`` (true work, seconds) is known only to oracles
    and the simulator; the default policy never reads it."""

    id: str
    request: GangRequest
    submit_time: float
    priority: int
    seq: int
    size: float  # the gang's accelerators (or CPUs): the unit of attained service
    queue: str
    duration: float | None = None
    status: JobStatus = JobStatus.PENDING
    queued_since: float = 0.0
    queued_total: float = 0.0
    run_start: float | None = None
    placement: Placement | None = None
    executed: float = 0.0  # wall seconds of finished runs
    work_done: float = 0.0  # seconds of useful progress
    restore_debt: float = 0.0  # checkpoint/restore seconds owed before progress resumes
    attained: float = 0.0  # gang size x seconds of finished runs (2D attained service)
    service_forgiven: float = 0.0  # attained service written off when aging promoted the job
    last_run: float = 0.0
    preemptions: int = 0
    preempted_at: tuple[float, ...] = ()  # the times of its latest preemptions (a few, newest last)
    first_start: float | None = None
    finished_at: float | None = None
    backfilled: bool = False
    # (policy, run_start, queued_since, valid until, (-priority, rank)): lets a pass reuse a rank
    rank_cache: tuple[object, float | None, float, float, tuple[float, tuple[float, ...]]] | None = None

    def attained_at(self, now: float) -> float:
        """Accelerator-seconds of service so far (the 2D attained service of LAS policies)."""
        if self.run_start is None:
            return self.attained
        return self.attained + self.size * (now - self.run_start)

    def executed_at(self, now: float) -> float:
        return self.executed + (now - self.run_start if self.run_start is not None else 0.0)

    def remaining_at(self, now: float) -> float:
        """Seconds still to run (oracle knowledge: needs ``duration``)."""
        if self.duration is None:
            raise UsageError(
                f"job {self.id} has no known duration",
                fix="use a non-clairvoyant policy such as las; oracles are for traces",
            )
        left = self.duration - self.work_done + self.restore_debt
        return left - (now - self.run_start) if self.run_start is not None else left


FINISHED_KEPT = 5_000  # finished jobs whose service a state keeps (a sliding sample of the workload)
PREEMPTIONS_KEPT = 8  # preemption times kept per job (for a bound on preemptions in a window)


def _log(log: list[Any], entry: Any, live: int) -> int:
    """Append ``entry`` to one of the state's change logs; returns how many old entries were
    dropped from its front (a long-lived state keeps a log to a few times its ``live`` jobs)."""
    log.append(entry)
    if len(log) <= 4 * live + 4096:
        return 0
    drop = len(log) // 2
    del log[:drop]
    return drop


class ClusterState:
    """Jobs (pending, running, finished) and the free capacity they leave."""

    def __init__(
        self, cluster: ClusterSpec, checkpoint_cost: Callable[[float], float] = default_checkpoint_cost
    ) -> None:
        self.cluster = cluster
        self.capacity = Capacity(cluster)
        self.checkpoint_cost = checkpoint_cost
        self.jobs: dict[str, Job] = {}
        self.pending: dict[str, Job] = {}
        self.running: dict[str, Job] = {}
        # Kept up to date so that a pass need not scan every job for them:
        self.pending_queues: Counter[str] = Counter()  # queue -> pending jobs
        self.running_priorities: Counter[int] = Counter()  # priority -> running jobs
        self.running_backfilled: dict[str, Job] = {}  # running jobs that were started by backfill
        # Every (re)queueing in order, so a scheduler can keep its order up to date; entries before
        # ``enqueued_base`` were trimmed (a reader that fell behind rebuilds its order).
        self.enqueued: list[Job] = []
        self.enqueued_base = 0
        # Likewise every departure from the queue (started, or finished while waiting), by job id,
        # so a reader need not compare its jobs with every pending one to find who left.
        self.dequeued: list[str] = []
        self.dequeued_base = 0
        # And every run that started or stopped, by job id (the running set's changes).
        self.run_changes: list[str] = []
        self.run_changes_base = 0
        # Attained service (accelerator-seconds) of the latest jobs that finished after running,
        # and how many did in all: what a policy may learn the workload's service distribution from.
        self.finished_service: deque[float] = deque(maxlen=FINISHED_KEPT)
        self.finished_count = 0
        self._seq = itertools.count()

    def submit(
        self,
        job_id: str,
        request: GangRequest,
        now: float,
        *,
        duration: float | None = None,
        submit_time: float | None = None,
    ) -> Job:
        """Add a job to its queue."""
        if job_id in self.jobs:
            raise UsageError(f"job {job_id!r} is already known to the scheduler", fix="use a new job id")
        job = Job(
            job_id,
            request,
            now if submit_time is None else submit_time,
            self.cluster.priority_value(request.priority, request.queue),
            next(self._seq),
            request.size,
            request.queue,
            duration=duration,
            queued_since=now,
        )
        self.jobs[job_id] = job
        self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        self.pending[job.id] = job
        self.enqueued_base += _log(self.enqueued, job, len(self.pending))
        self.pending_queues[job.queue] += 1

    def _dequeue(self, job: Job) -> None:
        del self.pending[job.id]
        self.dequeued_base += _log(self.dequeued, job.id, len(self.pending))
        self.pending_queues[job.queue] -= 1
        if not self.pending_queues[job.queue]:
            del self.pending_queues[job.queue]

    def apply(self, decisions: Iterable[Decision], now: float) -> list[Job]:
        """Apply Place and Preempt decisions in order (Wait needs nothing); return started jobs."""
        started = []
        for decision in decisions:
            if isinstance(decision, Place):
                job = self.jobs[decision.job_id]
                job.backfilled = decision.backfill
                self.start(job, decision.placement, now)
                if decision.promoted:
                    job.service_forgiven = job.attained
                started.append(job)
            elif isinstance(decision, Preempt):
                self.preempt(self.jobs[decision.job_id], now)
        return started

    def start(self, job: Job, placement: Placement, now: float) -> None:
        if job.status is not JobStatus.PENDING:
            raise UsageError(
                f"job {job.id} is {job.status.value}, cannot start it", fix="start pending jobs only"
            )
        self.capacity.take(placement, job.queue)
        self._dequeue(job)
        self.running[job.id] = job
        self.running_priorities[job.priority] += 1
        if job.backfilled:
            self.running_backfilled[job.id] = job
        self.run_changes_base += _log(self.run_changes, job.id, len(self.running))
        job.status, job.placement, job.run_start = JobStatus.RUNNING, placement, now
        job.queued_total += now - job.queued_since
        if job.first_start is None:
            job.first_start = now

    def preempt(self, job: Job, now: float) -> None:
        """Checkpoint and requeue: progress is kept, the checkpoint cost is owed."""
        self._stop(job, now)
        job.restore_debt += self.checkpoint_cost(job.size)
        job.preemptions += 1
        job.preempted_at = (*job.preempted_at[-(PREEMPTIONS_KEPT - 1) :], now)
        job.status, job.queued_since = JobStatus.PENDING, now
        self._enqueue(job)

    def remember_finished(self, services: Iterable[float]) -> None:
        """Count jobs that finished before this state was built, by their attained service (a live
        queue rebuilds its state at every call, and the policy learns the workload from these)."""
        for service in services:
            self.finished_service.append(service)
            self.finished_count += 1

    def finish(self, job_id: str, now: float) -> Job:
        """The job ended (done, failed or cancelled): free its resources."""
        job = self.jobs[job_id]
        if job.status is JobStatus.RUNNING:
            self._stop(job, now)
            self.finished_service.append(job.attained)
            self.finished_count += 1
        elif job.status is JobStatus.PENDING:
            self._dequeue(job)
            job.queued_total += now - job.queued_since
        job.status, job.finished_at = JobStatus.FINISHED, now
        return job

    def _stop(self, job: Job, now: float) -> None:
        assert job.run_start is not None and job.placement is not None  # a running job has both
        ran = now - job.run_start
        paid = min(ran, job.restore_debt)
        job.restore_debt -= paid
        job.work_done += ran - paid
        job.executed += ran
        job.attained += job.size * ran
        job.last_run = ran
        self.capacity.give(job.placement, job.queue)
        del self.running[job.id]
        self.running_backfilled.pop(job.id, None)
        self.run_changes_base += _log(self.run_changes, job.id, len(self.running))
        self.running_priorities[job.priority] -= 1
        if not self.running_priorities[job.priority]:
            del self.running_priorities[job.priority]
        job.run_start, job.placement = None, None

    def lost_work(self, job: Job) -> float:
        """Accelerator-seconds a preemption of ``job`` costs: its checkpoint and restore."""
        return self.checkpoint_cost(job.size) * job.size
