"""Decisions are objects: ``Place``, ``Preempt``, ``Wait(reasons=[...])``.

The scheduler returns them; the caller (a backend, or the simulator) applies them. A ``Wait``
holds reasons as data (a code and words), so a pending job can always say why it waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a gang runs: one pool, and how many workers on which nodes of it.

    The per-worker amounts are kept so that releasing the placement needs nothing else.
    """

    pool: str
    accelerator: str
    shares: tuple[tuple[int, int], ...]  # (node index in the pool, workers on it)
    primary_per_worker: float  # accelerators, or CPUs on a cpu pool
    cpus_per_worker: float  # counted separately on accelerator pools that track CPUs
    memory_per_worker: int
    quota_resource: str
    quota_amount: float

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names, ``<pool>-<index>``."""
        return tuple(f"{self.pool}-{index}" for index, _ in self.shares)

    def describe(self) -> str:
        parts = [f"{name} ({workers})" for name, (_, workers) in zip(self.nodes, self.shares, strict=True)]
        return f"pool {self.pool}: " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Place:
    """Start ``job_id`` on ``placement``. Any ``Preempt`` it needs comes before it."""

    job_id: str
    placement: Placement
    borrowing: bool = False  # admitted on quota borrowed from the cohort
    backfill: bool = False  # started while a higher-ranked job of its queue waits
    preempts: tuple[str, ...] = ()
    promoted: bool = False  # started by aging: its attained-service count restarts
    guard: str | None = None  # the policy guard that started it ("starvation": promoted by aging)


@dataclass(frozen=True, slots=True)
class Preempt:
    """Checkpoint ``job_id``, stop it and put it back in its queue (it keeps its progress)."""

    job_id: str
    by: str  # the job that needs the room
    cause: str  # "priority", "policy", "reclaim" or "backfill-bound"
    lost_work: float  # accelerator-seconds the preemption costs (checkpoint and restart)


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a job waits: a stable code for programs, words for people."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class Wait:
    """``job_id`` stays queued for now. ``permanent``: it can never fit this cluster as it is."""

    job_id: str
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    permanent: bool = False

    @property
    def message(self) -> str:
        return "; ".join(r.text for r in self.reasons)


Decision = Place | Preempt | Wait
