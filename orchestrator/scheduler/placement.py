"""Gang placement: which pools a job may use, and where on them its workers go.

* All or nothing: a placement holds every worker of the gang, or there is none.
* Consolidation: an accelerator gang takes the fewest nodes an empty pool would give it
  (``ceil(workers / workers_per_node)``): whole nodes for the full chunks, and for the remainder
  the node with the least free room that still fits (best fit), which keeps large holes for
  large jobs. CPU gangs may spread, largest free nodes first.
* A TPU multi-host slice is placed whole: every host of one wholly free slice.
* Taints keep jobs off pools unless tolerated; ``PreferNoSchedule`` pools are tried last. Jobs
  that ask for accelerators tolerate ``nvidia.com/gpu`` and ``google.com/tpu`` taints implicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.scheduler.capacity import EPS, PoolCapacity
from orchestrator.scheduler.cluster import CPU, ClusterSpec, NodePool, fmt_amount
from orchestrator.scheduler.decisions import Placement
from orchestrator.scheduler.jobs import GangRequest

ACCELERATOR_TAINTS = ("nvidia.com/gpu", "google.com/tpu")


@dataclass(frozen=True, slots=True)
class PoolOption:
    """A pool a job may use, and the quota resource it counts against there."""

    pool: NodePool
    resource: str


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The pools a request may use, in order of preference, and words about the others."""

    options: tuple[PoolOption, ...]
    excluded: tuple[str, ...]  # pools ruled out by taints, labels or topology
    never: tuple[str, ...]  # pools of the right kind that are too small for the gang, ever


def eligible_pools(cluster: ClusterSpec, request: GangRequest) -> Eligibility:
    """Pools of an acceptable accelerator type whose taints the job tolerates, best first."""
    if request.accelerators:
        candidates = [p for kind in request.accelerators for p in cluster.pools if p.accelerator == kind]
    elif request.accelerators_per_worker:
        candidates = [p for p in cluster.pools if p.accelerator != CPU and not p.is_tpu]
    else:  # CPU work prefers CPU pools, then any pool that lets it in
        candidates = [p for p in cluster.pools if p.accelerator == CPU]
        candidates += [p for p in cluster.pools if p.accelerator != CPU]
    # Like Kubernetes' ExtendedResourceToleration (on by default in GKE): a pod that asks for GPUs
    # or TPU chips tolerates the taints that keep everything else off those nodes.
    implicit = ACCELERATOR_TAINTS if request.accelerators_per_worker else ()
    preferred: list[PoolOption] = []
    fallback: list[PoolOption] = []
    excluded: list[str] = []
    never: list[str] = []
    for pool in candidates:
        missing = [f"{k}={v}" for k, v in request.node_selector if pool.labels.get(k) != v]
        if missing:
            excluded.append(f"pool {pool.name} lacks label {', '.join(missing)}")
            continue
        untolerated = [
            t
            for t in pool.taints
            if t.key not in implicit and not any(tol.tolerates(t) for tol in request.tolerations)
        ]
        hard = [t for t in untolerated if t.effect != "PreferNoSchedule"]
        if hard:
            excluded.append(f"pool {pool.name} is tainted {hard[0]}, not tolerated")
            continue
        if pool.is_tpu and request.topology and pool.topology != request.topology:
            excluded.append(
                f"pool {pool.name} has {pool.topology or 'single-host'} slices, not {request.topology}"
            )
            continue
        problem = never_fits(pool, request)
        if problem:
            never.append(problem)
            continue
        option = PoolOption(pool, pool.accelerator if request.accelerators_per_worker else CPU)
        (fallback if untolerated else preferred).append(option)
    return Eligibility(tuple(preferred + fallback), tuple(excluded), tuple(never))


def workers_per_node(pool: NodePool, request: GangRequest) -> int:
    """How many workers of the gang an empty node of ``pool`` holds."""
    limits = []
    if pool.accelerator != CPU:
        if request.accelerators_per_worker:
            limits.append(pool.accelerators_per_node / request.accelerators_per_worker)
        if pool.cpus_per_node is not None and request.cpus_per_worker:
            limits.append(pool.cpus_per_node / request.cpus_per_worker)
    elif request.cpus_per_worker:
        limits.append((pool.cpus_per_node or 0.0) / request.cpus_per_worker)
    if pool.memory_bytes and request.memory_per_worker:
        limits.append(pool.memory_bytes / request.memory_per_worker)
    return min(int(x + EPS) for x in limits) if limits else request.workers


