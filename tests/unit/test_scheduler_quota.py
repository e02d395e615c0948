"""Queues with quotas: nominal, borrowing from the cohort, lending limits, and reclaim."""

from __future__ import annotations

from typing import Any

from orchestrator.scheduler import Place, Preempt
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool

A100 = "nvidia-a100-40gb"


def two_teams(a: dict[str, Any] | None = None, b: dict[str, Any] | None = None, cohort: str | None = "ml"):
    return cluster(
        gpu_pool(nodes=2),
        queues=[
            {"name": "alpha", "cohort": cohort, "quotas": {A100: {"nominal": 8, **(a or {})}}},
            {"name": "beta", "cohort": cohort, "quotas": {A100: {"nominal": 8, **(b or {})}}},
        ],
    )


def test_within_nominal_then_borrowing_from_the_cohort() -> None:
    h = Harness(two_teams(), "las")
    h.submit("a1", gang(8, queue="alpha"))
    h.submit("a2", gang(8, queue="alpha"))
    result = h.step()
    assert [(d.job_id, d.borrowing) for d in result.placements] == [("a1", False), ("a2", True)]
    assert h.state.capacity.quota.used("alpha", A100) == 16
    assert h.state.capacity.quota.is_borrowing("alpha", A100)


def test_the_lender_reclaims_borrowed_quota_by_preemption() -> None:
    h = Harness(two_teams(), "las")
    h.submit("a1", gang(8, queue="alpha"))
    h.submit("a2", gang(8, queue="alpha"))
    h.step()
    h.clock.set(100)
    h.submit("b1", gang(8, queue="beta"))  # within beta's nominal 8: it takes its quota back
    result = h.step()
    assert result.decisions[0] == Preempt("a2", by="b1", cause="reclaim", lost_work=30 * 8)
    assert isinstance(result.decisions[1], Place) and result.decisions[1].job_id == "b1"
    assert not result.decisions[1].borrowing
    assert h.state.jobs["a2"].preemptions == 1 and "a2" in h.state.pending
    # a2 cannot come back: alpha would borrow again and the cohort has nothing left to lend.
    again = h.step(explain=True)
    assert again.decisions == []
    assert again.waits["a2"].message == (
        "needs 8 nvidia-a100-40gb as one gang; queue alpha is at its nvidia-a100-40gb quota "
        "(nominal 8, in use 8); cohort ml has 0 to lend"
    )


def test_borrowing_limit() -> None:
    h = Harness(two_teams(a={"borrowing_limit": 4}), "las")
    h.submit("a1", gang(8, queue="alpha"))
    h.submit("a2", gang(8, queue="alpha"))
    h.submit("a3", gang(4, queue="alpha"))
    result = h.step(explain=True)
    assert [(d.job_id, d.borrowing) for d in result.placements] == [("a1", False), ("a3", True)]
    assert result.waits["a2"].reasons[1].text == (
        "queue alpha is at its nvidia-a100-40gb quota (nominal 8, in use 8) and may borrow at most 4"
    )


def test_lending_limit_keeps_part_of_the_quota_for_its_owner() -> None:
    h = Harness(two_teams(b={"lending_limit": 4}), "las")
    h.submit("a1", gang(8, queue="alpha"))
    h.submit("a2", gang(8, queue="alpha"))
    h.submit("a3", gang(4, queue="alpha"))
    result = h.step(explain=True)
    assert [d.job_id for d in result.placements] == ["a1", "a3"]
    assert result.waits["a2"].reasons[1].text.endswith("cohort ml has 4 to lend")


def test_a_queue_without_cohort_stops_at_its_quota() -> None:
    h = Harness(two_teams(cohort=None), "las")
    h.submit("a1", gang(8, queue="alpha"))
    h.submit("a2", gang(1, queue="alpha"))
    result = h.step(explain=True)
    assert [d.job_id for d in result.placements] == ["a1"]
    assert result.waits["a2"].reasons[1].text == (
        "queue alpha is at its nvidia-a100-40gb quota (nominal 8, in use 8) and has no cohort to borrow from"
    )


def test_unknown_queue_waits_for_good() -> None:
    h = Harness(two_teams(), "las")
    h.submit("lost", gang(1, queue="gamma"))
    wait = h.step(explain=True).waits["lost"]
    assert wait.permanent
    assert wait.message == "queue gamma does not exist (queues: alpha, beta, default)"
