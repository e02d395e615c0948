"""Leave-one-VC-out evaluation of scheduling policies on the Philly development slice.

Every policy (and every knob setting of the default policy that is up for choice) is replayed on
each of the six dev VCs, alone, in four settings: ``contended_nodes`` and the full ``nodes`` at the
trace's own arrival rate, and ``contended_nodes`` with the arrival rate scaled 1.5x and 2x
(submit times compressed towards the first submit). Knobs are then chosen by leave-one-VC-out:
for each VC, the setting with the best score summed over the *other five* VCs and all four
settings (the overload ones included: the clusters the default must hold on are small, heavily
overloaded partitions) *among the settings that meet the issue's hard targets* is the one reported
for it, so no figure of a VC comes from knobs tuned on that VC. The hard targets: preemptions per
job at most ``PREEMPT_LIMIT`` x SRTF's, pooled over the five tuning VCs, in each setting; and the
replay of all dev jobs within ``REPLAY_LIMIT`` x ``las``' CPU time (a property of the policy,
measured once: ``REPLAY_X_LAS``; a candidate not measured is not admitted).

Figures per (setting, policy, VC): average and p95 JCT, preemptions per job, and the ratios to
SRTF (the clairvoyant oracle) and to FIFO; "all" is every job of the six VCs together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.scheduler import Policy
from orchestrator.scheduler.adaptive import Adaptive
from orchestrator.simulate import Partition, job_completion_times, load, run_policy, summarize
from orchestrator.simulate.report import percentile

PHILLY = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "philly"
SETTINGS: dict[str, tuple[bool, float]] = {  # name -> (contended, arrival-rate factor)
    "contended": (True, 1.0),
    "full": (False, 1.0),
    "contended-x1.5": (True, 1.5),
    "contended-x2": (True, 2.0),
}
# The default policy's knob settings up for choice: band cut points (quantiles of the observed
# service, by job count or by share of the work) and the promote knob. The guards' own knobs stay
# at their defaults (quantum 10 min, 3 preemptions per 6 h, cost factor 1). Every label's knobs are
# spelt out, so a change of the policy's defaults does not change what a label replays (``starve_by``
# was not until the fourth sitting: from a5d5273, which made "service" the default, to then, the
# labels without "x service" replayed promotion by service; their figures were re-run).
CANDIDATES: dict[str, Adaptive] = {
    "adaptive[jobs .5/.9/.99, starve 4]": Adaptive(
        (0.5, 0.9, 0.99), weighting="jobs", starve_by="time", starve_factor=4.0
    ),
    "adaptive[jobs .5/.9/.99, starve 8]": Adaptive(
        (0.5, 0.9, 0.99), weighting="jobs", starve_by="time", starve_factor=8.0
    ),
    "adaptive[work .5/.75, starve 8]": Adaptive(
        (0.5, 0.75), weighting="work", starve_by="time", starve_factor=8.0
    ),
    "adaptive[jobs .9/.99, starve 4]": Adaptive(
        (0.9, 0.99), weighting="jobs", starve_by="time", starve_factor=4.0
    ),
    "adaptive[jobs .9/.99, starve 2]": Adaptive(
        (0.9, 0.99), weighting="jobs", starve_by="time", starve_factor=2.0
    ),
    "adaptive[work .5/.75, starve 4]": Adaptive(
        (0.5, 0.75), weighting="work", starve_by="time", starve_factor=4.0
    ),
    "adaptive[work .5/.75, starve 2]": Adaptive(
        (0.5, 0.75), weighting="work", starve_by="time", starve_factor=2.0
    ),
    # Added in a second sitting (after the figures above had been seen): promotion relative to the
    # attained service (accelerator-seconds) rather than the run time, as Tiresias' 2D promote knob.
    "adaptive[work .5/.75, starve 4 x service]": Adaptive(
        (0.5, 0.75), weighting="work", starve_by="service", starve_factor=4.0
    ),
    "adaptive[work .5/.75, starve 1 x service]": Adaptive(
        (0.5, 0.75), weighting="work", starve_factor=1.0, starve_by="service"
    ),
    "adaptive[jobs .9/.99, starve 4 x service]": Adaptive(
        (0.9, 0.99), weighting="jobs", starve_by="service", starve_factor=4.0
    ),
    # Added in a third sitting (issue 24's held-out p95 misses on 11cb48 and ee9e8c, after a
    # diagnosis on those two VCs): fewer, later job-count bands
    "adaptive[jobs .95/.995, starve 4 x service]": Adaptive(
        (0.95, 0.995), weighting="jobs", starve_by="service", starve_factor=4.0
    ),
    "adaptive[jobs .99/.999, starve 4 x service]": Adaptive(
        (0.99, 0.999), weighting="jobs", starve_by="service", starve_factor=4.0
    ),
    # and the promotion wait from the job's whole attained service, not the service since its last
    # promotion (on 11cb48 promotions drove a round-robin with the 10-min quantum as its slice)
    "adaptive[jobs .9/.99, starve 4 x whole service]": Adaptive(
        (0.9, 0.99), weighting="jobs", starve_by="service", starve_factor=4.0, starve_count="whole"
    ),
    "adaptive[jobs .95/.995, starve 4 x whole service]": Adaptive(
        (0.95, 0.995), weighting="jobs", starve_by="service", starve_factor=4.0, starve_count="whole"
    ),
    # Added in a fourth sitting (11cb48's fold still chose work bands, whose cut points there are
    # set by 19 16-GPU jobs, so its 10,739 1-GPU jobs share one band: FIFO-like, p95 2.00x SRTF):
    # work bands with each observed service capped at a job-count quantile
    "adaptive[work .5/.75 cap .99, starve 4 x whole service]": Adaptive(
        (0.5, 0.75),
        weighting="work",
        work_cap=0.99,
        starve_by="service",
        starve_factor=4.0,
        starve_count="whole",
    ),
    "adaptive[work .5/.75 cap .99, starve 4 x service]": Adaptive(
        (0.5, 0.75), weighting="work", work_cap=0.99, starve_by="service", starve_factor=4.0
    ),
    "adaptive[work .5/.75 cap .99, starve 1 x service]": Adaptive(
        (0.5, 0.75), weighting="work", work_cap=0.99, starve_by="service", starve_factor=1.0
    ),
    "adaptive[work .5/.75 cap .995, starve 4 x whole service]": Adaptive(
        (0.5, 0.75),
        weighting="work",
        work_cap=0.995,
        starve_by="service",
        starve_factor=4.0,
        starve_count="whole",
    ),
    "adaptive[work .5/.75 cap .99, starve 8 x service]": Adaptive(
        (0.5, 0.75), weighting="work", work_cap=0.99, starve_by="service", starve_factor=8.0
    ),
    # and, last (after the figures above had been seen), capped or uncapped work bands with faster
    # promotion counting the whole service (replay time not measured: not admitted)
    "adaptive[work .5/.75 cap .99, starve 1 x whole service]": Adaptive(
        (0.5, 0.75),
        weighting="work",
        work_cap=0.99,
        starve_by="service",
        starve_factor=1.0,
        starve_count="whole",
    ),
    "adaptive[work .5/.75 cap .99, starve 2 x whole service]": Adaptive(
        (0.5, 0.75),
        weighting="work",
        work_cap=0.99,
        starve_by="service",
        starve_factor=2.0,
        starve_count="whole",
    ),
    "adaptive[work .5/.75, starve 1 x whole service]": Adaptive(
        (0.5, 0.75), weighting="work", starve_by="service", starve_factor=1.0, starve_count="whole"
    ),
    # and bands at the ends of successive Gittins-optimal quanta over the observed service
    "adaptive[gittins x2, starve 4]": Adaptive(
        (0.5, 0.75), weighting="gittins", starve_by="time", starve_factor=4.0
    ),
}
BASELINES = ("fifo", "srtf", "las")
TUNED_ON = tuple(SETTINGS)  # the settings knobs are chosen on: both load levels and both overloads
# The hard targets a choice must meet (the constraint was added after the unconstrained choice's
# figures were seen: its winner missed both). Preemptions per job pooled over the tuning VCs, in
# each setting, at most this many times SRTF's:
PREEMPT_LIMIT = 2.0
# and the replay of all 49,037 dev jobs on contended_nodes, one process, at most this many times
# las' CPU time: the candidate's median CPU s over las' median (four runs), runs alternating with
# las' in the same sitting (BENCHMARKS.md; starve 8 with .5/.9/.99 bands in an earlier sitting).
REPLAY_LIMIT = 2.0
REPLAY_X_LAS: dict[str, float] = {
    "adaptive[jobs .5/.9/.99, starve 8]": 3.8,
    "adaptive[jobs .9/.99, starve 4 x service]": 2.00,  # 9.5 s / 4.75 s: on the limit (1.7-2.15 per pair)
    "adaptive[work .5/.75, starve 8]": 1.64,  # by run time; 1.65 re-measured in the fourth sitting
    "adaptive[work .5/.75, starve 4 x service]": 1.66,
    "adaptive[work .5/.75, starve 1 x service]": 1.56,
    # a fourth sitting (bench/replay_time.py --rounds 4, each alternating with las and, in the first,
    # the shipped default, which measured 7.95 s / 4.0 s = 1.99x beside them)
    "adaptive[jobs .95/.995, starve 4 x whole service]": 1.43,  # 5.7 s / 4.0 s
    "adaptive[jobs .95/.995, starve 4 x service]": 1.48,  # 6.15 s / 4.15 s
    "adaptive[jobs .99/.999, starve 4 x service]": 1.18,  # 4.9 s / 4.15 s
    "adaptive[jobs .9/.99, starve 4 x whole service]": 1.94,  # 8.05 s / 4.15 s
    # the capped work bands, in one more such sitting (las 3.95 s)
    "adaptive[work .5/.75 cap .99, starve 4 x whole service]": 1.95,  # 7.7 s
    "adaptive[work .5/.75 cap .99, starve 4 x service]": 1.92,  # 7.6 s
    "adaptive[work .5/.75 cap .99, starve 1 x service]": 1.85,  # 7.3 s
    "adaptive[work .5/.75 cap .995, starve 4 x whole service]": 1.92,  # 7.6 s
    "adaptive[work .5/.75 cap .99, starve 8 x service]": 1.90,  # 7.5 s
}
# The shipped default (``Adaptive()``'s knobs) and the candidates the rule chose it from (those
# whose replay time had been measured then, third sitting). Candidates added later can replace it
# only through ``verdict``: the rule's held-out figures over every candidate must meet more of the
# targets (per VC and "all", in every setting) than the shipped default's, lose none it met, and
# be no worse (by more than ``WORSE_BY`` in the ratio) on any it missed.
SHIPPED = "adaptive[jobs .9/.99, starve 4 x service]"
SHIPPED_FROM = (
    "adaptive[jobs .9/.99, starve 4 x service]",
    "adaptive[work .5/.75, starve 8]",
    "adaptive[work .5/.75, starve 4 x service]",
    "adaptive[work .5/.75, starve 1 x service]",
    "adaptive[jobs .5/.9/.99, starve 8]",
)
TARGETS = ("avg <= 1.25x SRTF", "avg <= 0.5x FIFO", "p95 <= 1.5x SRTF", "preemptions <= 2x SRTF")
WORSE_BY = 0.02


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


def evaluate(
    parts: Sequence[Partition], policy: str | Policy, label: str
) -> tuple[dict[str, Cell], dict[str, list[float]]]:
    """Cells per VC and "all" for one policy (a name, or a fresh instance per VC: policies that
    learn from what they see must not carry it from one VC to the next)."""
    cells: dict[str, Cell] = {}
    jcts: dict[str, list[float]] = {}
    replays = []
    for part in parts:
        fresh = policy if isinstance(policy, str) else policy.fresh()
        done, took = run_policy([part], fresh)
        replays += done
        r = summarize(label, done, took)
        cells[part.name] = Cell(r.jobs, r.avg_jct_s, r.p95_jct_s, r.preemptions)
        jcts[part.name] = job_completion_times(done)
    r = summarize(label, replays, 0.0)
    cells["all"] = Cell(r.jobs, r.avg_jct_s, r.p95_jct_s, r.preemptions)
    return cells, jcts


def ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else math.inf)


def score(cell: Cell, srtf: Cell) -> float:
    """Lower is better: the average-JCT ratio to SRTF, plus a penalty for each target missed."""
    avg = ratio(cell.avg_jct_s, srtf.avg_jct_s)
    p95 = ratio(cell.p95_jct_s, srtf.p95_jct_s)
    pre = ratio(cell.preemptions_per_job, max(srtf.preemptions_per_job, 0.01))
    return avg + max(0.0, avg - 1.25) + max(0.0, p95 - 1.5) + 0.25 * max(0.0, pre - 2.0)


Results = dict[str, dict[str, dict[str, Cell]]]  # [setting][policy label][vc or "all"]


def pooled_preemptions_x_srtf(results: Results, name: str, setting: str, vcs: Sequence[str]) -> float:
    """Preemptions per job of ``name`` pooled over ``vcs``, over SRTF's on the same VCs."""

    def per_job(label: str) -> float:
        cells = [results[setting][label][vc] for vc in vcs]
        return sum(c.preemptions for c in cells) / max(1, sum(c.jobs for c in cells))

    return ratio(per_job(name), per_job("srtf"))


