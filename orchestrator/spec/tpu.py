"""TPU generations: chips per host, valid slice topologies, and the job shapes a slice admits.

One table, read by the spec (``validate`` refuses an impossible shape, with the numbers that fit),
by the scheduler's pool model (a pool's chips per node must be a host of its slice) and by the
Kubernetes backend (GKE's node labels, KubeRay's ``numOfHosts``).

Sources (read 2025/2026; keep this table in step with them):

* GKE's accelerator label values and machine types: "Plan TPUs in GKE",
  https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus (node label
  ``cloud.google.com/gke-tpu-accelerator``: tpu-v4-podslice, tpu-v5-lite-podslice, tpu-v5p-slice,
  tpu-v6e-slice; ``cloud.google.com/gke-tpu-topology``: the slice topology).
* v4: https://cloud.google.com/tpu/docs/v4 (3-D, 4 chips per VM, ct4p-hightpu-4t; slices 2x2x1,
  2x2x2, 2x2x4, 2x4x4, then AxBxC with every size a multiple of 4, up to the 4096-chip Pod).
* v5p: https://cloud.google.com/tpu/docs/v5p (3-D, 4 chips per VM, ct5p-hightpu-4t; 2x2x1 is one
  host, 2x2x2 two, ...; the largest single slice is 16x16x24, 6144 chips).
* v5e: https://cloud.google.com/tpu/docs/v5e and v6e: https://cloud.google.com/tpu/docs/v6e
  (2-D: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16; VMs of 1, 4 or 8 chips: ct5lp-hightpu-1t/4t/8t,
  ct6e-standard-1t/4t/8t. 1x1 and 2x2 are one VM; 2x4 is one 8-chip VM or, on GKE, two 4-chip VMs;
  larger slices are 4-chip VMs: 4x4 is 4 VMs).
* Ray's own table agrees: ``ray/_private/accelerators/tpu.py`` (``VALID_TPU_TOPOLOGY``,
  ``get_chips_per_host``: 4 chips per host, but up to 8 for single-host v5e/v6e).

A Ray worker per host, holding all of the host's chips, is the KubeRay/GKE convention (KubeRay's
worker group: ``numOfHosts`` pods per slice, each with ``google.com/tpu`` = chips per host; the
Ray TPU webhook refuses a group whose ``numOfHosts`` is not chips / chips per host). So a job on a
slice has ``workers`` = hosts and ``gpus_per_worker`` = chips per host. A job takes one slice:
multi-slice jobs are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TpuGeneration:
    name: str  #: Cloud TPU's name: v4, v5e, v5p, v6e
    accelerator: str  #: GKE's ``cloud.google.com/gke-tpu-accelerator`` value (our accelerator name)
    dims: int  #: 2 (a 2-D torus: AxB) or 3 (AxBxC)
    chips_per_host: int  #: chips of each VM of a multi-host slice
    single_host_chips: tuple[int, ...]  #: chip counts one VM may hold on its own (its machine types)
    machine_types: str  #: GKE machine types, for messages and docs
    max_chips: int  #: the largest single slice
    aliases: tuple[str, ...] = ()  #: other names people write (Ray's, Cloud TPU's)


GENERATIONS: tuple[TpuGeneration, ...] = (
    TpuGeneration("v4", "tpu-v4-podslice", 3, 4, (4,), "ct4p-hightpu-4t", 4096, ("tpu-v4",)),
    TpuGeneration("v5e", "tpu-v5-lite-podslice", 2, 4, (1, 4, 8), "ct5lp-hightpu-1t/4t/8t", 256,
                  ("tpu-v5e", "tpu-v5litepod", "tpu-v5-lite")),
    TpuGeneration("v5p", "tpu-v5p-slice", 3, 4, (4,), "ct5p-hightpu-4t", 6144, ("tpu-v5p",)),
    TpuGeneration("v6e", "tpu-v6e-slice", 2, 4, (1, 4, 8), "ct6e-standard-1t/4t/8t", 256,
                  ("tpu-v6e", "tpu-trillium")),
)
_BY_ACCELERATOR = {g.accelerator: g for g in GENERATIONS}
_BY_ALIAS = {alias: g for g in GENERATIONS for alias in g.aliases}
#: The 2-D slices of v5e and v6e (both documents list the same shapes).
TOPOLOGIES_2D: tuple[str, ...] = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
#: The 3-D slices of v4 and v5p smaller than a 4x4x4 cube; larger ones are multiples of 4.
SMALL_TOPOLOGIES_3D: tuple[str, ...] = ("2x2x1", "2x2x2", "2x2x4", "2x4x4")


def generation(accelerator: str) -> TpuGeneration | None:
    """The generation of a GKE accelerator name (None: not a TPU we know, or an alias)."""
    return _BY_ACCELERATOR.get(accelerator)


def alias_of(accelerator: str) -> TpuGeneration | None:
    """The generation a non-GKE name (``tpu-v5e``, ``tpu-v5litepod``) stands for, or None."""
    return _BY_ALIAS.get(accelerator)


def generation_or_alias(accelerator: str) -> TpuGeneration | None:
    return _BY_ACCELERATOR.get(accelerator) or _BY_ALIAS.get(accelerator)


def topology_dims(topology: str) -> tuple[int, ...]:
    return tuple(int(x) for x in topology.split("x"))


def topology_chips(topology: str) -> int:
    """Chips of a slice: the product of its sizes (``2x2x4`` -> 16)."""
    return math.prod(topology_dims(topology))


def topology_problem(gen: TpuGeneration, topology: str) -> str | None:
    """Why ``topology`` is not a slice of ``gen`` (None: it is)."""
    dims = topology_dims(topology)
    if len(dims) != gen.dims:
        shape = "AxB, e.g. 2x4 or 4x4" if gen.dims == 2 else "AxBxC, e.g. 2x2x1 or 2x2x4"
        return f"{gen.name} slices are {gen.dims}-D ({shape}), not {topology}"
    if gen.dims == 2:
        if topology not in TOPOLOGIES_2D:
            return f"{topology} is not a {gen.name} slice ({', '.join(TOPOLOGIES_2D)})"
        return None
    if topology not in SMALL_TOPOLOGIES_3D and any(d % 4 for d in dims):
        return (f"{topology} is not a {gen.name} slice ({', '.join(SMALL_TOPOLOGIES_3D)}, or sizes that are "
                "all multiples of 4 such as 4x4x4)")
    if topology_chips(topology) > gen.max_chips:
        return f"{topology} has {topology_chips(topology)} chips, more than the largest {gen.name} slice ({gen.max_chips})"
    return None


def topologies(gen: TpuGeneration) -> list[str]:
    """Every slice topology of ``gen`` (3-D: sizes written smallest first), smallest first."""
    if gen.dims == 2:
        return list(TOPOLOGIES_2D)
    out = list(SMALL_TOPOLOGIES_3D)
    a = 4
    while a**3 <= gen.max_chips:
        b = a
        while a * b * b <= gen.max_chips:
            out.extend(f"{a}x{b}x{c}" for c in range(b, gen.max_chips // (a * b) + 1, 4))
            b += 4
        a += 4
    return sorted(out, key=lambda t: (topology_chips(t), t))


def topology_for(gen: TpuGeneration, chips: int) -> str | None:
    """The first (most cube-like for 3-D) slice topology of ``gen`` with ``chips`` chips, or None."""
    found = [t for t in topologies(gen) if topology_chips(t) == chips]
    if not found:
        return None
    return min(found, key=lambda t: (max(topology_dims(t)) - min(topology_dims(t)), t))


def host_shapes(gen: TpuGeneration, topology: str) -> tuple[tuple[int, int], ...]:
    """(hosts, chips per host) a slice of ``gen`` can be built of, preferred first.

    v4/v5p: always 4-chip hosts (2x2x1 is one host). v5e/v6e: a slice of up to 8 chips is one VM
    holding them all (1x1, 2x2, 2x4); 2x4 may also be two 4-chip VMs (GKE only); larger slices are
    4-chip VMs.
    """
    chips = topology_chips(topology)
    if chips <= max(gen.single_host_chips):
        shapes = [(1, chips)]
        if chips > gen.chips_per_host and chips % gen.chips_per_host == 0:
            shapes.append((chips // gen.chips_per_host, gen.chips_per_host))
        return tuple(shapes)
    return ((chips // gen.chips_per_host, gen.chips_per_host),)


def single_host_topology(gen: TpuGeneration, chips: int) -> str | None:
    """The topology of a one-VM slice of ``chips`` chips (``v5p`` 4 -> 2x2x1, ``v5e`` 8 -> 2x4)."""
    if chips not in gen.single_host_chips:
        return None
    return topology_for(gen, chips)


def _words(hosts: int, per_host: int) -> str:
    return f"{hosts} host{'s' * (hosts != 1)} of {per_host}"


@dataclass(frozen=True)
class ShapeIssue:
    """What is wrong with a job's shape. A message never holds "; " (the spec loader reads a
    ValueError's text as "message; fix")."""

    field: str  #: relative to ``resources``
    message: str
    fix: str


