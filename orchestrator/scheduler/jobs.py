"""What a job asks for: a gang request, derived from a job spec's ``resources``.

A gang is ``workers x (accelerators, cpus, memory)`` placed all-or-nothing. The request is
immutable; the scheduler's view of a job over time (queued, running, attained service) lives in
:class:`orchestrator.scheduler.state.Job`.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.scheduler.cluster import CPU, DEFAULT_QUEUE, Taint, fmt_amount
from orchestrator.spec.models import JobSpec


@dataclass(frozen=True, slots=True)
class Toleration:
    """Lets a job use a pool with a matching taint. ``None`` value or effect, or an empty key, matches any."""

    key: str
    value: str | None = None
    effect: str | None = None

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """``key``, ``key=value``, ``key:Effect`` or ``key=value:Effect``."""
        body, _, effect = text.partition(":")
        key, eq, value = body.partition("=")
        return cls(key=key, value=value if eq else None, effect=effect or None)

    def tolerates(self, taint: Taint) -> bool:
        return (
            (self.key == taint.key or not self.key)  # an empty key (operator Exists) tolerates every taint
            and (self.value is None or self.value == taint.value)
            and (self.effect is None or self.effect == taint.effect)
        )

    def __str__(self) -> str:
        text = self.key + (f"={self.value}" if self.value is not None else "")
        return text + (f":{self.effect}" if self.effect else "")


@dataclass(frozen=True, slots=True)
class GangRequest:
    """``workers`` identical workers, placed together or not at all.

    ``accelerators`` lists acceptable types, most preferred first; empty with
    ``accelerators_per_worker > 0`` means any GPU type, empty with 0 means a CPU job.
    """

    workers: int
    accelerators_per_worker: float = 0.0
    cpus_per_worker: float = 0.0
    memory_per_worker: int = 0
    accelerators: tuple[str, ...] = ()
    topology: str | None = None
    queue: str = DEFAULT_QUEUE
    priority: int | str | None = None
    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"a gang needs at least one worker, got {self.workers}")
        if min(self.accelerators_per_worker, self.cpus_per_worker, self.memory_per_worker) < 0:
            raise ValueError("resources per worker cannot be negative")

    @property
    def total_accelerators(self) -> float:
        return self.workers * self.accelerators_per_worker

    @property
    def size(self) -> float:
        """Gang size for attained service and checkpoint cost: accelerators, else CPUs, else workers."""
        if self.accelerators_per_worker:
            return self.total_accelerators
        return self.workers * self.cpus_per_worker or float(self.workers)

    @property
    def consolidate(self) -> bool:
        """Accelerator gangs must take the fewest nodes (collectives are fast inside a node)."""
        return self.accelerators_per_worker > 0

    def amount(self, resource: str) -> float:
        """What the job counts against a quota for ``resource`` (an accelerator type or cpu)."""
        if resource == CPU:
            return self.workers * self.cpus_per_worker
        return self.total_accelerators

    def describe(self, accelerator: str | None = None) -> str:
        """Words for what the gang needs: '16 nvidia-a100-40gb', '4 workers x 2 cpus'."""
        if self.accelerators_per_worker:
            kind = accelerator or (" or ".join(self.accelerators) if self.accelerators else "GPUs")
            text = f"{fmt_amount(self.total_accelerators)} {kind}"
            return text + (f" ({self.topology} slice)" if self.topology else "")
        return f"{self.workers} worker{'s' * (self.workers != 1)} x {fmt_amount(self.cpus_per_worker)} cpus"


def request_from_spec(spec: JobSpec) -> GangRequest:
    """The gang request of a job spec (``resources``); a valid spec always has one (the spec's
    models refuse an accelerator type without accelerators per worker)."""
    r = spec.resources
    choices = r.accelerator_choices
    return GangRequest(
        workers=r.workers,
        accelerators_per_worker=float(r.gpus_per_worker),
        cpus_per_worker=float(r.cpus_per_worker),
        memory_per_worker=r.memory_bytes or 0,
        accelerators=choices,
        topology=r.topology,
        queue=r.queue,
        priority=r.priority,
        tolerations=tuple(Toleration(key=t.key, value=t.value if t.operator == "Equal" else None,
                                     effect=t.effect or None) for t in r.tolerations),
    )