def admissible(results: Results, name: str, vcs: Sequence[str]) -> bool:
    """Whether ``name`` meets the hard targets on ``vcs``: preemptions in every ``TUNED_ON``
    setting, and the replay time (measured: unmeasured candidates are not admitted)."""
    return REPLAY_X_LAS.get(name, math.inf) <= REPLAY_LIMIT and all(
        pooled_preemptions_x_srtf(results, name, s, vcs) <= PREEMPT_LIMIT for s in TUNED_ON
    )


RULES = ("mean", "minimax", "regret")  # how a fold ranks candidates over its five VCs


def leave_one_out(
    results: Results, candidates: Sequence[str], vcs: Sequence[str], rule: str = "mean"
) -> dict[str, str]:
    """For each VC, the best candidate over the other VCs and ``TUNED_ON`` among those
    ``admissible`` on the other VCs (candidates not replayed in every one of those settings are
    left out; when none is admissible, the best regardless, so a fold always gets knobs; the
    report's constraint table shows it). Best by ``rule``: ``mean``, the least score summed over the
    other VCs (the shipped rule); ``minimax``, the least worst VC's score (each VC's score summed over
    ``TUNED_ON``); ``regret``, the least worst excess of a VC's score over the best admissible
    candidate's on that VC (the sum breaking ties)."""
    candidates = [c for c in candidates if all(c in results[s] for s in TUNED_ON)]
    chosen: dict[str, str] = {}
    for held in vcs:
        rest = [vc for vc in vcs if vc != held]
        ok = [c for c in candidates if admissible(results, c, rest)] or candidates
        key: dict[str, tuple[float, float]]
        if rule == "mean":
            key = {name: (total_score(results, name, vcs, held), 0.0) for name in ok}
        else:
            per_vc = {name: {vc: total_score(results, name, [vc]) for vc in rest} for name in ok}
            best = {vc: min(per_vc[name][vc] for name in ok) for vc in rest}
            key = {
                name: (
                    max(per_vc[name][vc] - (best[vc] if rule == "regret" else 0.0) for vc in rest),
                    sum(per_vc[name].values()),
                )
                for name in ok
            }
        chosen[held] = min(ok, key=key.__getitem__)
    return chosen


