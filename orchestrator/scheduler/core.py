"""The scheduler: one pass turns a cluster state into decisions, without changing the state.

A pass orders waiting jobs by priority class, then by the policy, and for each job in turn:

1. skips it when its queue is blocked (policies without backfill) or when a head that waited past
   the backfill bound holds the pools it could use;
2. checks its queue's quota, and looks for a gang placement in each eligible pool, best first;
3. failing that, looks for victims to preempt (see preemption.py);
4. failing that, the job waits; with ``explain=True`` it says why, in words.

Placements and preemptions are tried on a working copy of the free capacity, so the caller's state
only changes when it applies the decisions (``ClusterState.apply``). The pass also says when the
next pass is due with no event (a job crossing a policy threshold, a backfill bound expiring, or
at once after preemptions, so that victims can be placed elsewhere).
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from orchestrator.errors import UsageError
from orchestrator.scheduler import explain as words
from orchestrator.scheduler.capacity import EPS, Capacity
from orchestrator.scheduler.clock import Clock, SystemClock
from orchestrator.scheduler.cluster import ClusterSpec
from orchestrator.scheduler.decisions import Decision, Place, Placement, Preempt, Reason, Wait
from orchestrator.scheduler.jobs import GangRequest
from orchestrator.scheduler.order import PendingOrder, RunningWatch
from orchestrator.scheduler.placement import Eligibility, PoolOption, eligible_pools, find_placement
from orchestrator.scheduler.policies import Policy, get_policy
from orchestrator.scheduler.preemption import plan_preemption
from orchestrator.scheduler.state import ClusterState, Job, JobStatus


@dataclass(slots=True)
class PassResult:
    """What one pass decided. ``waits`` is filled only when the pass was asked to explain."""

    time: float
    decisions: list[Place | Preempt] = field(default_factory=list)
    waits: dict[str, Wait] = field(default_factory=dict)
    next_wakeup: float | None = None
    order: list[str] = field(default_factory=list)  # pending jobs in the pass's order (explain only)

    @property
    def placements(self) -> list[Place]:
        return [d for d in self.decisions if isinstance(d, Place)]

    @property
    def preemptions(self) -> list[Preempt]:
        return [d for d in self.decisions if isinstance(d, Preempt)]


class Scheduler:
    """Places gangs on a cluster by a policy; the clock is injected (real or simulated time)."""

    def __init__(
        self,
        cluster: ClusterSpec,
        policy: Policy | str | None = None,
        clock: Clock | None = None,
        *,
        backfill_bound_s: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.policy = get_policy(policy if policy is not None else cluster.scheduler.policy)
        self.clock: Clock = clock or SystemClock()
        bound = cluster.scheduler.backfill_bound_s if backfill_bound_s is None else backfill_bound_s
        self.backfill_bound_s = float(bound)
        self._eligibility: dict[GangRequest, Eligibility] = {}
        self._by_job: dict[str, tuple[GangRequest, Eligibility]] = {}
        # Per state: waiting jobs kept in order, and when running jobs cross policy thresholds.
        self._orders: weakref.WeakKeyDictionary[ClusterState, tuple[PendingOrder, RunningWatch]] = (
            weakref.WeakKeyDictionary()
        )
        # The state of the last pass and its order: a caller usually schedules one state only.
        self._last: tuple[weakref.ref[ClusterState], tuple[PendingOrder, RunningWatch]] | None = None
        # What every pass of this scheduler would otherwise work out again:
        self.all_pools = frozenset(cluster.pool_by_name)
        self.steady = type(self.policy).steady_key is not Policy.steady_key
        self.piecewise = type(self.policy).next_change is not Policy.next_change

    def tracking(self, state: ClusterState) -> tuple[PendingOrder, RunningWatch]:
        """The state's waiting jobs in this scheduler's order (updated to now), and its watch."""
        if self.policy.observe(state, self.clock.now()):  # thresholds moved: re-rank everything
            self._orders.pop(state, None)
            self._last = None
        last = self._last
        if last is not None and last[0]() is state:
            found = last[1]
        else:
            found = self._orders.get(state)  # type: ignore[assignment]
            if found is None:
                found = self._orders[state] = (PendingOrder(self.policy), RunningWatch(self.policy))
            self._last = (weakref.ref(state), found)
        found[0].update(state, self.clock.now())
        return found

    def eligibility(self, request: GangRequest) -> Eligibility:
        """Eligible pools of a request (cached: many jobs share a shape)."""
        found = self._eligibility.get(request)
        if found is None:
            found = self._eligibility[request] = eligible_pools(self.cluster, request)
        return found

    def eligibility_of(self, job: Job) -> Eligibility:
        cached = self._by_job.get(job.id)
        if cached is None or cached[0] is not job.request:
            cached = self._by_job[job.id] = (job.request, self.eligibility(job.request))
        return cached[1]

    def schedule(self, state: ClusterState, *, explain: bool = False) -> PassResult:
        """One scheduling pass at ``clock.now()``. Apply the result with ``state.apply``."""
        return SchedulingPass(self, state, explain).run()

    def explain(self, state: ClusterState, job_id: str) -> Decision:
        """What the scheduler would do for a pending job now (a Place, or a Wait with reasons)."""
        job = state.jobs.get(job_id)
        if job is None or job.status is not JobStatus.PENDING:
            what = "unknown" if job is None else job.status.value
            raise UsageError(f"job {job_id!r} is {what}, not waiting", fix="explain a pending job")
        result = self.schedule(state, explain=True)
        placed = [d for d in result.decisions if isinstance(d, Place) and d.job_id == job_id]
        return placed[0] if placed else result.waits[job_id]


class SchedulingPass:
    """The working state of one pass (shared with preemption.py)."""

    def __init__(self, scheduler: Scheduler, state: ClusterState, explain: bool) -> None:
        self.scheduler, self.state, self.explain = scheduler, state, explain
        self.policy = scheduler.policy
        self.now = scheduler.clock.now()
        self.token = self.policy.cache_token
        self.bound = scheduler.backfill_bound_s
        self._work: Capacity | None = None  # copied on the first change: many passes change nothing
        self.result = PassResult(self.now)
        self.blocked: dict[str, Job] = {}  # queue -> its head: the first job that could not start
        self.held: dict[str, frozenset[str]] = {}  # queue -> pools held for a head past the bound
        self.closed: set[str] = set()  # queues where nothing more can start in this pass
        self.all_pools = scheduler.all_pools
        self.taken: set[str] = set()  # victims chosen in this pass
        self.victim_order: dict[str, list[tuple[Job, float]]] = {}
        self.wakeups: list[float] = []
        # (pool, queue, priority, worker shape) -> fewest workers that failed: a larger gang of the
        # same shape fails too, until a preemption frees more than its preemptor takes.
        self.failed: dict[tuple[object, ...], int] = {}
        # (queue, priority, worker shape, pools) -> [(band, workers)] for which preemption found no
        # plan: a gang as large or larger, in a band no better, finds fewer victims and needs more.
        self.no_victims: dict[tuple[object, ...], list[tuple[float, int]]] = {}
        # (priority, pools) -> jobs found waiting so far: words for an explaining pass only
        self.waiting_by_pools: Counter[tuple[int, frozenset[str]]] | None = Counter() if explain else None
        self._lowest_running: int | None = None  # lowest priority among running jobs
        self._worst_seen = -math.inf  # worst band among the running jobs scanned so far
        self._running_scan: Iterator[Job] | None = None
        self._steady = scheduler.steady
        # Running bands that change only at next_change: the watch counts running jobs per band.
        self._piecewise = scheduler.piecewise
        self._worst_running: float | None = None
        self._watch: RunningWatch | None = None

    @property
    def work(self) -> Capacity:
        """Free capacity as this pass has changed it so far."""
        return self._work if self._work is not None else self.state.capacity

    def writable(self) -> Capacity:
        if self._work is None:
            self._work = self.state.capacity.copy()
        return self._work

    def sort_key(self, job: Job) -> tuple[float, tuple[float, ...]]:
        """(-priority, policy rank), reused across passes for as long as the policy says it holds."""
        cache = job.rank_cache
        if (
            cache is not None
            and cache[0] is self.token
            and cache[1] == job.run_start
            and cache[2] == job.queued_since
            and self.now < cache[3]
        ):
            return cache[4]
        key = (-job.priority, self.policy.rank(job, self.now))
        job.rank_cache = (
            self.token,
            job.run_start,
            job.queued_since,
            self.policy.rank_until(job, self.now),
            key,
        )
        return key

    def rank(self, job: Job) -> tuple[float, ...]:
        return self.sort_key(job)[1]

    def band(self, job: Job) -> float:
        return self.rank(job)[0]

    def may_have_victims(self, job: Job) -> bool:
        """False when no running job can give way to ``job`` by priority or policy band."""
        if self._lowest_running is None:
            self._lowest_running = min(self.state.running_priorities, default=2**62)
        if self._lowest_running < job.priority:
            return True
        if not self.policy.preemptive:
            return False
        band = self.band(job)
        if self._worst_seen > band:
            return True
        if self._piecewise and self._watch is not None:
            if self._worst_running is None:
                self._worst_running = self._watch.worst_band(self.state, self.now)
            return self._worst_running > band
        if self._steady and self._worst_running is None:
            worst = self._watch.worst(self.state, self.now) if self._watch is not None else None
            if worst is not None or not self.state.running:
                self._worst_running = -math.inf if worst is None else self.policy.band(worst, self.now)
            else:
                self._steady = False  # the policy gave no key for some job: scan instead
        if self._steady and self._worst_running is not None:
            return self._worst_running > band
        # Scan the running jobs (which a pass never changes) only as far as needed: one with a
        # worse band usually comes early (long runs started early), and a pass resumes the scan.
        if self._worst_seen >= self.policy.worst_band:
            return False  # the scan already met a job in the policy's last band
        if self._running_scan is None:
            self._running_scan = iter(self.state.running.values())
        policy_band, now = self.policy.band, self.now
        for running in self._running_scan:
            seen = policy_band(running, now)
            if seen > self._worst_seen:
                self._worst_seen = seen
                if seen > band:
                    return True
                if seen >= self.policy.worst_band:
                    break
        return False

    def run(self) -> PassResult:
        order, watch = self.scheduler.tracking(self.state)
        self._watch = watch
        if self.explain:
            self.result.order = [job.id for job in order]
        queues = len(self.state.pending_queues)
        waiting = 0
        for index, job in enumerate(order):
            if not self.explain and len(self.closed) == queues:
                waiting += len(order) - index  # no queue can start anything more: the rest waits
                break
            if not self.explain and job.queue in self.closed:
                waiting += 1
                continue
            if not self.consider(job):
                waiting += 1
        self.result.next_wakeup = self._next_wakeup(waiting, order, watch)
        return self.result

    def consider(self, job: Job) -> bool:
        """Place ``job`` (possibly preempting), or record why it waits. True if placed."""
        queue = self.state.cluster.queue_by_name.get(job.queue)
        if queue is None:
            known = ", ".join(self.state.cluster.queue_by_name)
            return self._wait(
                job,
                [Reason("unknown-queue", f"queue {job.queue} does not exist (queues: {known})")],
                (),
                permanent=True,
            )
        head = self.blocked.get(job.queue)
        if head is not None and not self.policy.backfill:
            return self.explain and self._wait(
                job, [words.head_of_line(head.id, job.queue, self.policy.name)], ()
            )
        eligibility = self.scheduler.eligibility_of(job)
        if not eligibility.options:
            return self.explain and self._wait(
                job, list(words.unschedulable(job.request, eligibility)), (), permanent=True
            )
        options = eligibility.options
        held = self.held.get(job.queue)
        if held is not None:
            options = tuple(o for o in options if o.pool.name not in held)
            if not options:
                return self.explain and self._wait(
                    job,
                    [words.held_back(head.id, job.queue, self.now - head.queued_since, self.bound)]
                    if head
                    else [],
                    eligibility.options,
                )
        tried: list[tuple[PoolOption, str | None]] = []  # (option, quota reason or None)
        request = job.request
        shape = (
            job.queue,
            job.priority,
            request.accelerators_per_worker,
            request.cpus_per_worker,
            request.memory_per_worker,
            request.topology,
        )
        for option in options:
            key = (option.pool.name, *shape)
            if self.failed.get(key, math.inf) <= request.workers:
                tried.append((option, None))
                continue
            verdict = self.work.quota.check(job.queue, option.resource, request.amount(option.resource))
            if not verdict.ok:
                tried.append((option, verdict.reason))
                continue
            placement = find_placement(self.work.pools[option.pool.name], request, option.resource)
            if placement is not None:
                self._place(job, placement, verdict.borrowing)
                return True
            tried.append((option, None))
        head_past_bound = (
            self.policy.backfill
            and job.queue not in self.blocked
            and self.now >= job.queued_since + self.bound  # the wake-up's own sum (float-consistent)
        )
        pools = (*shape, tuple(o.pool.name for o in options))
        cacheable = not head_past_bound and not self.work.quota.limited
        if cacheable and any(
            band <= self.band(job) and workers <= request.workers
            for band, workers in self.no_victims.get(pools, ())
        ):
            plan = None  # a smaller gang of this shape in a band no worse found no victims enough
        else:
            plan = plan_preemption(self, job, options, head_past_bound)
            if plan is None and cacheable:
                self.no_victims.setdefault(pools, []).append((self.band(job), request.workers))
        if plan is not None:
            for victim, why in plan.victims:
                self.result.decisions.append(Preempt(victim.id, job.id, why, self.state.lost_work(victim)))
                assert victim.placement is not None
                self.writable().give(victim.placement, victim.queue)
                self.taken.add(victim.id)
            self.failed.clear()  # victims may have freed more than the preemptor takes
            self.no_victims.clear()
            self._place(job, plan.placement, plan.borrowing, tuple(v.id for v, _ in plan.victims))
            return True
        for option in options:
            key = (option.pool.name, *shape)
            self.failed[key] = min(self.failed.get(key, request.workers), request.workers)
        self._block(job, options)
        if not self.explain:
            if self._nothing_more(job):
                self.closed.add(job.queue)
            return False
        reasons = [words.pool_room(self.work.pools[o.pool.name], request) for o, why in tried if why is None]
        reasons += [Reason("quota", why) for _, why in tried if why is not None]
        reasons += self._guarded(job, options)
        return self._wait(job, reasons, eligibility.options)

    def _guarded(self, job: Job, options: tuple[PoolOption, ...]) -> list[Reason]:
        """Words for the policy guards that keep running jobs of a worse band, which ``job`` could
        otherwise preempt, from giving way to it (an explaining pass only)."""
        pools = {o.pool.name for o in options}
        band, held = self.band(job), Counter[str]()
        for victim in self.state.running.values():
            if victim.placement is None or victim.placement.pool not in pools or victim.priority != job.priority:
                continue
            name = self.policy.holds(victim, band, self.now)
            if name is not None:
                held[name] += 1
        return [words.guarded(name, count) for name, count in sorted(held.items())]

    def _nothing_more(self, job: Job) -> bool:
        """True when no job after ``job`` in its queue can start in this pass.

        Later jobs of the queue have a lower priority or a worse rank, are not its head, and get no
        quota reclaim (no quotas here); so when every pool is full and ``job`` has no possible
        victim, none of them can be placed or preempt. In a busy cluster this ends most passes
        early instead of walking thousands of waiting jobs.
        """
        if self.work.quota.limited or any(p.free_total > EPS for p in self.work.pools.values()):
            return False
        return not self.may_have_victims(job)

    def _place(self, job: Job, placement: Placement, borrowing: bool, preempts: tuple[str, ...] = ()) -> None:
        promoted = self.policy.promoted(job, self.now)
        self.result.decisions.append(
            Place(
                job.id,
                placement,
                borrowing=borrowing,
                backfill=job.queue in self.blocked,
                preempts=preempts,
                promoted=promoted,
                guard="starvation" if promoted else None,
            )
        )
        self.writable().take(placement, job.queue)

    def _block(self, job: Job, options: tuple[PoolOption, ...]) -> None:
        if job.queue in self.blocked:
            return
        self.blocked[job.queue] = job
        if not self.policy.backfill:
            self.closed.add(job.queue)
            return
        if self.now >= job.queued_since + self.bound:  # the same sum as the wake-up below
            held = self.held[job.queue] = frozenset(o.pool.name for o in options)
            if held == self.all_pools:
                self.closed.add(job.queue)
        else:
            self.wakeups.append(job.queued_since + self.bound)

    def _wait(
        self, job: Job, reasons: list[Reason], options: tuple[PoolOption, ...], permanent: bool = False
    ) -> bool:
        if self.waiting_by_pools is None:  # not explaining
            return False
        pools = frozenset(o.pool.name for o in options)
        higher = same = 0
        for (priority, other), count in self.waiting_by_pools.items():
            if other & pools:
                if priority > job.priority:
                    higher += count
                elif priority == job.priority:
                    same += count
        head = [words.needs(job.request, options)] if options else []
        ahead = words.queued_ahead(higher, same, self.policy.name)
        self.result.waits[job.id] = Wait(job.id, tuple(head + reasons + ahead), permanent)
        if pools:
            self.waiting_by_pools[(job.priority, pools)] += 1
        return False

    def _next_wakeup(self, waiting: int, order: PendingOrder, watch: RunningWatch) -> float | None:
        if self.taken:
            return self.now  # victims are pending now: they may fit elsewhere
        if not waiting:
            return None
        times = list(self.wakeups)
        if self._piecewise:
            for when in (order.next_time(self.now), watch.next_time(self.state, self.now)):
                if when is not None:
                    times.append(when)
        later = [t for t in times if t > self.now]
        return min(later) if later else None
