"""The operator's use of the scheduler: a book of which TrainingJob holds which pool.

An adapter over :mod:`orchestrator.scheduler` (``ClusterState`` + ``Scheduler``), which stays
unchanged. The book adds what a long-running operator needs:

* **idempotence** -- asking again for a placed job returns its placement;
* **restore** -- after a restart, jobs that already have a RayJob take their pool back first
  (``restore``), before any waiting job is considered;
* **pool changes** -- ``set_cluster`` rebuilds the state on the new pools, keeping placed and
  waiting jobs;
* **no preemption** -- the operator does not stop running RayJobs for others: a pass's decisions
  are applied up to the first ``Preempt``, and jobs that needed one keep waiting.

Thread-safe: kopf runs handlers for different objects concurrently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.scheduler import (
    Clock,
    ClusterSpec,
    ClusterState,
    GangRequest,
    Place,
    Preempt,
    Reason,
    Scheduler,
    SystemClock,
    Wait,
    request_from_spec,
)
from orchestrator.scheduler.cluster import CPU
from orchestrator.scheduler.placement import find_placement
from orchestrator.spec.models import JobSpec

NO_POOLS = Reason("no-pools", "no node pools are known: add a ConfigMap labelled orchestrator.dev/node-pools=true "
                              "(see deploy/k8s/overlays), or run the operator with --pools-from-nodes")


@dataclass
class _Entry:
    request: GangRequest
    pool: str | None  # the pool it holds, None while it waits


class PlacementBook:
    """Which jobs (keys such as ``namespace/name``) hold which pools, and who waits."""

    def __init__(self, cluster: ClusterSpec | None = None, *, clock: Clock | None = None,
                 policy: str | None = None) -> None:
        self._lock = threading.RLock()
        self._clock: Clock = clock or SystemClock()
        self._policy = policy
        self._entries: dict[str, _Entry] = {}
        self._cluster: ClusterSpec | None = None
        self._state: ClusterState | None = None
        self._scheduler: Scheduler | None = None
        self.set_cluster(cluster)

    @property
    def cluster(self) -> ClusterSpec | None:
        return self._cluster

    def set_cluster(self, cluster: ClusterSpec | None) -> None:
        """Use new pools: placed jobs keep their pool (if it still exists), waiting jobs wait on."""
        with self._lock:
            self._cluster = cluster
            self._state = ClusterState(cluster) if cluster is not None else None
            self._scheduler = Scheduler(cluster, self._policy, self._clock) if cluster is not None else None
            entries, self._entries = self._entries, {}
            for key, entry in sorted(entries.items(), key=lambda kv: kv[1].pool is None):
                if entry.pool is not None and not self._restore(key, entry.request, entry.pool):
                    self._entries[key] = _Entry(entry.request, entry.pool)  # runs on, outside the book
                elif entry.pool is None:
                    self._enqueue(key, entry.request)

    def placed(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.pool if entry else None

    def waiting(self) -> list[str]:
        with self._lock:
            return sorted(k for k, e in self._entries.items() if e.pool is None)

    def usage(self) -> dict[str, tuple[str, float, float]]:
        """Per pool: (accelerator type, accelerators -- or CPUs -- in total, allocated to placed jobs)."""
        with self._lock:
            if self._state is None:
                return {}
            out = {}
            for name, cap in self._state.capacity.pools.items():
                total = cap.pool.capacity
                out[name] = (cap.pool.accelerator, total, total - cap.free_total)
            return out

    def _enqueue(self, key: str, request: GangRequest) -> None:
        if self._state is not None:
            self._state.submit(key, request, self._clock.now())
        self._entries[key] = _Entry(request, None)

    def _restore(self, key: str, request: GangRequest, pool_name: str) -> bool:
        """Take ``pool_name`` for a job that already runs there; False when it does not fit the book."""
        state = self._state
        if state is None or pool_name not in state.capacity.pools:
            return False
        cap = state.capacity.pools[pool_name]
        resource = cap.pool.accelerator if request.accelerators_per_worker else CPU
        placement = find_placement(cap, request, resource)
        if placement is None:
            return False
        job = state.submit(key, request, self._clock.now())
        state.start(job, placement, self._clock.now())
        self._entries[key] = _Entry(request, pool_name)
        return True

    def restore(self, key: str, spec: JobSpec, pool_name: str) -> None:
        """A job that already has a RayJob on ``pool_name`` (found after a restart) holds that pool."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.pool == pool_name:
                return
            self._forget(key)
            request = request_from_spec(spec)
            if not self._restore(key, request, pool_name):
                self._entries[key] = _Entry(request, pool_name)  # runs, but outside our pools' accounting

    def place(self, key: str, spec: JobSpec) -> tuple[Place | Wait, list[str]]:
        """The job's placement, or why it waits; plus other waiting jobs this pass placed."""
        with self._lock:
            try:
                request = request_from_spec(spec)
            except SpecError as exc:
                return Wait(key, tuple(Reason("invalid", i.message) for i in exc.issues), permanent=True), []
            entry = self._entries.get(key)
            if entry is not None and entry.request != request:
                self._forget(key)  # the spec changed while it waited: queue it anew
                entry = None
            if entry is not None and entry.pool is not None:
                return self._place_of(key), []
            if self._state is None or self._scheduler is None:
                self._entries[key] = _Entry(request, None)
                return Wait(key, (NO_POOLS,)), []
            if entry is None:
                try:
                    self._enqueue(key, request)
                except SpecError as exc:  # e.g. a priority class this cluster does not define
                    return Wait(key, tuple(Reason("invalid", i.message) for i in exc.issues), permanent=True), []
            result = self._scheduler.schedule(self._state, explain=True)
            applied: list[Place] = []
            for decision in result.decisions:
                if isinstance(decision, Preempt) or decision.preempts:
                    break  # the operator does not stop running jobs for others
                applied.append(decision)
            self._state.apply(applied, self._clock.now())
            others = []
            for decision in applied:
                self._entries[decision.job_id].pool = decision.placement.pool
                if decision.job_id != key:
                    others.append(decision.job_id)
            mine = next((d for d in applied if d.job_id == key), None)
            if mine is not None:
                return mine, others
            wait = result.waits.get(key) or Wait(key, (Reason("preemption", "needs other jobs to stop first"),))
            return wait, others

    def _place_of(self, key: str) -> Place | Wait:
        state = self._state
        job = state.jobs.get(key) if state is not None else None
        if job is not None and job.placement is not None:
            return Place(key, job.placement)
        pool = self._entries[key].pool
        return Wait(key, (Reason("outside-book", f"runs on pool {pool}, beyond the capacity the operator knows"),))

    def release(self, key: str) -> bool:
        """The job ended, was suspended or deleted: free what it held. True if it held or awaited anything."""
        with self._lock:
            return self._forget(key)

    def _forget(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if self._state is not None and key in self._state.jobs:
            self._state.finish(key, self._clock.now())
            del self._state.jobs[key]  # a job may come back under the same key (unsuspended)
        return entry is not None


def decide_once(cluster: ClusterSpec, spec: JobSpec) -> Place | Wait:
    """Where ``spec`` would go on an otherwise idle ``cluster`` (the backend's dry run)."""
    decision, _ = PlacementBook(cluster).place(spec.name, spec)
    return decision


def describe(decision: Any) -> str:
    """A placement or wait in words, for status messages and Events."""
    if isinstance(decision, Place):
        return decision.placement.describe()
    return decision.message
