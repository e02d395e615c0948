"""Per-policy figures from replayed partitions: JCT percentiles, queueing, utilisation.

* JCT (job completion time): finish - submit, averaged over every job of the trace.
* Queueing: time spent waiting, including time spent requeued after a preemption.
* Makespan: last finish - first submit, over all partitions.
* Utilisation: accelerator-seconds held by jobs (checkpoint/restore time included) over
  accelerator-seconds the partitions offered during the makespan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from orchestrator.scheduler import JobStatus
from orchestrator.simulate.engine import Replay


@dataclass(frozen=True)
class PolicyReport:
    """The figures of one policy on one trace and cluster."""

    policy: str
    jobs: int
    avg_jct_s: float
    p50_jct_s: float
    p95_jct_s: float
    p99_jct_s: float
    avg_queue_s: float
    makespan_s: float
    utilization: float
    preemptions: int
    replay_s: float

    def to_json(self) -> dict[str, float | int]:
        data = asdict(self)
        del data["policy"]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def job_completion_times(replays: Sequence[Replay]) -> list[float]:
    return sorted(
        j.finished_at - j.submit_time
        for r in replays
        for j in r.state.jobs.values()
        if j.finished_at is not None
    )


def summarize(policy: str, replays: Sequence[Replay], replay_s: float) -> PolicyReport:
    """Figures over all partitions' jobs; every job must have finished."""
    jobs = [j for r in replays for j in r.state.jobs.values()]
    unfinished = [j.id for j in jobs if j.status is not JobStatus.FINISHED]
    if unfinished:
        raise ValueError(f"{len(unfinished)} jobs did not finish, e.g. {unfinished[0]}")
    jct = job_completion_times(replays)
    start = min(j.submit_time for j in jobs)
    end = max(j.finished_at or 0.0 for j in jobs)
    makespan = end - start
    offered = sum(r.partition.gpus for r in replays) * makespan
    held = sum(j.attained for j in jobs)
    return PolicyReport(
        policy=policy,
        jobs=len(jobs),
        avg_jct_s=sum(jct) / len(jct),
        p50_jct_s=percentile(jct, 50),
        p95_jct_s=percentile(jct, 95),
        p99_jct_s=percentile(jct, 99),
        avg_queue_s=sum(j.queued_total for j in jobs) / len(jobs),
        makespan_s=makespan,
        utilization=held / offered if offered else 0.0,
        preemptions=sum(j.preemptions for j in jobs),
        replay_s=replay_s,
    )


def ratios(report: PolicyReport, baseline: PolicyReport) -> dict[str, float]:
    """``report``'s average JCT, p95 JCT and preemptions per job over ``baseline``'s (``inf`` where the
    baseline's is 0 and the report's is not; 1.0 where both are 0)."""

    def over(a: float, b: float) -> float:
        return round(a / b, 4) if b else (1.0 if a == 0 else math.inf)

    return {
        "avg_jct": over(report.avg_jct_s, baseline.avg_jct_s),
        "p95_jct": over(report.p95_jct_s, baseline.p95_jct_s),
        "preemptions_per_job": over(report.preemptions / report.jobs, baseline.preemptions / baseline.jobs),
    }


def reports_json(
    reports: Sequence[PolicyReport], compare_to: str | None = None, **setting: object
) -> dict[str, object]:
    """``{"policies": {"<name>": {"avg_jct_s": ..., ...}}, ...}`` (the ``--output json`` shape); with
    ``compare_to``, each policy also has ``ratio_to_<name>`` (see :func:`ratios`)."""
    base = next((r for r in reports if r.policy == compare_to), None)
    policies: dict[str, dict[str, object]] = {}
    for r in reports:
        policies[r.policy] = dict(r.to_json())
        if base is not None:
            policies[r.policy][f"ratio_to_{base.policy}"] = ratios(r, base)
    return {"policies": policies, **({"compare_to": compare_to} if compare_to else {}), **setting}


def write_plot(path: str, jct_by_policy: dict[str, list[float]]) -> None:
    """A PNG of the JCT distribution (CDF, log time axis) of each policy. Needs matplotlib."""
    from orchestrator.errors import NotAvailableError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NotAvailableError(
            "--plot needs matplotlib, which is not installed", fix="pip install matplotlib"
        ) from None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, values in jct_by_policy.items():
        if not values:
            continue
        n = len(values)
        ax.plot([max(v, 1.0) for v in values], [(i + 1) / n for i in range(n)], label=name, linewidth=1.6)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("JCT distribution by policy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        from orchestrator.errors import UsageError

        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", fix="check the directory") from None
    finally:
        plt.close(fig)