def total_score(results: Results, name: str, vcs: Sequence[str], held: str = "") -> float:
    """``score`` summed over ``TUNED_ON`` and the VCs other than ``held`` (all when empty)."""
    return sum(
        score(results[s][name][vc], results[s]["srtf"][vc]) for s in TUNED_ON for vc in vcs if vc != held
    )


def run_all(
    policies: dict[str, str | Policy], settings: Sequence[str], progress: Callable[[str], None]
) -> tuple[Results, dict[str, dict[str, dict[str, list[float]]]]]:
    """Every policy on every VC in every setting: cells, and the completion times behind them."""
    results: Results = {}
    jcts: dict[str, dict[str, dict[str, list[float]]]] = {}
    for setting in settings:
        parts = partitions(setting)
        results[setting], jcts[setting] = {}, {}
        for label, policy in policies.items():
            results[setting][label], jcts[setting][label] = evaluate(parts, policy, label)
            progress(f"{setting} {label}: {results[setting][label]['all']}")
    return results, jcts


def held_out(
    results: Results, jcts: dict[str, dict[str, dict[str, list[float]]]], chosen: dict[str, str], setting: str
) -> dict[str, Cell]:
    """The default policy's cells in a setting when each VC is replayed with the knobs chosen
    without it; "all" pools the jobs of the six."""
    if any(label not in results[setting] for label in chosen.values()):
        return {}  # a chosen setting was not replayed here
    cells = {vc: results[setting][label][vc] for vc, label in chosen.items()}
    times = sorted(t for vc, label in chosen.items() for t in jcts[setting][label][vc])
    jobs = sum(c.jobs for c in cells.values())
    cells["all"] = Cell(
        jobs,
        sum(c.avg_jct_s * c.jobs for c in cells.values()) / jobs,
        percentile(times, 95),
        sum(c.preemptions for c in cells.values()),
    )
    return cells


