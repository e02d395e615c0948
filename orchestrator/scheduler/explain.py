"""Words for waiting jobs: what the gang needs, what each pool has, who is ahead.

Reasons are built only when a caller asks for them (``explain=True``): the simulator's passes
skip this work. Each reason has a stable ``code`` for programs and a sentence for people, e.g.
"needs 16 nvidia-a100-40gb as one gang; pool a100 has 12 free; 4 jobs of higher priority queued
ahead".
"""

from __future__ import annotations

from orchestrator.scheduler.capacity import EPS, PoolCapacity
from orchestrator.scheduler.cluster import CPU, fmt_amount
from orchestrator.scheduler.decisions import Reason
from orchestrator.scheduler.jobs import GangRequest
from orchestrator.scheduler.placement import Eligibility, PoolOption, workers_per_node


def needs(request: GangRequest, options: tuple[PoolOption, ...]) -> Reason:
    kinds = list(dict.fromkeys(o.pool.accelerator for o in options if o.pool.accelerator != CPU))
    what = request.describe(" or ".join(kinds) if kinds and request.accelerators_per_worker else None)
    return Reason("needs", f"needs {what} as one gang")


def pool_room(cap: PoolCapacity, request: GangRequest) -> Reason:
    """How much room a pool has, and whether it is only too scattered for the gang."""
    pool = cap.pool
    if pool.topology and cap.slice_free is not None:
        whole = sum(1 for hosts in cap.slice_free if hosts == pool.hosts_per_slice)
        return Reason(
            "capacity",
            f"pool {pool.name} has {whole} of {len(cap.slice_free)} {pool.topology} slices wholly free",
        )
    unit = "" if pool.accelerator != CPU else " cpus"
    text = f"pool {pool.name} has {fmt_amount(round(cap.free_total, 6))}{unit} free"
    need = request.accelerators_per_worker if pool.accelerator != CPU else request.cpus_per_worker
    if need and cap.free_total + EPS >= need * request.workers:
        per_node = workers_per_node(pool, request)
        nodes = -(-request.workers // per_node)
        least = "" if pool.uniform else "at least "
        text += (
            f", too scattered for the gang (it needs {least}{nodes} node{'s' * (nodes != 1)}, "
            f"largest free block {fmt_amount(cap.max_free())})"
        )
    elif not need and request.cpus_per_worker and cap.free_cpu is not None:
        text = f"pool {pool.name} has {fmt_amount(round(sum(cap.free_cpu), 6))} cpus free"
    return Reason("capacity", text)


def unschedulable(request: GangRequest, eligibility: Eligibility) -> tuple[Reason, ...]:
    """Reasons for a job no pool can ever take (a permanent wait)."""
    reasons = [Reason("too-large", text) for text in eligibility.never]
    reasons += [Reason("excluded", text) for text in eligibility.excluded]
    if not reasons:
        wanted = (
            " or ".join(request.accelerators)
            if request.accelerators
            else ("GPUs" if request.accelerators_per_worker else "cpus")
        )
        reasons.append(Reason("no-pool", f"no pool has {wanted}"))
    return tuple(reasons)


def queued_ahead(higher: int, same: int, policy: str) -> list[Reason]:
    reasons = []
    if higher:
        reasons.append(Reason("higher-priority", f"{_jobs(higher)} of higher priority queued ahead"))
    if same:
        reasons.append(Reason("queued-ahead", f"{_jobs(same)} queued ahead of it by policy {policy}"))
    return reasons


def head_of_line(head_id: str, queue: str, policy: str) -> Reason:
    return Reason(
        "head-of-line", f"blocked behind {head_id} at the head of queue {queue} ({policy} does not backfill)"
    )


def held_back(head_id: str, queue: str, waited: float, bound: float) -> Reason:
    return Reason(
        "backfill-bound",
        f"held back for {head_id}, which has waited {duration_words(waited)} at the head of "
        f"queue {queue}, past the backfill bound of {duration_words(bound)}",
    )


GUARD_WORDS = {
    "min-quantum": "ran less than its minimum quantum since it started",
    "preemption-budget": "was preempted too often lately (preemptions per job are bounded in a window)",
    "preemption-cost": "would cost more to preempt (restart and lost work) than the service it is expected to need",
}


def guarded(guard: str, count: int) -> Reason:
    """A preemption that a policy guard held back (the code is the guard's name)."""
    what = GUARD_WORDS.get(guard, "is protected")
    return Reason(
        guard,
        f"guard {guard} held back preempting {_jobs(count)} of a worse band: each {what}",
    )


def duration_words(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _jobs(count: int) -> str:
    return f"{count} job{'s' * (count != 1)}"
