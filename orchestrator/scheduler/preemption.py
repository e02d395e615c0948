"""Preemption: which running jobs give way so that a waiting job can start.

A victim is checkpointed and requeued, never lost. A running job ``V`` may give way to a
waiting job ``J`` when (``cause``):

* ``priority``: same queue (or both queues without quotas), and ``V`` has a lower priority;
* ``policy``: same queue and priority, the policy is preemptive, and ``V`` is in a worse band;
* ``backfill-bound``: ``J`` heads its queue and has waited past the backfill bound, and ``V``
  ranks below ``J`` but was started by backfill: backfill never delays a head past the bound;
* ``reclaim``: ``V``'s queue borrows from the cohort and ``J`` stays within its nominal quota.

Victims are tried from the lowest priority and worst band first and, among equals, least lost
work first (the accelerator-seconds a checkpoint and restore cost), most recently started first.
Victims are added until the gang fits, then any victim the gang does not need is spared.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

from orchestrator.scheduler.decisions import Placement
from orchestrator.scheduler.placement import PoolOption, find_placement
from orchestrator.scheduler.state import Job

if TYPE_CHECKING:
    from orchestrator.scheduler.core import SchedulingPass


@dataclass(slots=True)
class PreemptionPlan:
    victims: list[tuple[Job, str]]  # (job, cause)
    placement: Placement
    borrowing: bool


def victims_in_pool(ctx: SchedulingPass, pool: str) -> list[tuple[Job, float]]:
    """Running jobs of ``pool`` with their bands, in victim order (computed once per pass)."""
    cached = ctx.victim_order.get(pool)
    if cached is None:
        band, now, lost = ctx.policy.band, ctx.now, ctx.state.lost_work
        lost_by_size: dict[float, float] = {}  # lost work depends on the gang size only
        keyed = []
        for j in ctx.state.running.values():
            placement = j.placement
            if placement is not None and placement.pool == pool:
                b = band(j, now)
                cost = lost_by_size.get(j.size)
                if cost is None:
                    cost = lost_by_size[j.size] = lost(j)
                keyed.append(((j.priority, -b, cost, -(j.run_start or 0.0), -j.seq), j, b))
        keyed.sort(key=itemgetter(0))  # the keys end with the unique seq: jobs are never compared
        cached = ctx.victim_order[pool] = [(j, b) for _, j, b in keyed]
    return cached


def cause(
    ctx: SchedulingPass,
    victim: Job,
    job: Job,
    job_band: float,
    head_past_bound: bool,
    may_reclaim: bool,
    victim_band: float,
) -> str | None:
    """Why ``victim`` (in band ``victim_band``) may give way to ``job`` (None: it may not)."""
    queues = ctx.state.cluster.queue_by_name
    if victim.queue == job.queue or not (queues[victim.queue].quotas or queues[job.queue].quotas):
        if victim.priority < job.priority:
            return "priority"
        if victim.priority == job.priority:
            if ctx.policy.preemptive and victim_band > job_band:
                return "policy"
            if (
                head_past_bound
                and victim.backfilled
                and victim.run_start is not None
                and victim.run_start >= job.queued_since
                and ctx.rank(victim) > ctx.rank(job)
            ):
                return "backfill-bound"
        return None
    cohort = queues[job.queue].cohort
    if may_reclaim and cohort is not None and queues[victim.queue].cohort == cohort and victim.placement:
        if ctx.work.quota.is_borrowing(victim.queue, victim.placement.quota_resource):
            return "reclaim"
    return None


def plan_preemption(
    ctx: SchedulingPass, job: Job, options: tuple[PoolOption, ...], head_past_bound: bool
) -> PreemptionPlan | None:
    """The cheapest set of victims in one pool that lets ``job`` start, or None."""
    limited = ctx.work.quota.limited
    if not limited and not ctx.may_have_victims(job):
        # No running job has a lower priority or a worse band; only the backfill-bound rule is
        # left, for a head past the bound, and it needs a run backfilled since the job queued.
        since = job.queued_since
        if not head_past_bound or not any(
            v.run_start is not None and v.run_start >= since for v in ctx.state.running_backfilled.values()
        ):
            return None
    job_band = ctx.band(job)
    for option in options:
        pool_name = option.pool.name
        # Borrowed room is reclaimed only for a queue that stays within its own nominal quota.
        may_reclaim = limited and ctx.work.quota.within_nominal(
            job.queue, option.resource, job.request.amount(option.resource)
        )
        candidates = _candidates(ctx, job, job_band, pool_name, head_past_bound, limited, may_reclaim)
        if not candidates:
            continue
        pool = ctx.work.pools[pool_name]
        primary = option.pool.accelerator != "cpu"
        need = job.request.workers * (
            job.request.accelerators_per_worker if primary else job.request.cpus_per_worker
        )
        if pool.free_total + sum(_primary(v.placement) for v, _ in candidates) + 1e-9 < need:
            continue
        plan = _greedy(ctx, job, option, candidates)
        if plan is not None:
            return plan
    return None


def _primary(placement: Placement | None) -> float:
    if placement is None:
        return 0.0
    return placement.primary_per_worker * sum(w for _, w in placement.shares)


def _candidates(
    ctx: SchedulingPass,
    job: Job,
    job_band: float,
    pool: str,
    head_past_bound: bool,
    limited: bool,
    may_reclaim: bool,
) -> list[tuple[Job, str]]:
    found = []
    preemptive = ctx.policy.preemptive
    taken = ctx.taken
    for victim, band in victims_in_pool(ctx, pool):
        if not limited:
            # No queue has quotas, so cause() reads priorities and bands alone, and this list is in
            # (priority, -band) order: its first two rules are decided here without the call, and
            # past their reach only a backfilled run can still give way (to a head past the bound).
            if victim.priority > job.priority:
                break
            if victim.priority < job.priority or (preemptive and band > job_band):
                if victim.id not in taken:
                    found.append((victim, "priority" if victim.priority < job.priority else "policy"))
                continue
            if not head_past_bound:
                break
            if not victim.backfilled:
                continue
        if victim.id in taken:
            continue
        why = cause(ctx, victim, job, job_band, head_past_bound, may_reclaim, band)
        if why is not None:
            found.append((victim, why))
    return found


def _greedy(
    ctx: SchedulingPass, job: Job, option: PoolOption, candidates: list[tuple[Job, str]]
) -> PreemptionPlan | None:
    pool = ctx.work.pools[option.pool.name].copy()
    quota = ctx.work.quota.copy() if ctx.work.quota.limited else ctx.work.quota
    resource, amount = option.resource, job.request.amount(option.resource)

    def fits() -> Placement | None:
        if quota.limited and not quota.check(job.queue, resource, amount).ok:
            return None
        return find_placement(pool, job.request, resource)

    chosen: list[tuple[Job, str]] = []
    placement = None
    for victim, why in candidates:
        assert victim.placement is not None  # running jobs are placed
        if why == "reclaim" and not quota.is_borrowing(victim.queue, victim.placement.quota_resource):
            continue  # its queue is back within nominal: no longer a borrower
        pool.release(victim.placement)
        if quota.limited:
            quota.add(victim.queue, victim.placement.quota_resource, -victim.placement.quota_amount)
        chosen.append((victim, why))
        placement = fits()
        if placement is not None:
            break
    if placement is None:
        return None
    for index in range(len(chosen) - 2, -1, -1):  # spare victims the gang turns out not to need
        victim = chosen[index][0]
        assert victim.placement is not None
        pool.occupy(victim.placement)
        if quota.limited:
            quota.add(victim.queue, victim.placement.quota_resource, victim.placement.quota_amount)
        if fits() is not None:
            del chosen[index]
            continue
        pool.release(victim.placement)
        if quota.limited:
            quota.add(victim.queue, victim.placement.quota_resource, -victim.placement.quota_amount)
    placement = fits()
    assert placement is not None  # the last victim was kept, so the gang still fits
    borrowing = quota.limited and quota.check(job.queue, resource, amount).borrowing
    return PreemptionPlan(chosen, placement, borrowing)