def targets_met(cell: Cell, srtf: Cell, fifo: Cell) -> tuple[bool, ...]:
    """The issue's targets (``TARGETS``) that ``cell`` meets against SRTF's and FIFO's cells."""
    return (
        cell.avg_jct_s <= 1.25 * srtf.avg_jct_s,
        cell.avg_jct_s <= 0.5 * fifo.avg_jct_s,
        cell.p95_jct_s <= 1.5 * srtf.p95_jct_s,
        cell.preemptions_per_job <= 2.0 * srtf.preemptions_per_job,
    )


def verdict(
    results: Results,
    jcts: dict[str, dict[str, dict[str, list[float]]]],
    old: dict[str, str],
    new: dict[str, str],
) -> tuple[int, int, list[str], list[str], list[str]]:
    """Targets met held out under the knobs ``old`` and ``new`` (each VC's fold choice), summed over
    the VCs, "all" and the settings; the targets ``new`` gains, those it loses, and those both miss
    where ``new``'s ratio is more than ``WORSE_BY`` worse (each ``setting VC target: old ratio ->
    new ratio``)."""
    counts = [0, 0]
    gained: list[str] = []
    lost: list[str] = []
    worse: list[str] = []
    for setting in results:
        before, after = held_out(results, jcts, old, setting), held_out(results, jcts, new, setting)
        for vc in before:
            srtf, fifo = results[setting]["srtf"][vc], results[setting]["fifo"][vc]
            was, now = targets_met(before[vc], srtf, fifo), targets_met(after[vc], srtf, fifo)
            counts[0] += sum(was)
            counts[1] += sum(now)
            old_ratios, new_ratios = _ratios(before[vc], srtf, fifo), _ratios(after[vc], srtf, fifo)
            for k, name in enumerate(TARGETS):
                text = f"{setting} {vc} {name}: {old_ratios[k]:.3f} -> {new_ratios[k]:.3f}"
                if was[k] != now[k]:
                    (gained if now[k] else lost).append(text)
                elif not now[k] and new_ratios[k] > old_ratios[k] + WORSE_BY:
                    worse.append(text)
    return counts[0], counts[1], gained, lost, worse


