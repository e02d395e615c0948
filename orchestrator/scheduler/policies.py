"""Scheduling policies, chosen by name: ``fifo``, ``sjf``, ``srtf`` (oracles) and ``las`` (default).

A policy only orders jobs. ``rank`` sorts jobs within a priority class (smaller first); its first
element is the job's *band*: a preemptive policy lets a job preempt only jobs of a strictly worse
band, so jobs of one band never preempt each other (no thrashing between equals). ``rank_until``
also says until when a rank holds, so a pass can reuse it instead of recomputing every job.

* ``fifo``: submit order, strict head-of-line blocking (no backfill).
* ``sjf``: shortest true duration first, non-preemptive, no backfill. Oracle: reads durations.
* ``srtf``: shortest true remaining time first, preemptive. Oracle.
* ``las`` (the default, non-clairvoyant): discretised two-dimensional least attained service in
  the spirit of Tiresias (Gu et al., NSDI'19). A job's attained service is accelerators x seconds
  it has run; thresholds split jobs into bands; a new job starts in band 0 and may preempt jobs
  of later bands; within a band, first come first served. Since most training jobs are short and
  a few run for days (a heavy tail), serving the least-served first approximates "shortest
  remaining first" without knowing any duration. A job waiting in a later band longer than
  ``starve_factor`` x its last run is promoted back to band 0 with its service count restarted
  (aging), so long jobs are never starved.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Sequence
from typing import ClassVar

from orchestrator.errors import UsageError
from orchestrator.scheduler.state import ClusterState, Job, JobStatus


class Policy:
    """Orders jobs. Subclasses set the class flags and override ``rank``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    clairvoyant: ClassVar[bool] = False  # reads true durations: a reference only
    preemptive: ClassVar[bool] = False  # a better-ranked job may preempt a worse band
    backfill: ClassVar[bool] = True  # False: a blocked job blocks everything behind it in its queue
    worst_band: float = math.inf  # no band is worse than this (lets a scan for worse bands stop)

    def rank(self, job: Job, now: float) -> tuple[float, ...]:
        """Smaller first. The first element is the band; the last must be ``job.seq`` (unique)."""
        raise NotImplementedError

    def band(self, job: Job, now: float) -> float:
        """``rank(job, now)[0]``; subclasses may compute it faster (it is asked of every running job)."""
        return self.rank(job, now)[0]

    def steady_key(self, job: Job, now: float) -> float | None:
        """For a running job: a number that stays fixed while it runs and orders running jobs as
        their bands do (greater: worse band); None when the policy has none."""
        return None

    def rank_until(self, job: Job, now: float) -> float:
        """Until when ``rank(job, now)`` stays valid if nothing happens to the job."""
        return math.inf

    def next_change(self, job: Job, now: float) -> float | None:
        """When ``job``'s rank or band changes with no event (None: not by itself)."""
        return None

    def promoted(self, job: Job, now: float) -> bool:
        """True when ``job`` starts by aging: its attained-service count restarts."""
        return False

    @property
    def cache_token(self) -> object:
        """What cached ranks were computed under: a policy whose thresholds move gives a new one
        at each move, so that every cached rank and band is computed again."""
        return self

    def observe(self, state: ClusterState, now: float) -> bool:
        """Learn from the state before a pass (finished jobs); True when ranks changed."""
        return False

    def holds(self, victim: Job, band: float, now: float) -> str | None:
        """The guard that keeps running ``victim`` from giving way by band to a job of ``band``
        (None: none does). A guarded victim reports the first band, so nothing preempts it by band."""
        return None

    def fresh(self) -> Policy:
        """A new instance with the same settings and nothing learnt (one per replayed partition)."""
        return copy.copy(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Fifo(Policy):
    name = "fifo"
    summary = "first come first served, no backfill"
    backfill = False

    def rank(self, job: Job, now: float) -> tuple[float, ...]:
        return (job.submit_time, job.seq)


class _Oracle(Policy):
    clairvoyant = True

    @staticmethod
    def duration(job: Job) -> float:
        if job.duration is None:
            raise UsageError(
                f"policy needs true job durations and job {job.id} has none",
                fix="sjf and srtf are oracles for trace replay; use las for real jobs",
            )
        return job.duration


class Sjf(_Oracle):
    name = "sjf"
    summary = "shortest true duration first, non-preemptive, no backfill (oracle)"
    backfill = False

    def rank(self, job: Job, now: float) -> tuple[float, ...]:
        return (self.duration(job), job.submit_time, job.seq)


class Srtf(_Oracle):
    name = "srtf"
    summary = "shortest true remaining time first, preemptive (oracle)"
    preemptive = True

    def rank(self, job: Job, now: float) -> tuple[float, ...]:
        self.duration(job)
        return (job.remaining_at(now), job.submit_time, job.seq)

    def band(self, job: Job, now: float) -> float:
        if job.duration is None or job.run_start is None:
            return self.rank(job, now)[0]
        # remaining_at inlined: this is asked of every running job in most passes
        return job.duration - job.work_done + job.restore_debt - (now - job.run_start)

    def rank_until(self, job: Job, now: float) -> float:
        return now if job.status is JobStatus.RUNNING else math.inf  # a running job's rank moves

    def steady_key(self, job: Job, now: float) -> float | None:
        return self.band(job, now) + now  # when it would finish: every running band falls at one rate


class Las(Policy):
    """Discretised 2D least-attained-service with preemption and aging (the default)."""

    name = "las"
    summary = "least attained accelerator-time first, in bands, preemptive, with aging (default)"
    preemptive = True

    def __init__(
        self,
        thresholds: Sequence[float] = (28_800.0, 288_000.0),
        starve_factor: float = 4.0,
        min_starve_s: float = 600.0,
    ) -> None:
        if list(thresholds) != sorted(thresholds) or any(t <= 0 for t in thresholds):
            raise UsageError(
                f"las thresholds must be positive and increasing, got {list(thresholds)}",
                fix="e.g. thresholds=(28800, 288000) accelerator-seconds",
            )
        self.thresholds = tuple(float(t) for t in thresholds)
        self.worst_band = len(self.thresholds)
        self.starve_factor = starve_factor
        self.min_starve_s = min_starve_s

    def service(self, job: Job, now: float) -> float:
        """Attained service since the job last started by aging (accelerator-seconds)."""
        return job.attained_at(now) - job.service_forgiven

    def _starving(self, job: Job, now: float) -> bool:
        # The sum, not ``now - queued_since``: ``next_change`` names this same sum as the time the
        # job starts starving, and in floating point the two forms can disagree by one rounding
        # (the waiting order then re-ranked the job at that time for ever).
        return job.status is JobStatus.PENDING and now >= job.queued_since + self._starve_after(job)

    def _starve_after(self, job: Job) -> float:
        return max(self.min_starve_s, self.starve_factor * job.last_run)

    def rank(self, job: Job, now: float) -> tuple[float, ...]:
        return (self.band(job, now), job.submit_time, job.seq)

    def band(self, job: Job, now: float) -> float:
        start = job.run_start
        if start is not None:  # running, so not starving: service inlined (asked of every running job)
            return bisect.bisect_right(
                self.thresholds, job.attained + job.size * (now - start) - job.service_forgiven
            )
        return 0 if self._starving(job, now) else bisect.bisect_right(self.thresholds, self.service(job, now))

    def rank_until(self, job: Job, now: float) -> float:
        when = self.next_change(job, now)
        return math.inf if when is None else when

    def promoted(self, job: Job, now: float) -> bool:
        return self._starving(job, now) and bisect.bisect_right(self.thresholds, self.service(job, now)) > 0

    def next_change(self, job: Job, now: float) -> float | None:
        band = bisect.bisect_right(self.thresholds, self.service(job, now))
        if job.status is JobStatus.RUNNING and job.run_start is not None:
            if band >= len(self.thresholds):
                return None
            return now + (self.thresholds[band] - self.service(job, now)) / job.size
        if band == 0 or self._starving(job, now):
            return None
        return job.queued_since + self._starve_after(job)

    def __repr__(self) -> str:
        return f"Las(thresholds={self.thresholds}, starve_factor={self.starve_factor})"


from orchestrator.scheduler.adaptive import Adaptive  # noqa: E402  (it builds on Las, above)

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Fifo, Sjf, Srtf, Las, Adaptive)}
DEFAULT_POLICY = "adaptive"


def get_policy(name: str | Policy | None = None) -> Policy:
    """A policy by name (``default`` means ``adaptive``), or the instance given."""
    if isinstance(name, Policy):
        return name
    key = DEFAULT_POLICY if name in (None, "default") else str(name)
    if key not in POLICIES:
        raise UsageError(
            f"unknown scheduling policy {name!r}", fix="use one of " + ", ".join([*POLICIES, "default"])
        )
    return POLICIES[key]()
