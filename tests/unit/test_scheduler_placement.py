"""Gang placement: all or nothing, consolidation and best fit, TPU slices, taints, preferences."""

from __future__ import annotations

from orchestrator.scheduler import GangRequest, JobStatus, Toleration
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool


def test_a_gang_that_does_not_fit_takes_nothing() -> None:
    h = Harness(cluster(gpu_pool(nodes=2)), "fifo")
    h.submit("small", gang(6))
    h.step()
    h.submit("big", gang(12))  # 2 + 8 = 10 free: not enough for 12
    result = h.step(explain=True)
    assert result.decisions == []
    assert h.free("a100") == [2.0, 8.0]  # nothing was held back for the waiting gang
    assert h.state.jobs["big"].status is JobStatus.PENDING
    assert result.waits["big"].message == "needs 12 nvidia-a100-40gb as one gang; pool a100 has 10 free"


def test_consolidation_whole_nodes_then_best_fit_for_the_remainder() -> None:
    h = Harness(cluster(gpu_pool(nodes=3)), "fifo")
    h.submit("a", gang(5))
    h.submit("b", gang(3))
    assert h.placed(h.step()) == {"a": ((0, 5),), "b": ((0, 3),)}  # b fills node 0: best fit
    h.submit("c", gang(10))  # one whole node plus 2 on the emptiest node that fits 2
    assert h.placed(h.step()) == {"c": ((1, 8), (2, 2))}
    h.submit("d", gang(6))  # node 2 has 6 free, exactly
    assert h.placed(h.step()) == {"d": ((2, 6),)}


def test_best_fit_prefers_the_node_with_least_room() -> None:
    h = Harness(cluster(gpu_pool(nodes=3)), "fifo")
    h.submit("x", gang(5))
    h.submit("y", gang(3))
    h.step()  # node 0 is full
    h.submit("z", gang(2))
    h.step()
    h.submit("w", gang(5))  # node 1 has 6 free, node 2 has 8: best fit is node 1
    assert h.placed(h.step()) == {"w": ((1, 5),)}


def test_a_fragmented_pool_makes_a_gang_wait_with_the_reason() -> None:
    h = Harness(cluster(gpu_pool(nodes=2)), "fifo")
    h.submit("a", gang(3))
    h.submit("b", gang(3))  # best fit: both on node 0 -> node 0 has 2 free
    h.step()
    h.submit("c", gang(5))  # node 1 (8 free) takes it
    h.step()
    h.submit("d", gang(4))  # 2 + 3 = 5 free in total, but no node has 4
    result = h.step(explain=True)
    assert result.waits["d"].message == (
        "needs 4 nvidia-a100-40gb as one gang; pool a100 has 5 free, too scattered for the gang "
        "(it needs 1 node, largest free block 3)"
    )


def test_several_gpus_per_worker_stay_whole() -> None:
    h = Harness(cluster(gpu_pool(nodes=2)), "fifo")
    h.submit("a", gang(6))
    h.step()
    h.submit("b", gang(8, per_worker=4))  # two workers of 4: node 0 has 2 free, so both go to node 1
    assert h.placed(h.step()) == {"b": ((1, 2),)}


TPU = {
    "name": "v5p",
    "accelerator": "tpu-v5p-slice",
    "topology": "4x4x4",
    "accelerators_per_node": 4,
    "nodes": 32,
    "cpus_per_node": 208,
}
CPUS = {"name": "cpu", "nodes": 1, "cpus_per_node": 8}


def slice_job(**extra: object) -> GangRequest:
    return GangRequest(
        workers=16,
        accelerators_per_worker=4,
        cpus_per_worker=100,
        accelerators=("tpu-v5p-slice",),
        topology="4x4x4",
        **extra,
    )  # type: ignore[arg-type]


def test_a_multi_host_tpu_slice_is_placed_whole_on_one_slice() -> None:
    h = Harness(cluster(TPU), "fifo")
    h.submit("s1", slice_job())
    h.submit("s2", slice_job())
    h.submit("s3", slice_job())
    result = h.step(explain=True)
    placed = h.placed(result)
    assert placed["s1"] == tuple((n, 1) for n in range(16))
    assert placed["s2"] == tuple((n, 1) for n in range(16, 32))
    assert result.waits["s3"].message.startswith(
        "needs 64 tpu-v5p-slice (4x4x4 slice) as one gang; pool v5p has 0 of 2 4x4x4 slices wholly free"
    )


def test_a_freed_slice_is_reused_whole_and_cpu_jobs_stay_off_tpu_hosts() -> None:
    v5e = {
        "name": "v5e",
        "accelerator": "tpu-v5-lite-podslice",
        "topology": "4x4",
        "accelerators_per_node": 4,
        "nodes": 8,
        "cpus_per_node": 112,
    }
    h = Harness(cluster(v5e, CPUS), "las")
    job = GangRequest(workers=4, accelerators_per_worker=4, accelerators=("tpu-v5-lite-podslice",))
    for name in ("a", "b", "c"):
        h.submit(name, job)
    h.submit("cpu-work", GangRequest(workers=2, cpus_per_worker=2))
    placed = h.placed(h.step())
    assert placed["a"] == ((0, 1), (1, 1), (2, 1), (3, 1))
    assert placed["b"] == ((4, 1), (5, 1), (6, 1), (7, 1))
    assert "c" not in placed
    assert {d.job_id: d.placement.pool for d in h.step().placements} == {}
    assert h.state.jobs["cpu-work"].placement.pool == "cpu"  # type: ignore[union-attr]
    h.state.finish("b", 5.0)
    assert h.placed(h.step(at=5.0)) == {"c": ((4, 1), (5, 1), (6, 1), (7, 1))}