def _set(**fields: object) -> str:
    parts = [f"resources.{k}: {v}" for k, v in fields.items()]
    return "set " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


def _workers(n: int) -> str:
    return f"{n} worker{'s' * (n != 1)}"


def check_job_shape(accelerator: str, topology: str | None, workers: int, chips_per_worker: float
                    ) -> ShapeIssue | None:
    """Why ``workers`` x ``chips_per_worker`` chips cannot run on ``accelerator`` (and ``topology``),
    with the numbers that would; None when the shape is one the slice admits."""
    gen = generation(accelerator)
    alias = alias_of(accelerator)
    if gen is None and alias is not None:
        return ShapeIssue("accelerator", f"{accelerator} is not GKE's name for TPU {alias.name}",
                          f"use {alias.accelerator} (the cloud.google.com/gke-tpu-accelerator node label)")
    if not float(chips_per_worker).is_integer():
        per_host = gen.chips_per_host if gen else max(1, math.ceil(chips_per_worker))
        return ShapeIssue("gpus_per_worker", f"{chips_per_worker:g} TPU chips: a worker takes whole chips",
                          _set(gpus_per_worker=per_host))
    chips = int(chips_per_worker)
    if gen is None:  # a TPU we have no table for: only the arithmetic
        if topology and workers * chips != topology_chips(topology):
            return ShapeIssue(
                "workers", f"{_workers(workers)} x {chips} chips is not one {topology} slice of "
                f"{topology_chips(topology)} chips", "make resources.workers x gpus_per_worker the slice's chips")
        return None
    if topology is None:
        return _check_without_topology(gen, workers, chips)
    problem = topology_problem(gen, topology)
    if problem:
        same = topology_for(gen, topology_chips(topology))
        fix = (f"set resources.topology: {same} ({topology_chips(topology)} chips)" if same
               else f"use a {gen.name} topology: {', '.join(topologies(gen)[:8])}, ...")
        return ShapeIssue("topology", problem, fix)
    shapes = host_shapes(gen, topology)
    if (workers, chips) in shapes:
        return None
    slice_chips = topology_chips(topology)
    hosts, per_host = next((s for s in shapes if s[0] == workers), None) or \
        next((s for s in shapes if s[1] == chips), shapes[0])
    what = f"{gen.name} {topology} is {slice_chips} chips on {' or '.join(_words(*s) for s in shapes)}"
    fix = _set(workers=hosts, gpus_per_worker=per_host)
    total = workers * chips
    if total > slice_chips and total % slice_chips == 0:
        bigger = topology_for(gen, total)
        message = (f"{what}: {_workers(workers)} x {chips} chips is {total // slice_chips} such slices, and a job "
                   "takes one slice (multi-slice jobs are not supported)")
        fix += " (one slice)"
        if bigger:
            big_hosts, big_per_host = host_shapes(gen, bigger)[-1]
            fix += f", or {_set(topology=bigger, workers=big_hosts, gpus_per_worker=big_per_host)}"
        return ShapeIssue("workers", message, fix)
    message = f"{what}: {_workers(workers)} x {chips} chips does not fit it (one worker per host, with all its chips)"
    return ShapeIssue("workers" if workers != hosts else "gpus_per_worker", message, fix)


