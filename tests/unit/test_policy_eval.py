"""The leave-one-VC-out selection of bench/policy_eval.py on hand-made figures: the fold rules
(mean, minimax, regret), the admissibility constraint, and the verdict that decides whether the
rule's pick replaces the shipped default (more targets met held out, none lost)."""

from __future__ import annotations

import pytest

from bench import policy_eval as pe
from bench.policy_eval import Cell

VCS = ("a", "b", "c")


def cell(avg: float, p95: float | None = None, preemptions: int = 0, jobs: int = 10) -> Cell:
    return Cell(jobs, avg, avg if p95 is None else p95, preemptions)


def figures(by_policy: dict[str, dict[str, Cell]]) -> tuple[pe.Results, dict]:
    """The same cells in every setting the rule is tuned on; SRTF 100 s and FIFO 400 s everywhere,
    one preemption per 10 jobs for SRTF; each job's completion time is the cell's average."""
    base = {"srtf": {vc: cell(100.0, preemptions=1) for vc in VCS}, "fifo": {vc: cell(400.0) for vc in VCS}}
    results: pe.Results = {}
    jcts: dict = {}
    for setting in pe.TUNED_ON:
        results[setting] = {}
        jcts[setting] = {}
        for label, cells in {**base, **by_policy}.items():
            pooled = [c for vc, c in cells.items() if vc != "all"]
            jobs = sum(c.jobs for c in pooled)
            all_cell = Cell(
                jobs, sum(c.avg_jct_s * c.jobs for c in pooled) / jobs, max(c.p95_jct_s for c in pooled), 0
            )
            results[setting][label] = {**cells, "all": all_cell}
            jcts[setting][label] = {vc: [c.avg_jct_s] * c.jobs for vc, c in cells.items()}
    return results, jcts


@pytest.fixture(autouse=True)
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe, "REPLAY_X_LAS", {"steady": 1.0, "spiky": 1.0, "thrash": 1.0, "slow": 1.0})


def test_the_fold_rules_differ_where_one_candidate_is_better_on_average_and_another_in_the_worst_case() -> (
    None
):
    # steady: 1.2x SRTF on every VC (score 1.2); spiky: 1.0x on a and b, 1.32x on c (score 1.32
    # plus the 0.07 over 1.25: 1.39)
    results, _ = figures(
        {
            "steady": {vc: cell(120.0) for vc in VCS},
            "spiky": {"a": cell(100.0), "b": cell(100.0), "c": cell(132.0)},
        }
    )
    both = ["steady", "spiky"]
    # the fold of a (tuned on b and c): spiky sums 1.0 + 1.39 = 2.39 per setting, steady 2.4, so
    # the mean rule takes spiky; its worst VC (1.39) is worse than steady's (1.2), so minimax takes
    # steady; its worst excess over the best candidate on a VC (c: 0.19) is below steady's (b: 0.2),
    # so regret takes spiky. The fold of c (tuned on a and b) takes spiky by every rule.
    assert pe.leave_one_out(results, both, VCS) == {"a": "spiky", "b": "spiky", "c": "spiky"}
    assert pe.leave_one_out(results, both, VCS, "minimax") == {"a": "steady", "b": "steady", "c": "spiky"}
    assert pe.leave_one_out(results, both, VCS, "regret") == {"a": "spiky", "b": "spiky", "c": "spiky"}


def test_a_candidate_over_the_preemption_or_replay_limit_is_not_chosen() -> None:
    results, _ = figures(
        {
            "thrash": {vc: cell(100.0, preemptions=3) for vc in VCS},  # 3x SRTF's preemptions
            "slow": {vc: cell(100.0) for vc in VCS},
            "steady": {vc: cell(120.0) for vc in VCS},
        }
    )
    pe.REPLAY_X_LAS["slow"] = 2.5  # over the 2x replay limit
    assert not pe.admissible(results, "thrash", VCS) and not pe.admissible(results, "slow", VCS)
    assert set(pe.leave_one_out(results, ["thrash", "slow", "steady"], VCS).values()) == {"steady"}


def test_the_verdict_counts_targets_gained_and_lost() -> None:
    results, jcts = figures(
        {
            "steady": {vc: cell(120.0) for vc in VCS},
            # 1.3x SRTF on c (average target lost), p95 1.4x there (met), 1.0x elsewhere
            "spiky": {"a": cell(100.0), "b": cell(100.0), "c": cell(130.0, p95=140.0)},
        }
    )
    old = {vc: "steady" for vc in VCS}
    new = {"a": "spiky", "b": "spiky", "c": "spiky"}
    was, now, gained, lost, worse = pe.verdict(results, jcts, old, new)
    settings = len(pe.TUNED_ON)
    # steady meets all four targets (0.3x FIFO, no preemptions) on a, b, c and all, in each setting
    assert was == settings * 4 * 4
    assert now == was - settings  # c's average target, in each setting
    assert gained == []
    assert lost == [f"{s} c avg <= 1.25x SRTF: 1.200 -> 1.300" for s in pe.TUNED_ON]
    assert worse == []
    # the other way round, c's average is gained; and a target missed by both counts as worse
    # only past WORSE_BY: 1.3x -> 1.33x SRTF on c
    assert pe.verdict(results, jcts, new, old)[2] == [
        f"{s} c avg <= 1.25x SRTF: 1.300 -> 1.200" for s in pe.TUNED_ON
    ]
    worst, _ = figures({"spikier": {"a": cell(100.0), "b": cell(100.0), "c": cell(133.0, p95=140.0)}})
    both = {s: {**results[s], **worst[s]} for s in results}
    jcts_both = {
        s: {**jcts[s], "spikier": {vc: [c.avg_jct_s] * c.jobs for vc, c in worst[s]["spikier"].items()}}
        for s in jcts
    }
    assert pe.verdict(both, jcts_both, new, {vc: "spikier" for vc in VCS})[4] == [
        f"{s} c avg <= 1.25x SRTF: 1.300 -> 1.330" for s in pe.TUNED_ON
    ]
    assert pe.targets_met(cell(130.0, p95=140.0), cell(100.0), cell(400.0)) == (False, True, True, True)
