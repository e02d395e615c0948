"""Leave-one-VC-out evaluation of scheduling policies on the Philly development slice.

Every policy (and every knob setting of the default policy that is up for choice) is replayed on
each of the six dev VCs, alone, in four settings: ``contended_nodes`` and the full ``nodes`` at the
trace's own arrival rate, and ``contended_nodes`` with the arrival rate scaled 1.5x and 2x
(submit times compressed towards the first submit). Knobs are then chosen by leave-one-VC-out:
for each VC, the setting with the best score on the *other five* VCs at the two trace-rate load
levels is the one reported for it, so no figure of a VC comes from knobs tuned on that VC.

Figures per (setting, policy, VC): average and p95 JCT, preemptions per job, and the ratios to
SRTF (the clairvoyant oracle) and to FIFO; "all" is every job of the six VCs together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.scheduler import Policy
from orchestrator.simulate import Partition, load, run_policy, summarize

PHILLY = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "philly"
SETTINGS: dict[str, tuple[bool, float]] = {  # name -> (contended, arrival-rate factor)
    "contended": (True, 1.0),
    "full": (False, 1.0),
    "contended-x1.5": (True, 1.5),
    "contended-x2": (True, 2.0),
}
TUNED_ON = ("contended", "full")  # the load levels knobs are chosen on (the stress runs are reported only)


@dataclass(frozen=True)
class Cell:
    """One policy's figures on one VC (or "all") in one setting."""

    jobs: int
    avg_jct_s: float
    p95_jct_s: float
    preemptions: int

    @property
    def preemptions_per_job(self) -> float:
        return self.preemptions / self.jobs if self.jobs else 0.0


def partitions(setting: str) -> list[Partition]:
    """The dev VCs in a setting (arrivals compressed by the setting's factor)."""
    contended, factor = SETTINGS[setting]
    parts = load(str(PHILLY / "dev.csv"), str(PHILLY / "vc_config.csv"), contended=contended)
    if factor == 1.0:
        return parts
    out = []
    for p in parts:
        start = p.jobs[0].submit if p.jobs else 0.0
        jobs = [replace(j, submit=start + (j.submit - start) / factor) for j in p.jobs]
        out.append(Partition(p.name, p.cluster, jobs, p.request_for))
    return out


def evaluate(parts: Sequence[Partition], policy: str | Policy, label: str) -> dict[str, Cell]:
    """Cells per VC and "all" for one policy (a name, or a fresh instance per VC: policies that
    learn from what they see must not carry it from one VC to the next)."""
    cells: dict[str, Cell] = {}
    replays = []
    for part in parts:
        fresh = policy if isinstance(policy, str) else policy.fresh()
        done, took = run_policy([part], fresh)
        replays += done
        r = summarize(label, done, took)
        cells[part.name] = Cell(r.jobs, r.avg_jct_s, r.p95_jct_s, r.preemptions)
    r = summarize(label, replays, 0.0)
    cells["all"] = Cell(r.jobs, r.avg_jct_s, r.p95_jct_s, r.preemptions)
    return cells


def ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else math.inf)


def score(cell: Cell, srtf: Cell) -> float:
    """Lower is better: the average-JCT ratio to SRTF, plus a penalty for each target missed."""
    avg = ratio(cell.avg_jct_s, srtf.avg_jct_s)
    p95 = ratio(cell.p95_jct_s, srtf.p95_jct_s)
    pre = ratio(cell.preemptions_per_job, max(srtf.preemptions_per_job, 0.01))
    return avg + max(0.0, avg - 1.25) + max(0.0, p95 - 1.5) + 0.25 * max(0.0, pre - 2.0)


def leave_one_out(
    results: dict[str, dict[str, dict[str, Cell]]], candidates: Sequence[str], vcs: Sequence[str]
) -> dict[str, str]:
    """For each VC, the candidate with the best mean score on the other VCs over ``TUNED_ON``."""
    chosen = {}
    for held in vcs:

        def total(name: str, held: str = held) -> float:
            return sum(
                score(results[s][name][vc], results[s]["srtf"][vc])
                for s in TUNED_ON
                for vc in vcs
                if vc != held
            )

        chosen[held] = min(candidates, key=total)
    return chosen


def run_all(
    policies: dict[str, str | Policy], settings: Sequence[str], progress: Callable[[str], None]
) -> dict[str, dict[str, dict[str, Cell]]]:
    """results[setting][policy label][vc or "all"]."""
    results: dict[str, dict[str, dict[str, Cell]]] = {}
    for setting in settings:
        parts = partitions(setting)
        results[setting] = {}
        for label, policy in policies.items():
            results[setting][label] = evaluate(parts, policy, label)
            progress(f"{setting} {label}: {results[setting][label]['all']}")
    return results
