"""Waiting jobs in scheduling order, kept sorted from one pass to the next.

Re-sorting every waiting job at every event would cost O(waiting) policy calls per pass; with
thousands waiting and tens of thousands of events that dominates a trace replay. Instead the
order is updated with what changed since the last pass: jobs that left the queue (the state's
``dequeued`` log), jobs the state (re)queued (its ``enqueued`` log), and jobs whose rank the
policy said would expire (aging). The result is exactly what a full sort would give.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Iterator

from orchestrator.scheduler.policies import Policy
from orchestrator.scheduler.state import ClusterState, Job

SortKey = tuple[float, tuple[float, ...]]  # (-priority, policy rank); ranks end with the job's seq


class PendingOrder:
    """The pending jobs of one state, sorted by (priority, policy rank)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.keys: dict[str, SortKey] = {}
        self.entries: list[tuple[SortKey, Job]] = []
        self.expiries: list[tuple[float, int, str]] = []  # (when, seq, job id): ranks that age
        self.seen = 0  # how much of the state's enqueue log has been read
        self.seen_left = 0  # and of its dequeue log

    def update(self, state: ClusterState, now: float) -> None:
        pending = state.pending
        start = self.seen - state.enqueued_base
        left = self.seen_left - state.dequeued_base
        if start < 0 or left < 0:  # fell behind a trimmed log: rank every waiting job afresh
            self.keys, self.entries, self.expiries = {}, [], []
            fresh: list[Job] = list(pending.values())
        else:
            for job_id in state.dequeued[left:]:  # started or finished since the last pass
                self._remove(job_id)
            fresh = [job for job in state.enqueued[start:] if pending.get(job.id) is job]
        if not self.entries and len(fresh) > 1:  # a full (re)build: one sort, not an insertion each
            self._build(list({job.id: job for job in fresh}.values()), now)
            fresh = []
        for job in fresh:  # (re)queued since the last pass
            self._remove(job.id)
            self._insert(job, now)
        self.seen = state.enqueued_base + len(state.enqueued)
        self.seen_left = state.dequeued_base + len(state.dequeued)
        while self.expiries and self.expiries[0][0] <= now:
            job_id = heapq.heappop(self.expiries)[2]
            if job_id in self.keys:
                self._remove(job_id)
                self._insert(pending[job_id], now)

    def next_time(self, now: float) -> float | None:
        """When a waiting job's rank next changes by itself (aging), or None."""
        return self.expiries[0][0] if self.expiries else None

    def __iter__(self) -> Iterator[Job]:
        return (job for _, job in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def _insert(self, job: Job, now: float) -> None:
        key = (-job.priority, self.policy.rank(job, now))
        self.keys[job.id] = key
        bisect.insort(self.entries, (key, job))
        self._expire_at(self.policy.rank_until(job, now), job, now)

    def _expire_at(self, until: float, job: Job, now: float) -> None:
        if until == math.inf:
            return
        # A rank just computed at ``now`` cannot expire at ``now``: a policy that says so (a
        # rounding slip) is asked again just after, never in a loop within this pass.
        heapq.heappush(self.expiries, (until if until > now else math.nextafter(now, math.inf), job.seq, job.id))

    def _build(self, jobs: list[Job], now: float) -> None:
        """The order of ``jobs`` from nothing (a policy's thresholds moved, or a first pass)."""
        for job in jobs:
            key = self.keys[job.id] = (-job.priority, self.policy.rank(job, now))
            self.entries.append((key, job))
            self._expire_at(self.policy.rank_until(job, now), job, now)
        self.entries.sort()  # keys end with the job's unique seq: jobs are never compared

    def _remove(self, job_id: str) -> None:
        key = self.keys.pop(job_id, None)
        if key is None:
            return
        index = bisect.bisect_left(self.entries, (key,))
        while self.entries[index][1].id != job_id:  # equal keys are impossible (seq), but be safe
            index += 1
        del self.entries[index]


class RunningWatch:
    """When running jobs change rank by themselves (a policy threshold), soonest first.

    Runs that started or stopped are found in the state's ``run_changes`` log (or, for a reader
    that fell behind its trimmed start, by a set difference of job ids), so a pass does not ask
    the policy about every running job every time. A run that stopped and restarted between two
    passes is caught when its old entry comes due.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.seen: dict[str, float | None] = {}  # job id -> run start it was computed for
        self.heap: list[tuple[float, str, float]] = []  # (when, job id, run start)
        self.band_of: dict[str, float] = {}  # job id -> band when last tracked
        self.band_count: Counter[float] = Counter()  # band -> running jobs in it
        # For policies whose running jobs keep their band order (``Policy.steady_key``): the
        # running jobs by that key, worst first, so "is any running job in a worse band?" costs
        # O(log n) instead of a scan of every running job at every pass.
        self.worst_seen: dict[str, float | None] = {}
        self.worst_heap: list[tuple[float, int, str, float]] = []  # (-key, seq, job id, run start)
        self.synced = 0  # how much of the state's run_changes log sync() and worst() have read
        self.worst_synced = 0

    @staticmethod
    def _changed(state: ClusterState, seen: dict[str, float | None], read: int) -> tuple[list[str], list[str]]:
        """(ids in ``seen`` that no longer run, running ids not in ``seen``): what a set difference
        of ``seen`` and the running jobs gives, read from the state's log after entry ``read``."""
        running = state.running
        start = read - state.run_changes_base
        if start < 0:  # the log was trimmed past what this reader had read
            return list(seen.keys() - running.keys()), list(running.keys() - seen.keys())
        gone, new = [], []
        for job_id in dict.fromkeys(state.run_changes[start:]):
            if job_id in running:
                if job_id not in seen:
                    new.append(job_id)
            elif job_id in seen:
                gone.append(job_id)
        return gone, new

    def worst(self, state: ClusterState, now: float) -> Job | None:
        """The running job with the worst band (None: none runs, or the policy has no steady key)."""
        running = state.running
        gone, new = self._changed(state, self.worst_seen, self.worst_synced)
        for job_id in gone:
            del self.worst_seen[job_id]
        self.worst_synced = state.run_changes_base + len(state.run_changes)
        for job_id in new:
            job = running[job_id]
            key = self.policy.steady_key(job, now)
            if key is None or job.run_start is None:
                self.worst_synced = -1  # next time by set difference: this job and the rest again
                return None
            self.worst_seen[job_id] = job.run_start
            heapq.heappush(self.worst_heap, (-key, job.seq, job_id, job.run_start))
        heap = self.worst_heap
        while heap and self.worst_seen.get(heap[0][2]) != heap[0][3]:
            heapq.heappop(heap)  # stopped (and maybe restarted: its new entry is in the heap too)
        return running[heap[0][2]] if heap else None

    def next_time(self, state: ClusterState, now: float) -> float | None:
        self.sync(state, now)
        return self.heap[0][0] if self.heap else None

    def worst_band(self, state: ClusterState, now: float) -> float:
        """The worst band among running jobs. Exact for policies whose running bands change only
        at ``next_change`` (a restart between two syncs may leave it too high: safe for a bound)."""
        self.sync(state, now)
        return max(self.band_count, default=-math.inf)

    def sync(self, state: ClusterState, now: float) -> None:
        """Catch up with runs that started or stopped, and with changes due by ``now``."""
        running = state.running
        gone, new = self._changed(state, self.seen, self.synced)
        self.synced = state.run_changes_base + len(state.run_changes)
        for job_id in gone:
            del self.seen[job_id]
            self._count(self.band_of.pop(job_id), -1)
        for job_id in new:
            self._track(running[job_id], now)
        heap = self.heap
        while heap and (heap[0][0] <= now or self.seen.get(heap[0][1]) != heap[0][2]):
            _, job_id, started = heapq.heappop(heap)
            job = running.get(job_id)
            if job is not None and self.seen.get(job_id) == started:
                self._track(job, now)  # due now: its next change, if any

    def _track(self, job: Job, now: float) -> None:
        self.seen[job.id] = job.run_start
        old = self.band_of.get(job.id)
        if old is not None:
            self._count(old, -1)
        band = self.band_of[job.id] = self.policy.band(job, now)
        self._count(band, +1)
        when = self.policy.next_change(job, now)
        if when is not None and job.run_start is not None:
            heapq.heappush(self.heap, (max(when, now + 1e-6), job.id, job.run_start))

    def _count(self, band: float, change: int) -> None:
        left = self.band_count[band] + change
        if left:
            self.band_count[band] = left
        else:
            del self.band_count[band]