def _ratios(cell: Cell, srtf: Cell, fifo: Cell) -> tuple[float, ...]:
    return (
        ratio(cell.avg_jct_s, srtf.avg_jct_s),
        ratio(cell.avg_jct_s, fifo.avg_jct_s),
        ratio(cell.p95_jct_s, srtf.p95_jct_s),
        ratio(cell.preemptions_per_job, srtf.preemptions_per_job),
    )


def row(setting: str, label: str, vc: str, cell: Cell, srtf: Cell, fifo: Cell, note: str = "") -> str:
    return (
        f"| {setting} | {label} | {vc} | {cell.avg_jct_s:,.0f} | {ratio(cell.avg_jct_s, srtf.avg_jct_s):.2f} | "
        f"{ratio(cell.avg_jct_s, fifo.avg_jct_s):.2f} | {ratio(cell.p95_jct_s, srtf.p95_jct_s):.2f} | "
        f"{cell.preemptions_per_job:.3f} | {srtf.preemptions_per_job:.3f} | {note} |"
    )


HEADER = (
    "| setting | policy | VC | avg JCT (s) | x SRTF | x FIFO | p95 x SRTF | preempt/job | SRTF preempt/job | knobs |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def report(
    results: Results, jcts: dict[str, dict[str, dict[str, list[float]]]]
) -> tuple[str, dict[str, str]]:
    """Markdown: the leave-one-VC-out default per VC and setting, then every policy's figures."""
    first = next(iter(results.values()))
    vcs = [vc for vc in first["srtf"] if vc != "all"]
    chosen = leave_one_out(results, list(CANDIDATES), vcs)
    shipped = leave_one_out(results, list(SHIPPED_FROM), vcs)
    lines: list[str] = []
    for title, knobs in (
        (
            f"Shipped default ({SHIPPED}), leave-one-VC-out: the rule over the candidates it was chosen from",
            shipped,
        ),
        ("The rule over every candidate, leave-one-VC-out", chosen),
    ):
        lines += [
            f"{title} (each VC's knobs: the best score on the other five among the candidates that",
            "meet the hard targets there):",
            "",
            HEADER,
        ]
        for setting in results:
            cells = held_out(results, jcts, knobs, setting)
            for vc, cell in cells.items():
                srtf, fifo = results[setting]["srtf"][vc], results[setting]["fifo"][vc]
                lines.append(row(setting, "default (held out)", vc, cell, srtf, fifo, knobs.get(vc, "")))
        lines.append("")
    lines += [
        "Other fold rules over every candidate (targets met held out, against the shipped default's;",
        f"gained, lost, and missed by both but more than {WORSE_BY:g} worse in the ratio):",
        "",
    ]
    for rule in RULES[1:]:
        other = leave_one_out(results, list(CANDIDATES), vcs, rule)
        was, now, gained, lost, worse = verdict(results, jcts, shipped, other)
        lines += [
            f"- {rule}: {now} (shipped {was}); folds {other}",
            *(f"  - gained: {g}" for g in gained),
            *(f"  - lost: {x}" for x in lost),
            *(f"  - worse: {x}" for x in worse),
        ]
    lines.append("")
    everywhere = [c for c in CANDIDATES if all(c in results[s] for s in TUNED_ON)]
    ok = [c for c in everywhere if admissible(results, c, vcs)] or everywhere
    pick = min(ok, key=lambda c: total_score(results, c, vcs))
    was, now, gained, lost, worse = verdict(results, jcts, shipped, chosen)
    lines += [
        f"On all six VCs the rule over every candidate picks {pick}. Held out, the shipped default",
        f"meets {was} of the {len(TARGETS)} targets x (VCs + all) x settings, the rule over every candidate {now};",
        f"it gains {len(gained)}, loses {len(lost)} and is worse on {len(worse)} missed by both, so the default "
        + ("is replaced." if now > was and not lost and not worse else "stays."),
        "",
        *(f"- gained: {g}" for g in gained),
        *(f"- lost: {x}" for x in lost),
        *(f"- worse: {x}" for x in worse),
        "",
    ]
    lines += [
        "",
        "Each candidate's score (lower is better) over all six VCs: in the settings knobs are chosen on,",
    ]
    lines += [
        "and in each of them; its preemptions per job over SRTF's (the six VCs pooled) in each setting;",
        f"its replay CPU time over las' (limits {PREEMPT_LIMIT:g}x SRTF's and {REPLAY_LIMIT:g}x las'; each fold applies",
        "the preemption limit to its own five VCs):",
        "",
    ]
    lines += [
        "| candidate | "
        + " | ".join(["chosen on (sum)", *results, *(f"preempt x SRTF {s}" for s in TUNED_ON)])
        + " | replay x las |",
        "|---" * (len(results) + len(TUNED_ON) + 3) + "|",
    ]
    for name in sorted(
        (c for c in CANDIDATES if all(c in results[s] for s in TUNED_ON)),
        key=lambda c: total_score(results, c, vcs),
    ):
        per = [sum(score(results[s][name][vc], results[s]["srtf"][vc]) for vc in vcs) for s in results]
        pre = [pooled_preemptions_x_srtf(results, name, s, vcs) for s in TUNED_ON]
        replay = REPLAY_X_LAS.get(name)
        lines.append(
            f"| {name} | {total_score(results, name, vcs):.3f} | "
            + " | ".join([*(f"{x:.3f}" for x in per), *(f"{x:.2f}" for x in pre)])
            + f" | {'not measured' if replay is None else f'{replay:.2f}'} |"
        )
    lines += ["", "Every policy and knob setting, per VC:", "", HEADER]
    for setting, by_policy in results.items():
        for label, cells in by_policy.items():
            for vc, cell in cells.items():
                lines.append(row(setting, label, vc, cell, by_policy["srtf"][vc], by_policy["fifo"][vc]))
    return "\n".join(lines), chosen
