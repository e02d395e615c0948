"""Policies: fifo blocks, sjf/srtf read durations, las backfills and preempts by attained service;
bounded backfill and aging keep a large job from starving under a stream of small ones."""

from __future__ import annotations

import pytest

from orchestrator.errors import UsageError
from orchestrator.scheduler import GangRequest, get_policy
from orchestrator.scheduler.cluster import cluster_from_data
from orchestrator.scheduler.policies import Las
from orchestrator.simulate import Partition, TraceJob, replay
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool

# Thresholds of 1 and 10 GPU-hours (the default's are 8 and 80): the figures below use them.
LAS_1H = Las(thresholds=(3600.0, 36000.0))


def test_policies_by_name() -> None:
    assert [get_policy(n).name for n in ("fifo", "sjf", "srtf", "las", "default", None)] == [
        "fifo",
        "sjf",
        "srtf",
        "las",
        "adaptive",
        "adaptive",
    ]
    with pytest.raises(UsageError, match="unknown scheduling policy 'lifo'"):
        get_policy("lifo")


def test_fifo_blocks_the_queue_behind_its_head() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "fifo")
    h.submit("running", gang(4))
    h.step()
    h.submit("head", gang(8))
    h.submit("small", gang(2))
    result = h.step(at=1, explain=True)
    assert result.decisions == []
    assert result.waits["small"].message == (
        "blocked behind head at the head of queue default (fifo does not backfill)"
    )


def test_las_backfills_behind_a_blocked_head() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), LAS_1H)
    h.submit("running", gang(4))
    h.step()
    h.submit("head", gang(8))
    h.submit("small", gang(2))
    result = h.step(at=1)
    assert [(d.job_id, d.backfill) for d in result.placements] == [("small", True)]
    # Next pass due when "running" (4 GPUs) reaches 3600 GPU-s and leaves band 0, before the
    # head's backfill bound (t=3601).
    assert result.next_wakeup == 900


def test_sjf_orders_by_true_duration_and_needs_it() -> None:
    h = Harness(cluster(gpu_pool(nodes=1, per_node=1)), "sjf")
    h.submit("long", gang(1), duration=500)
    h.submit("short", gang(1), duration=5)
    assert [d.job_id for d in h.step().placements] == ["short"]
    h.submit("unknown", gang(1))
    with pytest.raises(UsageError, match="needs true job durations"):
        h.step(at=1)


def test_srtf_preempts_the_job_with_more_remaining_time() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "srtf")
    h.submit("long", gang(8), duration=1000)
    h.step()
    h.submit("short", gang(4), duration=50)
    result = h.step(at=100)  # long has 900 s left
    assert [(p.job_id, p.cause) for p in result.preemptions] == [("long", "policy")]
    assert result.next_wakeup == 100  # again at once: the victim may fit elsewhere


def test_las_bands_by_attained_accelerator_seconds() -> None:
    policy = Las(thresholds=(100.0,))
    h = Harness(cluster(gpu_pool(nodes=1)), policy)  # type: ignore[arg-type]
    h.submit("old", gang(8))
    h.step()
    assert h.scheduler.schedule(h.state).next_wakeup is None  # nothing waits: no wake-up needed
    h.submit("new", gang(8))
    # 8 GPUs x 12.5 s = 100 GPU-seconds: "old" leaves band 0 at t=12.5 and "new" may preempt it.
    assert h.step(at=10).next_wakeup == 12.5
    result = h.step(at=12.5)
    assert [(p.job_id, p.cause) for p in result.preemptions] == [("old", "policy")]
    assert [d.job_id for d in result.placements] == ["new"]


def test_las_does_not_preempt_within_a_band() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "las")
    h.submit("a", gang(8))
    h.step()
    h.submit("b", gang(8))
    assert h.step(at=60).decisions == []  # a has 480 GPU-s, still band 0 (< 3600)


def stream(large_gpus: int, large_duration: float, horizon: float) -> list[TraceJob]:
    """1-GPU jobs of 400 s every 50 s keep 8 GPUs busy; a large job arrives at t=1000."""
    jobs = [TraceJob(f"s{i}", i, i * 50.0, 400.0, 1) for i in range(int(horizon / 50))]
    jobs.append(TraceJob("large", 0, 1000.0, large_duration, large_gpus))
    return sorted(jobs, key=lambda j: j.submit)


def run_stream(policy: str | Las, large_duration: float, horizon: float = 40_000, **kwargs: float):
    spec = cluster_from_data({"pools": [gpu_pool(nodes=1)]})
    part = Partition(
        "p",
        spec,
        stream(8, large_duration, horizon),
        request_for=lambda j: GangRequest(workers=j.gpus, accelerators_per_worker=1),
    )
    return replay(part, policy, **kwargs).state.jobs


def test_a_large_job_starves_under_sjf_but_not_under_las() -> None:
    sjf = run_stream("sjf", 1000, horizon=20_000)
    assert sjf["large"].first_start >= 20_000  # only once the stream of shorter jobs ends
    # 8 GPUs x 400 s stays in band 0: once started it runs to the end.
    las = run_stream("las", 400, horizon=20_000, backfill_bound_s=600)
    started = las["large"].first_start
    assert started is not None and started <= 1000 + 600 + 1  # the backfill bound, not the stream
    assert las["large"].finished_at == pytest.approx(started + 400)


def test_aging_promotes_a_demoted_long_job_so_it_finishes() -> None:
    # The large job leaves band 0 after 450 s (3600 GPU-s), then new small jobs preempt it; aging
    # brings it back with a fresh service count, so it progresses 450 s at a time and finishes.
    jobs = run_stream(LAS_1H, 2000, horizon=40_000, backfill_bound_s=600)
    large = jobs["large"]
    assert large.preemptions >= 2
    assert large.finished_at is not None and large.finished_at < 20_000
    assert large.work_done == pytest.approx(2000)
