"""Gang placement: which pools a job may use, and where on them its workers go.

* All or nothing: a placement holds every worker of the gang, or there is none.
* Consolidation: an accelerator gang takes the fewest nodes an empty pool would give it
  (``ceil(workers / workers_per_node)``): whole nodes for the full chunks, and for the remainder
  the node with the least free room that still fits (best fit), which keeps large holes for
  large jobs. CPU gangs may spread, largest free nodes first.
* A pool whose nodes differ in size (``node_sizes``, a Ray cluster's nodes) is one pool still: a
  gang spans its nodes, each worker whole on one node (a 1-CPU worker is never split across two
  half-free nodes); an accelerator gang takes the nodes with the most room first.
* A TPU multi-host slice is placed whole: every host of one wholly free slice.
* Taints keep jobs off pools unless tolerated; ``PreferNoSchedule`` pools are tried last. Jobs
  that ask for accelerators tolerate ``nvidia.com/gpu`` and ``google.com/tpu`` taints implicitly.
"""

from __future__ import annotations

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
    """How many workers of the gang an empty node of ``pool`` holds (its largest node, where the
    nodes differ in size)."""
    if not pool.uniform:
        return max(node_room(pool, request), default=0)
    if pool.accelerator != CPU:
        return _workers_on(request, float(pool.accelerators_per_node), pool.cpus_per_node, pool.memory_bytes)
    return _workers_on(request, None, pool.cpus_per_node or 0.0, pool.memory_bytes)


def node_room(pool: NodePool, request: GangRequest) -> list[int]:
    """How many workers of the gang each empty node of a pool with ``node_sizes`` holds."""
    accelerated = pool.accelerator != CPU
    tracks_cpu = not accelerated or pool.cpus_per_node is not None
    tracks_mem = bool(pool.memory_bytes)
    return [
        _workers_on(
            request,
            primary if accelerated else None,
            (cpus or 0.0) if tracks_cpu else None,
            memory if tracks_mem else None,
        )
        for primary, cpus, memory in pool.sizes
    ]


def _workers_on(
    request: GangRequest, accelerators: float | None, cpus: float | None, memory: int | None
) -> int:
    """Workers of the gang that fit a node with these accelerators, CPUs and memory (None: not
    tracked there)."""
    limits = []
    if accelerators is not None and request.accelerators_per_worker:
        limits.append(accelerators / request.accelerators_per_worker)
    if cpus is not None and request.cpus_per_worker:
        limits.append(cpus / request.cpus_per_worker)
    if memory and request.memory_per_worker:
        limits.append(memory / request.memory_per_worker)
    return min(int(x + EPS) for x in limits) if limits else request.workers


def never_fits(pool: NodePool, request: GangRequest) -> str | None:
    """Words for why the gang cannot fit ``pool`` even when it is empty, or None."""
    what = request.describe(pool.accelerator if request.accelerators_per_worker else None)
    if pool.topology:
        # one worker per host, holding all of the host's chips (the KubeRay/GKE convention)
        if (request.workers, request.accelerators_per_worker) != (pool.hosts_per_slice, pool.accelerators_per_node):
            return (
                f"needs {what} on {request.workers} workers; pool {pool.name} has {pool.topology} slices "
                f"of {pool.chips_per_slice} chips on {pool.hosts_per_slice} hosts "
                f"(one worker per host, with its {pool.accelerators_per_node} chips)"
            )
        return None if pool.nodes else f"pool {pool.name} has no slices"
    per_node = workers_per_node(pool, request)
    if per_node == 0:
        where = "a node" if pool.uniform else "any node"
        return f"one worker does not fit {where} of pool {pool.name} ({_node_words(pool)})"
    room = per_node * pool.nodes if pool.uniform else sum(node_room(pool, request))
    if room < request.workers:
        if pool.accelerator == CPU:
            size = f"{fmt_amount(pool.capacity)} cpus in total"
        elif request.accelerators_per_worker:
            size = f"{fmt_amount(pool.capacity)} in total"
        else:
            size = f"{pool.nodes} nodes"
        text = f"needs {what} as one gang; pool {pool.name} has {size}"
        need = request.accelerators_per_worker if pool.accelerator != CPU else request.cpus_per_worker
        if need and pool.capacity + EPS >= need * request.workers:  # enough in all, not node by node
            text += (
                f" on {pool.nodes} nodes, room for {room} such worker{'s' * (room != 1)}"
                " (a worker runs on one node)"
            )
        return text
    return None


def _node_words(pool: NodePool) -> str:
    parts = []
    if pool.accelerator != CPU:
        parts.append(f"{pool.accelerators_per_node} {pool.accelerator}")
    if pool.cpus_per_node is not None:
        parts.append(f"{fmt_amount(pool.cpus_per_node)} cpus")
    if pool.memory_per_node is not None:
        memory = pool.memory_per_node
        parts.append(
            f"{memory / 2**30:.1f} GiB" if isinstance(memory, int) and not pool.uniform else f"{memory}"
        )
        parts[-1] += " memory"
    words = ", ".join(parts)
    return words + " per node" if pool.uniform else f"its largest node has {words}"


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
    elif request.consolidate and not pool.uniform:
        shares = _fewest_nodes(capacity, request.workers, primary, secondary, m)
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


def _room(cap: PoolCapacity, node: int, p: float, c: float, m: int, most: int) -> int:
    """Workers (at most ``most``) that fit the free resources of ``node`` now."""
    room = [cap.free[node] / p] if p else []
    if c and cap.free_cpu is not None:
        room.append(cap.free_cpu[node] / c)
    if m and cap.free_mem is not None:
        room.append(cap.free_mem[node] / m)
    return min(most, min(int(x + EPS) for x in room) if room else most)


def _spread(
    cap: PoolCapacity, workers: int, p: float, c: float, m: int
) -> tuple[tuple[int, int], ...] | None:
    shares: list[tuple[int, int]] = []
    left = workers
    for bucket in reversed(cap.buckets):  # fewest nodes: the emptiest nodes first
        for node in bucket:
            fit = _room(cap, node, p, c, m, left)
            if fit > 0:
                shares.append((node, fit))
                left -= fit
                if left == 0:
                    return tuple(shares)
    return None


def _fewest_nodes(
    cap: PoolCapacity, workers: int, p: float, c: float, m: int
) -> tuple[tuple[int, int], ...] | None:
    """An accelerator gang on a pool whose nodes differ in size: the nodes with the most room
    first (fewest nodes), and the rest of the gang on the node with the fewest free accelerators
    that holds it (best fit)."""
    rooms = {node: r for node in range(len(cap.free)) if (r := _room(cap, node, p, c, m, workers)) > 0}
    if sum(rooms.values()) < workers:
        return None
    shares: list[tuple[int, int]] = []
    left = workers
    while left:
        holding = [(cap.free[node], node) for node, r in rooms.items() if r >= left]
        if holding:
            node = min(holding)[1]
            shares.append((node, left))
            return tuple(shares)
        node = max(rooms, key=lambda n: (rooms[n], -n))
        shares.append((node, rooms.pop(node)))
        left -= shares[-1][1]
    return tuple(shares)


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