def _check_without_topology(gen: TpuGeneration, workers: int, chips: int) -> ShapeIssue | None:
    total = workers * chips
    slice_topology = topology_for(gen, total)
    if workers > 1:  # several hosts: the slice must be named (Ray Train and GKE need it)
        fits = slice_topology and (workers, chips) in host_shapes(gen, slice_topology)
        fix = (f"set resources.topology: {slice_topology} ({total} chips on {_words(workers, chips)})" if fits
               else f"set resources.topology, e.g. {topology_for(gen, 4 * gen.chips_per_host)} "
                    f"({_words(4, gen.chips_per_host)}), with workers = hosts and gpus_per_worker = chips per host")
        return ShapeIssue("topology", f"{workers} workers on TPUs need the slice topology", fix)
    if chips in gen.single_host_chips:
        return None
    sizes = " or ".join(str(c) for c in gen.single_host_chips)
    if chips > max(gen.single_host_chips) and slice_topology:
        hosts, per_host = host_shapes(gen, slice_topology)[-1]
        return ShapeIssue(
            "gpus_per_worker",
            f"1 worker x {chips} chips: a {gen.name} host has {sizes} chips, and {chips} chips is a "
            f"{slice_topology} slice of {_words(hosts, per_host)}",
            _set(workers=hosts, gpus_per_worker=per_host, topology=slice_topology))
    nearest = min((c for c in gen.single_host_chips if c >= chips), default=max(gen.single_host_chips))
    return ShapeIssue(
        "gpus_per_worker", f"a {gen.name} worker takes a whole host: {sizes} chips ({gen.machine_types}), not {chips}",
        _set(gpus_per_worker=nearest))


def check_pool_shape(accelerator: str, topology: str | None, chips_per_node: int) -> tuple[str, str, str] | None:
    """(field, message, fix) when a TPU node pool's chips per node cannot be a host of its slices."""
    gen = generation_or_alias(accelerator)
    if gen is None or chips_per_node == 0:
        return None
    if topology is None:
        if chips_per_node in gen.single_host_chips:
            return None
        sizes = " or ".join(str(c) for c in gen.single_host_chips)
        return ("accelerators_per_node", f"a {gen.name} node has {sizes} chips, not {chips_per_node}",
                f"set accelerators_per_node to {sizes}, or give the slice topology")
    problem = topology_problem(gen, topology)
    if problem:
        same = topology_for(gen, topology_chips(topology))
        return ("topology", problem, f"set topology: {same}" if same else f"use a {gen.name} topology")
    shapes = host_shapes(gen, topology)
    if chips_per_node in {per_host for _, per_host in shapes}:
        return None
    hosts, per_host = shapes[0]
    return ("accelerators_per_node",
            f"{gen.name} {topology} is {topology_chips(topology)} chips on "
            f"{' or '.join(_words(*s) for s in shapes)}, not hosts of {chips_per_node}",
            f"set accelerators_per_node: {per_host} (and nodes: a multiple of {hosts})")
