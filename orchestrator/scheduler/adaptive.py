"""The default policy: least attained service in bands that follow the workload, with guards.

``adaptive`` is the discretised 2D LAS of :class:`~orchestrator.scheduler.policies.Las` (never
reading durations), made robust for clusters it was not tuned on:

* **Bands from the observed workload.** The band thresholds are quantiles (``band_quantiles``) of
  the attained service of the jobs that finished lately (the state keeps a sliding sample), so a
  cluster of one-GPU-minute jobs and one of week-long 64-GPU jobs both get bands that split their
  own jobs (with ``weighting="work"`` and ``work_cap`` < 1, each service counts at most the
  ``work_cap`` quantile by job count, so where a handful of huge gangs own most of the work the
  bands still split the many small jobs); until ``warmup`` jobs have finished, the thresholds are
  ``prior`` (8 and 80 GPU-hours, a tenth of the lowest before them for each band more: 0.8, 8 and
  80 for three).
  They are recomputed as the sample grows (at 1, 2, 4, ... times ``warmup`` finishes, then every
  ``refresh_every``), not at every finish: each change re-ranks every job.
* **Starvation guard** (Tiresias' promote knob): a waiting job whose wait reaches
  ``starve_factor`` x its run time since it was last promoted (at least ``min_starve_s``) moves
  to the first band, and its service count restarts (``starve_by="service"``: its wait reaches
  ``starve_factor`` x its attained service since then, in accelerator-seconds, so a wide gang
  waits longer before it is promoted over narrower jobs). With ``starve_count="whole"`` the wait
  is measured against all the service the job ever had, not the service since its last promotion,
  so one job's promotions are spaced geometrically (on Philly VC 11cb48 promotions otherwise drive a
  round-robin of the medium jobs with the 10-min quantum as its time slice).
* **Thrashing guards**, on preemptions by band (cause ``policy``) only; priority, reclaim and the
  backfill bound are rules, not heuristics, and are never held back:

  - ``min-quantum``: a job runs at least ``min_quantum_s`` (and ``quantum_per_restore`` x its
    checkpoint and restore time) after it starts before the band rule may preempt it again;
  - ``preemption-budget``: a job preempted ``max_preemptions`` times within
    ``preemption_window_s`` is not preempted again until the oldest of those leaves the window;
  - ``preemption-cost``: the cost of the preemption (the work lost since the victim's last
    checkpoint, which is none where preemption checkpoints first as here, plus its restart, in
    accelerator-seconds) times ``cost_factor`` must stay below what the preemptor gains: the
    service the victim is still expected to need, from the observed distribution
    (E[S - a | S > a] at the victim's attained service a), which the preemptor would otherwise
    wait behind. A victim that is probably about to finish is left to finish.

A guard that holds a preemption back is named in the waiting job's reasons (``explain``), and a
start by the starvation guard carries ``guard="starvation"``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, ClassVar

from orchestrator.errors import UsageError
from orchestrator.scheduler.policies import Las
from orchestrator.scheduler.state import default_checkpoint_cost

if TYPE_CHECKING:
    from orchestrator.scheduler.state import ClusterState, Job

GUARDS = ("min-quantum", "preemption-budget", "preemption-cost", "starvation")


class ServiceSample:
    """Sorted attained-service values of finished jobs, with prefix sums for conditional means."""

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.values = sorted(values)
        self.prefix = [0.0, *accumulate(self.values)]

    def __len__(self) -> int:
        return len(self.values)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 < q < 1), by linear interpolation between closest ranks."""
        position = (len(self.values) - 1) * q
        low = math.floor(position)
        high = min(low + 1, len(self.values) - 1)
        return self.values[low] + (self.values[high] - self.values[low]) * (position - low)

    def work_quantile(self, q: float, cap: float = math.inf) -> float:
        """The smallest service below which (inclusive) a share ``q`` of all observed service lies;
        each value counting at most ``cap`` (so a handful of huge jobs cannot own the share)."""
        capped = bisect.bisect_right(self.values, cap)  # values[capped:] count as cap each
        total = (
            self.prefix[capped] + (len(self.values) - capped) * cap
            if capped < len(self.values)
            else self.prefix[-1]
        )
        target = q * total
        if target > self.prefix[capped]:
            return min(cap, self.values[-1])
        index = bisect.bisect_left(self.prefix, target, 0, capped + 1)
        return self.values[min(max(index - 1, 0), len(self.values) - 1)]

    def gittins_quantum_end(self, attained: float) -> float:
        """The end of the quantum that maximises the Gittins index of a job that has had
        ``attained``: the ``b`` maximising P(S <= b | S > a) / E[min(S, b) - a | S > a] over the
        observed values ``b`` above ``a`` (``a`` itself when none is)."""
        values, prefix = self.values, self.prefix
        first = bisect.bisect_right(values, attained)
        longer = len(values) - first
        best, end = -1.0, attained
        for k in range(first, len(values)):
            done = k + 1 - first  # jobs finishing within (a, values[k]]
            used = prefix[k + 1] - prefix[first] - done * attained + (longer - done) * (values[k] - attained)
            if used > 0 and done / used > best:
                best, end = done / used, values[k]
        return end

    def expected_remaining(self, attained: float) -> float:
        """E[S - a | S > a]: the service a job that has had ``a`` is expected to need still
        (infinite when no observed job needed more: nothing says it is about to finish)."""
        index = bisect.bisect_right(self.values, attained)
        longer = len(self.values) - index
        if longer == 0:
            return math.inf
        return (self.prefix[-1] - self.prefix[index]) / longer - attained