def never_fits(pool: NodePool, request: GangRequest) -> str | None:
    """Words for why the gang cannot fit ``pool`` even when it is empty, or None."""
    what = request.describe(pool.accelerator if request.accelerators_per_worker else None)
    if pool.topology:
        if request.total_accelerators != pool.chips_per_slice or request.workers % pool.hosts_per_slice:
            return (
                f"needs {what} on {request.workers} workers; pool {pool.name} has {pool.topology} slices "
                f"of {pool.chips_per_slice} chips on {pool.hosts_per_slice} hosts"
            )
        return None if pool.nodes else f"pool {pool.name} has no slices"
    per_node = workers_per_node(pool, request)
    if per_node == 0:
        return f"one worker does not fit a node of pool {pool.name} ({_node_words(pool)})"
    nodes = math.ceil(request.workers / per_node)
    if nodes > pool.nodes:
        if pool.accelerator == CPU:
            size = f"{fmt_amount(pool.capacity)} cpus in total"
        elif request.accelerators_per_worker:
            size = f"{fmt_amount(pool.capacity)} in total"
        else:
            size = f"{pool.nodes} nodes"
        return f"needs {what} as one gang; pool {pool.name} has {size}"
    return None


def _node_words(pool: NodePool) -> str:
    parts = []
    if pool.accelerator != CPU:
        parts.append(f"{pool.accelerators_per_node} {pool.accelerator}")
    if pool.cpus_per_node is not None:
        parts.append(f"{fmt_amount(pool.cpus_per_node)} cpus")
    if pool.memory_per_node is not None:
        parts.append(f"{pool.memory_per_node} memory")
    return ", ".join(parts) + " per node"


def find_placement(capacity: PoolCapacity, request: GangRequest, resource: str) -> Placement | None:
    """Where the whole gang fits in this pool now, or None. Reads ``capacity``, never changes it."""
    pool = capacity.pool
    a, c, m = request.accelerators_per_worker, request.cpus_per_worker, request.memory_per_worker
    primary = a if pool.accelerator != CPU else c
    secondary = c if capacity.free_cpu is not None else 0.0
    if capacity.free_total + EPS < primary * request.workers:
        return None  # cheap reject: not enough free in the whole pool
    if pool.topology:
        shares = _whole_slice(capacity, request, secondary, m)
    elif request.consolidate:
        shares = _consolidated(capacity, request, primary, secondary, m)
    else:
        shares = _spread(capacity, request.workers, primary, secondary, m)
    if shares is None:
        return None
    return Placement(
        pool.name, pool.accelerator, shares, primary, secondary, m, resource, request.amount(resource)
    )


def _consolidated(
    cap: PoolCapacity, request: GangRequest, p: float, c: float, m: int
) -> tuple[tuple[int, int], ...] | None:
    per_node = workers_per_node(cap.pool, request)
    full, rest = divmod(request.workers, per_node)
    chunks = [per_node] * full + ([rest] if rest else [])
    if len(chunks) == 1:  # the common case: one node, nothing to roll back
        node = cap.best_fit(p * chunks[0], c * chunks[0], m * chunks[0])
        return None if node is None else ((node, chunks[0]),)
    shares: list[tuple[int, int]] = []
    used: set[int] = set()
    for workers in chunks:  # largest chunks first, each on its best-fitting node
        node = cap.best_fit(p * workers, c * workers, m * workers, used)
        if node is None:
            return None
        used.add(node)
        shares.append((node, workers))
    return tuple(shares)


def _spread(
    cap: PoolCapacity, workers: int, p: float, c: float, m: int
) -> tuple[tuple[int, int], ...] | None:
    shares: list[tuple[int, int]] = []
    left = workers
    for bucket in reversed(cap.buckets):  # fewest nodes: the emptiest nodes first
        for node in bucket:
            room = [cap.free[node] / p] if p else []
            if c and cap.free_cpu is not None:
                room.append(cap.free_cpu[node] / c)
            if m and cap.free_mem is not None:
                room.append(cap.free_mem[node] / m)
            fit = min(left, min(int(x + EPS) for x in room) if room else left)
            if fit > 0:
                shares.append((node, fit))
                left -= fit
                if left == 0:
                    return tuple(shares)
    return None


def _whole_slice(
    cap: PoolCapacity, request: GangRequest, c: float, m: int
) -> tuple[tuple[int, int], ...] | None:
    hosts = cap.pool.hosts_per_slice
    per_host = request.workers // hosts
    for index, whole in enumerate(cap.slice_free or ()):
        if whole != hosts:
            continue
        nodes = range(index * hosts, (index + 1) * hosts)
        if all(cap.fits(n, cap.per_node, c * per_host, m * per_host) for n in nodes):
            return tuple((n, per_host) for n in nodes)
    return None
