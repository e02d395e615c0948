"""A queue as people read it: running jobs, jobs about to start, waiting jobs and why.

Used by ``orchestrator queue`` / ``explain`` (the local backend's jobs) and by
``orchestrator simulate --explain-at T`` (the simulator's state at time T).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.scheduler.core import Scheduler
from orchestrator.scheduler.decisions import Place
from orchestrator.scheduler.explain import duration_words
from orchestrator.scheduler.state import ClusterState, Job


@dataclass(frozen=True)
class QueueRow:
    """One job in the queue view. ``state``: running, starting, waiting or unschedulable."""

    job_id: str
    queue: str
    priority: int
    state: str
    gang: str
    since_s: float  # how long it has run (running) or waited (others)
    detail: str  # where it runs or would start, or why it waits
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def queue_rows(scheduler: Scheduler, state: ClusterState) -> list[QueueRow]:
    """Running jobs (longest running first), then waiting jobs in the order the scheduler sees them."""
    now = scheduler.clock.now()
    result = scheduler.schedule(state, explain=True)
    rows = [_running(job, now) for job in sorted(state.running.values(), key=lambda j: j.run_start or 0.0)]
    places = {d.job_id: d for d in result.decisions if isinstance(d, Place)}
    for job_id in result.order:
        job = state.jobs[job_id]
        waited = now - job.queued_since
        gang = job.request.describe()
        place = places.get(job_id)
        if place is not None:
            detail = f"would start now on {place.placement.describe()}"
            if place.preempts:
                detail += f", preempting {', '.join(place.preempts)}"
            rows.append(QueueRow(job.id, job.queue, job.priority, "starting", gang, waited, detail))
            continue
        wait = result.waits[job_id]
        rows.append(
            QueueRow(
                job.id,
                job.queue,
                job.priority,
                "unschedulable" if wait.permanent else "waiting",
                gang,
                waited,
                wait.message,
                tuple(r.text for r in wait.reasons),
            )
        )
    return rows


def _running(job: Job, now: float) -> QueueRow:
    assert job.placement is not None and job.run_start is not None  # running jobs are placed
    detail = f"on {job.placement.describe()}"
    if job.preemptions:
        detail += f" (resumed after {job.preemptions} preemption{'s' * (job.preemptions != 1)})"
    return QueueRow(
        job.id,
        job.queue,
        job.priority,
        "running",
        job.request.describe(job.placement.accelerator),
        now - job.run_start,
        detail,
    )


def explain_job(scheduler: Scheduler, state: ClusterState, job_id: str) -> QueueRow | None:
    """The queue row of one job, or None when the scheduler does not hold it (finished, unknown)."""
    job = state.jobs.get(job_id)
    if job is None or (job.id not in state.running and job.id not in state.pending):
        return None
    return next(row for row in queue_rows(scheduler, state) if row.job_id == job_id)


__all__ = ["QueueRow", "duration_words", "explain_job", "queue_rows"]