class Adaptive(Las):
    """Least attained service in workload-quantile bands, with starvation and thrashing guards."""

    name: ClassVar[str] = "adaptive"
    summary = (
        "least attained service, bands from the observed workload, thrashing and starvation guards (default)"
    )

    def __init__(
        self,
        # the defaults were chosen leave-one-VC-out on the dev VCs, overload included, among the
        # settings that meet the preemption and replay-time targets (BENCHMARKS.md, issue 24):
        # bands at the 0.9 and 0.99 quantiles by job count, promotion after 4 x attained service
        band_quantiles: Sequence[float] = (0.9, 0.99),
        *,
        weighting: str = "jobs",
        work_cap: float = 1.0,
        prior: Sequence[float] | None = None,
        warmup: int = 50,
        refresh_every: int = 2_000,
        starve_factor: float = 4.0,
        min_starve_s: float = 600.0,
        starve_by: str = "service",
        starve_count: str = "since-promotion",
        min_quantum_s: float = 600.0,
        quantum_per_restore: float = 10.0,
        max_preemptions: int = 3,
        preemption_window_s: float = 6 * 3600.0,
        cost_factor: float = 1.0,
    ) -> None:
        quantiles = [float(q) for q in band_quantiles]
        if not quantiles or quantiles != sorted(quantiles) or not all(0 < q < 1 for q in quantiles):
            raise UsageError(
                f"adaptive band quantiles must be increasing and between 0 and 1, got {quantiles}",
                fix="e.g. band_quantiles=(0.5, 0.9)",
            )
        if prior is None:  # 8 and 80 GPU-hours for two bands (las' thresholds), a tenth less per extra one
            prior = tuple(288_000.0 / 10 ** (len(quantiles) - 1 - k) for k in range(len(quantiles)))
        if len(prior) != len(quantiles):
            raise UsageError(
                "adaptive needs one prior threshold per band quantile", fix="match their lengths"
            )
        if max_preemptions < 1 or warmup < 1:
            raise UsageError("max_preemptions and warmup must be at least 1", fix="raise them")
        if starve_by not in ("time", "service"):
            raise UsageError(
                f"adaptive starve_by must be time or service, got {starve_by!r}", fix="use time or service"
            )
        if starve_count not in ("since-promotion", "whole"):
            raise UsageError(
                f"adaptive starve_count must be since-promotion or whole, got {starve_count!r}",
                fix="use since-promotion or whole",
            )
        if weighting not in ("jobs", "work", "gittins"):
            raise UsageError(
                f"adaptive weighting must be jobs, work or gittins, got {weighting!r}",
                fix="use jobs, work or gittins",
            )
        if not 0 < work_cap <= 1:
            raise UsageError(
                f"adaptive work_cap must be a job-count quantile in (0, 1], got {work_cap}",
                fix="e.g. work_cap=0.99 (1 caps nothing)",
            )
        super().__init__(prior, starve_factor, min_starve_s)
        self.weighting = weighting
        self.work_cap = work_cap
        self.starve_by = starve_by
        self.starve_count = starve_count
        self.prior = self.thresholds
        self.band_quantiles = tuple(quantiles)
        self.warmup, self.refresh_every = warmup, refresh_every
        self.min_quantum_s, self.quantum_per_restore = min_quantum_s, quantum_per_restore
        self.max_preemptions, self.preemption_window_s = max_preemptions, preemption_window_s
        self.cost_factor = cost_factor
        self.sample = ServiceSample()
        self._checkpoint_cost: Callable[[float], float] = default_checkpoint_cost
        self._quanta: dict[float, float] = {}  # gang size -> minimum quantum (s)
        self._next_refresh = warmup
        self._token = object()

    def fresh(self) -> Adaptive:
        """The same knobs, nothing learnt."""
        return Adaptive(
            self.band_quantiles,
            weighting=self.weighting,
            work_cap=self.work_cap,
            prior=self.prior,
            warmup=self.warmup,
            refresh_every=self.refresh_every,
            starve_factor=self.starve_factor,
            min_starve_s=self.min_starve_s,
            starve_by=self.starve_by,
            starve_count=self.starve_count,
            min_quantum_s=self.min_quantum_s,
            quantum_per_restore=self.quantum_per_restore,
            max_preemptions=self.max_preemptions,
            preemption_window_s=self.preemption_window_s,
            cost_factor=self.cost_factor,
        )

    @property
    def cache_token(self) -> object:
        return self._token

    # -- learning the workload -----------------------------------------------------------------
    def observe(self, state: ClusterState, now: float) -> bool:
        """Refresh the thresholds from the state's finished jobs when enough more have finished
        (the first time a state is seen, at once). True when the thresholds changed."""
        if state.checkpoint_cost is not self._checkpoint_cost:
            self._checkpoint_cost, self._quanta = state.checkpoint_cost, {}
        seen = state.finished_count
        if seen < self._next_refresh:
            return False
        self.sample = ServiceSample(state.finished_service)
        self._next_refresh = max(seen + 1, min(2 * seen, seen + self.refresh_every))
        thresholds: list[float] = []
        cap = self.sample.quantile(self.work_cap) if self.work_cap < 1 else math.inf
        for q in self.band_quantiles:
            if self.weighting == "gittins":  # the next Gittins quantum's end (the quantiles' count only)
                cut = self.sample.gittins_quantum_end(thresholds[-1] if thresholds else 0.0)
            elif self.weighting == "jobs":
                cut = self.sample.quantile(q)
            else:
                cut = self.sample.work_quantile(q, cap)
            value = max(cut, 1.0)
            if thresholds:
                value = max(value, thresholds[-1] * 1.01)
            thresholds.append(value)
        if tuple(thresholds) == self.thresholds:
            return False
        self.thresholds = tuple(thresholds)
        self._token = object()  # every cached rank and band is stale now
        return True

    # -- starvation guard ----------------------------------------------------------------------
    def _starve_after(self, job: Job) -> float:
        # Tiresias' promote knob: the wait allowed grows with the run time since the last promotion
        # "whole": every accelerator-second it ever had counts, so one job's promotions are
        # geometrically spaced (a promotion no longer restarts the wait the next one needs)
        served = job.attained if self.starve_count == "whole" else job.attained - job.service_forgiven
        if self.starve_by == "service":  # 2D: a wide gang waits as many seconds as it held accelerators
            return max(self.min_starve_s, self.starve_factor * served)
        ran = served / job.size if job.size else job.last_run
        return max(self.min_starve_s, self.starve_factor * ran)

    # -- thrashing guards ----------------------------------------------------------------------
    def quantum(self, job: Job) -> float:
        """Seconds a job runs after a start before the band rule may preempt it."""
        found = self._quanta.get(job.size)
        if found is None:  # one per gang size: asked of every running job in most passes
            found = self._quanta[job.size] = max(
                self.min_quantum_s, self.quantum_per_restore * self._checkpoint_cost(job.size)
            )
        return found

    def protection(self, job: Job, now: float) -> tuple[str, float] | None:
        """The guard that keeps running ``job`` from being preempted by band now, and when it
        lifts (``inf``: not by itself; looked at again when the job crosses a threshold)."""
        start = job.run_start
        if start is None:
            return None
        until = start + self.quantum(job)
        if now < until:
            return "min-quantum", until
        times, most = job.preempted_at, self.max_preemptions
        if len(times) >= most and times[-most] > now - self.preemption_window_s:  # times ascend
            return "preemption-budget", times[-most] + self.preemption_window_s
        if self.sample:
            gain = self.sample.expected_remaining(self.service(job, now))
            if gain < self.cost_factor * self._checkpoint_cost(job.size) * job.size:
                return "preemption-cost", math.inf
        return None

    def band(self, job: Job, now: float) -> float:
        start = job.run_start
        if start is None:
            return super().band(job, now)
        # service inlined: this is asked of every running job in most passes
        raw = bisect.bisect_right(
            self.thresholds, job.attained + job.size * (now - start) - job.service_forgiven
        )
        return 0 if raw and self.protection(job, now) is not None else raw

    def next_change(self, job: Job, now: float) -> float | None:
        when = super().next_change(job, now)
        start = job.run_start
        # a guard's end changes the band only of a job past the first threshold (the others are
        # looked at again when they cross it)
        if (
            start is not None
            and self.thresholds[0] <= job.attained + job.size * (now - start) - job.service_forgiven
        ):
            held = self.protection(job, now)
            if held is not None and held[1] != math.inf:
                return held[1] if when is None else min(when, held[1])
        return when

    def holds(self, victim: Job, band: float, now: float) -> str | None:
        if (
            victim.run_start is None
            or bisect.bisect_right(self.thresholds, self.service(victim, now)) <= band
        ):
            return None
        held = self.protection(victim, now)
        return None if held is None else held[0]

    def __repr__(self) -> str:
        return (
            f"Adaptive(band_quantiles={self.band_quantiles}, thresholds={self.thresholds}, "
            f"starve_factor={self.starve_factor}, min_quantum_s={self.min_quantum_s}, "
            f"max_preemptions={self.max_preemptions}/{self.preemption_window_s:g}s)"
        )