def test_a_slice_job_of_the_wrong_size_never_fits() -> None:
    h = Harness(cluster(TPU), "fifo")
    h.submit("odd", GangRequest(workers=8, accelerators_per_worker=4, accelerators=("tpu-v5p-slice",)))
    wait = h.step(explain=True).waits["odd"]
    assert wait.permanent
    assert "pool v5p has 4x4x4 slices of 64 chips on 16 hosts" in wait.message


def tainted(name: str, *taints: dict[str, str], **extra: object) -> dict[str, object]:
    return gpu_pool(name, nodes=1, per_node=4, accelerator="nvidia-t4", taints=list(taints), **extra)


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TEAM_TAINT = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}


def test_taints_keep_jobs_off_pools_unless_tolerated() -> None:
    spec = cluster(
        tainted("t4", GPU_TAINT, TEAM_TAINT), tainted("t4-spot", GPU_TAINT, TEAM_TAINT, SPOT_TAINT)
    )
    h = Harness(spec, "las")
    h.submit("plain", gang(4, "nvidia-t4"))
    h.submit("team", gang(4, "nvidia-t4", tolerations=("dedicated",)))
    h.submit("team-2", gang(4, "nvidia-t4", tolerations=("dedicated=ml:NoSchedule",)))
    h.submit("spot-ok", gang(4, "nvidia-t4", tolerations=("dedicated", "cloud.google.com/gke-spot=true")))
    h.submit("cpu-job", GangRequest(workers=1, cpus_per_worker=1, tolerations=(Toleration("dedicated"),)))
    result = h.step(explain=True)
    placed = {d.job_id: d.placement.pool for d in result.placements}
    # GPU jobs tolerate nvidia.com/gpu implicitly (as with Kubernetes' ExtendedResourceToleration).
    assert placed == {"team": "t4", "spot-ok": "t4-spot"}
    plain = result.waits["plain"]
    assert plain.permanent and [r.text for r in plain.reasons] == [
        "pool t4 is tainted dedicated=ml:NoSchedule, not tolerated",
        "pool t4-spot is tainted dedicated=ml:NoSchedule, not tolerated",
    ]
    # team-2 tolerates the team taint but not spot: it waits for t4 rather than use t4-spot.
    assert result.waits["team-2"].message.startswith("needs 4 nvidia-t4 as one gang; pool t4 has 0 free")
    assert result.waits["cpu-job"].reasons[0].text == (
        "pool t4 is tainted nvidia.com/gpu=present:NoSchedule, not tolerated"
    )


def test_prefer_no_schedule_pools_are_used_last() -> None:
    soft = {"key": "team", "value": "infra", "effect": "PreferNoSchedule"}
    h = Harness(cluster(tainted("reserved", soft), tainted("shared")), "fifo")
    h.submit("a", gang(4, "nvidia-t4"))
    h.submit("b", gang(4, "nvidia-t4"))
    placed = {d.job_id: d.placement.pool for d in h.step().placements}
    assert placed == {"a": "shared", "b": "reserved"}


def test_acceptable_accelerators_are_tried_in_order() -> None:
    spec = cluster(gpu_pool("h100", nodes=1, accelerator="nvidia-h100-80gb"), gpu_pool("a100", nodes=1))
    h = Harness(spec, "fifo")
    either = ("nvidia-h100-80gb", "nvidia-a100-40gb")
    h.submit("first", gang(8, either))
    h.submit("second", gang(8, either))
    h.submit("third", gang(8, either))
    result = h.step(explain=True)
    assert {d.job_id: d.placement.accelerator for d in result.placements} == {
        "first": "nvidia-h100-80gb",
        "second": "nvidia-a100-40gb",
    }
    assert result.waits["third"].message == (
        "needs 8 nvidia-h100-80gb or nvidia-a100-40gb as one gang; pool h100 has 0 free; pool a100 has 0 free"
    )


def test_node_selector_and_cpu_memory_limits() -> None:
    spec = cluster(
        gpu_pool("a", nodes=2, cpus_per_node=16, memory_per_node="64Gi", labels={"zone": "x"}),
        gpu_pool("b", nodes=2, cpus_per_node=16, memory_per_node="64Gi", labels={"zone": "y"}),
    )
    h = Harness(spec, "fifo")
    h.submit(
        "y-only",
        GangRequest(
            workers=2,
            accelerators_per_worker=1,
            cpus_per_worker=4,
            accelerators=("nvidia-a100-40gb",),
            node_selector=(("zone", "y"),),
        ),
    )
    # 40Gi per worker: memory, not GPUs, limits a node to one worker, so the gang takes two nodes.
    h.submit(
        "fat",
        GangRequest(
            workers=2,
            accelerators_per_worker=1,
            memory_per_worker=40 * 2**30,
            accelerators=("nvidia-a100-40gb",),
        ),
    )
    placed = {d.job_id: d.placement for d in h.step().placements}
    assert (placed["y-only"].pool, placed["y-only"].shares) == ("b", ((0, 2),))
    assert (placed["fat"].pool, placed["fat"].shares) == ("a", ((0, 1), (1, 1)))
    assert h.state.capacity.pools["b"].free_cpu == [8.0, 16.0]
    assert h.state.capacity.pools["a"].free_mem == [24 * 2**30, 24 * 2**30]


def test_toleration_parsing() -> None:
    assert Toleration.parse("k") == Toleration("k")
    assert Toleration.parse("k=v:NoSchedule") == Toleration("k", "v", "NoSchedule")
    assert Toleration.parse("k:PreferNoSchedule") == Toleration("k", None, "PreferNoSchedule")
