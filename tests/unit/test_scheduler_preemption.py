"""Preemption: victim order (priority, then least lost work), and checkpoint-and-requeue."""

from __future__ import annotations

from orchestrator.scheduler import JobStatus, Preempt, default_checkpoint_cost
from orchestrator.scheduler.cluster import cluster_from_data
from orchestrator.simulate import Partition, TraceJob, replay
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool


def test_lower_priority_goes_first_even_when_it_costs_more() -> None:
    h = Harness(cluster(gpu_pool(nodes=2)), "fifo")
    h.submit("low", gang(8, priority="low"))
    h.submit("normal", gang(4, priority="normal"))
    assert h.placed(h.step()) == {"normal": ((0, 4),), "low": ((1, 8),)}  # by priority, then best fit
    h.submit("urgent", gang(8, priority="high"))
    result = h.step(at=10)
    # Preempting "normal" (4 GPUs) would cost less, but "low" has the lower priority.
    assert result.preemptions == [Preempt("low", by="urgent", cause="priority", lost_work=30 * 8)]
    assert result.placements[0].job_id == "urgent" and result.placements[0].placement.shares == ((1, 8),)


def test_among_equals_the_victims_with_least_lost_work() -> None:
    h = Harness(cluster(gpu_pool(nodes=2)), "fifo")
    h.submit("wide", gang(8, priority="low"))  # node 0: a checkpoint of 8 GPUs costs 30 s x 8
    h.submit("one", gang(1, priority="low"))  # node 1: 7 s x 1
    h.submit("four", gang(4, priority="low"))  # node 1: 30 s x 4
    h.step()
    h.submit("urgent", gang(6, priority="high"))
    result = h.step(at=10)
    # Cheapest first: "one" (7) is not enough, "four" (120) is, and then "one" is not needed after all.
    # Preempting "wide" (240) would also work but loses more.
    assert [(p.job_id, p.lost_work) for p in result.preemptions] == [("four", 120.0)]
    assert result.placements[0].placement.shares == ((1, 6),)


def test_victims_the_gang_does_not_need_are_spared() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "fifo")
    h.submit("a", gang(2, priority="low"))
    h.submit("b", gang(4, priority="low"))
    h.step()
    h.submit("urgent", gang(5, priority="high"))  # 2 free: preempting a (2) is not enough, b (4) is
    result = h.step(at=1)
    assert [p.job_id for p in result.preemptions] == ["b"]


def test_no_preemption_for_equal_priority_under_fifo() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "fifo")
    h.submit("a", gang(8))
    h.step()
    h.submit("b", gang(8))
    assert h.step(at=5).decisions == []


def test_a_preempted_job_resumes_with_its_progress_and_pays_the_checkpoint() -> None:
    spec = cluster_from_data({"pools": [gpu_pool(nodes=1)]})
    jobs = [TraceJob("long", 2, 0.0, 1000.0, 8), TraceJob("urgent", 3, 400.0, 100.0, 8)]
    part = Partition(
        "p", spec, jobs, request_for=lambda j: gang(j.gpus, priority="high" if j.id == "urgent" else "low")
    )
    done = replay(part, "fifo")
    long, urgent = done.state.jobs["long"], done.state.jobs["urgent"]
    assert (urgent.first_start, urgent.finished_at) == (400.0, 500.0)
    assert long.preemptions == 1
    assert long.work_done == 1000.0 and long.restore_debt == 0.0
    # 400 s done before, then 30 s of checkpoint/restore, then the 600 s left: 500 + 630.
    assert long.finished_at == 500.0 + default_checkpoint_cost(8) + 600.0
    assert long.queued_total == 100.0 and long.status is JobStatus.FINISHED


def test_checkpoint_cost_model() -> None:
    assert [default_checkpoint_cost(g) for g in (1, 2, 8, 9, 64)] == [7.0, 30.0, 30.0, 60.0, 60.0]


def test_a_head_past_the_backfill_bound_preempts_the_run_backfilled_ahead_of_it() -> None:
    """Backfill never delays a head past the bound: a run backfilled since the head queued gives
    way (cause ``backfill-bound``), though it is in no worse band and of the same priority."""
    h = Harness(cluster(gpu_pool(nodes=1)), "las", backfill_bound_s=600)
    h.submit("running", gang(4))
    h.step()
    h.submit("head", gang(8))
    h.submit("small", gang(2))
    assert [(d.job_id, d.backfill) for d in h.step(at=10).placements] == [("small", True)]
    h.state.finish("running", 700)
    result = h.step(at=700)
    assert [(d.job_id, d.by, d.cause) for d in result.preemptions] == [("small", "head", "backfill-bound")]
    assert [d.job_id for d in result.placements] == ["head"]


def test_a_run_started_before_the_head_queued_is_not_a_backfill_bound_victim() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "las", backfill_bound_s=600)
    h.submit("running", gang(4))
    h.submit("small", gang(2))
    assert sorted(d.job_id for d in h.step().placements) == ["running", "small"]
    h.submit("head", gang(8))
    h.step(at=1)
    h.state.finish("running", 700)
    result = h.step(at=700)
    assert result.decisions == []
    assert h.state.jobs["head"].status is JobStatus.PENDING
