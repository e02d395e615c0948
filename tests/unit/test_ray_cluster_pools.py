"""A Ray cluster's nodes as the queue's pools: one pool per kind of node, gangs across its nodes.

The node dicts are shaped like ``ray.nodes()`` entries (what the queue actor reads): Ray's
``memory`` differs from node to node even on identical machines, and nodes started with
``--resources`` carry custom resources; neither may split a cluster into pools of one node.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from orchestrator.errors import SpecError
from orchestrator.execution.queue import REJOIN_S, QueueBook, cluster_from_nodes, ray_request
from orchestrator.scheduler import ClusterState, GangRequest, ManualClock, Place, Scheduler, Wait
from orchestrator.scheduler.cluster import cluster_from_data

GiB = 2**30
_ids = itertools.count(1)


def ray_node(
    cpus: float,
    memory: int = 4 * GiB,
    *,
    gpus: float = 0,
    kind: str | None = None,
    head: bool = False,
    **custom: float,
) -> dict[str, Any]:
    """One entry of ``ray.nodes()``."""
    number = next(_ids)
    resources: dict[str, Any] = {
        "memory": float(memory),
        "object_store_memory": float(memory // 4),
        f"node:10.0.0.{number}": 1.0,
        **custom,
    }
    if cpus:
        resources["CPU"] = float(cpus)
    if head:
        resources["node:__internal_head__"] = 1.0
    if gpus:
        resources["GPU"] = float(gpus)
    if kind:
        resources[f"accelerator_type:{kind}"] = 1.0
    return {
        "NodeID": f"{number:056x}",
        "Alive": True,
        "NodeManagerAddress": f"10.0.0.{number}",
        "NodeManagerHostname": f"host-{number}",
        "NodeManagerPort": 40000 + number,
        "ObjectManagerPort": 41000 + number,
        "MetricsExportPort": 42000 + number,
        "alive": True,
        "Resources": resources,
        "Labels": {"ray.io/node_id": f"{number:056x}"},
    }


def cpu_gang(workers: int, cpus: float, **extra: Any) -> GangRequest:
    return GangRequest(workers=workers, cpus_per_worker=cpus, **extra)


def one_pass(
    nodes: list[dict[str, Any]], *jobs: tuple[str, GangRequest]
) -> tuple[list[Place], dict[str, Wait]]:
    """The scheduler's pass over the cluster ``nodes`` make, with ``jobs`` queued in order."""
    cluster = cluster_from_nodes(nodes)
    state = ClusterState(cluster)
    for t, (job_id, request) in enumerate(jobs):
        state.submit(job_id, request, float(t))
    result = Scheduler(cluster, "fifo", ManualClock(10.0)).schedule(state, explain=True)
    return result.placements, result.waits


def book(*nodes: dict[str, Any]) -> QueueBook:
    now = [1000.0]
    b = QueueBook("default", lambda: now[0])
    now[0] += REJOIN_S  # past the restart grace: the queue admits
    b.nodes = list(nodes)
    return b


def three_one_cpu_nodes() -> list[dict[str, Any]]:
    """The issue's cluster: a head and two nodes of 1 CPU each; Ray measured each one's memory."""
    return [ray_node(1, 3_710_000_000, head=True), ray_node(1, 3_690_000_000), ray_node(1, 3_702_000_000)]


# -- (a) identical nodes whose memory Ray measured differently ------------------------------------


def test_identical_nodes_with_different_memory_are_one_pool() -> None:
    cluster = cluster_from_nodes(three_one_cpu_nodes())
    [pool] = cluster.pools
    assert (pool.name, pool.accelerator, pool.nodes, pool.cpus_per_node, pool.capacity) == (
        "ray-cpu",
        "cpu",
        3,
        1.0,
        3.0,
    )
    assert pool.memory_per_node == 3_710_000_000  # the largest node's; each node keeps its own
    assert [s.memory for s in pool.node_sizes or ()] == [3_710_000_000, 3_702_000_000, 3_690_000_000]


def test_a_two_worker_gang_spans_two_of_three_one_cpu_nodes() -> None:
    [place], waits = one_pass(three_one_cpu_nodes(), ("cnn", cpu_gang(2, 1)))
    assert waits == {}
    assert place.job_id == "cnn" and place.placement.pool == "ray-cpu"
    assert sorted(w for _, w in place.placement.shares) == [1, 1]  # one worker on each of two nodes
    assert len({n for n, _ in place.placement.shares}) == 2
    assert place.placement.describe().startswith("pool ray-cpu: ray-cpu-")
    # through the queue actor's logic, as `orchestrator submit --backend ray` meets it
    assert book(*three_one_cpu_nodes()).offer("cnn", cpu_gang(2, 1), 1.0) == {"action": "run"}


def test_a_gang_larger_than_the_nodes_together_can_never_start() -> None:
    answer = book(*three_one_cpu_nodes()).offer("big", cpu_gang(4, 1), 1.0)
    assert answer == {
        "action": "wait",
        "permanent": True,
        "reason": "needs 4 workers x 1 cpus as one gang; pool ray-cpu has 3 cpus in total",
    }


# -- (b) nodes that differ only in custom resources -----------------------------------------------


def test_nodes_that_differ_only_in_custom_resources_are_one_pool() -> None:
    nodes = [ray_node(1, head=True), ray_node(1, node_b=1), ray_node(1, node_c=1)]
    cluster = cluster_from_nodes(nodes)
    [pool] = cluster.pools
    assert (pool.name, pool.nodes, pool.node_sizes) == ("ray-cpu", 3, None)  # alike: no sizes of their own
    [place], waits = one_pass(nodes, ("cnn", cpu_gang(2, 1)))
    assert waits == {} and place.placement.shares == ((0, 1), (1, 1))
    assert book(*nodes).offer("cnn", cpu_gang(2, 1), 1.0) == {"action": "run"}


def test_nodes_that_differ_in_cpus_are_one_pool_each_with_its_size() -> None:
    nodes = [ray_node(4, 8 * GiB, node_a=1), ray_node(1, 2 * GiB, node_b=1), ray_node(2, 4 * GiB, node_c=1)]
    [pool] = cluster_from_nodes(nodes).pools
    assert (pool.nodes, pool.cpus_per_node, pool.capacity) == (3, 4.0, 7.0)
    assert [(s.cpus, s.memory) for s in pool.node_sizes or ()] == [
        (4.0, 8 * GiB),
        (2.0, 4 * GiB),
        (1.0, 2 * GiB),
    ]
    # 7 workers of 1 CPU fill every node; an eighth never fits
    [place], _ = one_pass(nodes, ("seven", cpu_gang(7, 1)))
    assert sorted(place.placement.shares) == [(0, 4), (1, 2), (2, 1)]


def test_the_pool_does_not_depend_on_the_order_ray_lists_its_nodes_in() -> None:
    nodes = [ray_node(4, 8 * GiB), ray_node(1, 2 * GiB), ray_node(2, 4 * GiB)]
    assert cluster_from_nodes(nodes) == cluster_from_nodes(list(reversed(nodes)))


# -- (c) each worker on one node ------------------------------------------------------------------


def test_workers_of_one_and_a_half_cpus_take_two_of_three_two_cpu_nodes() -> None:
    nodes = [ray_node(2, 4 * GiB), ray_node(2, 5 * GiB), ray_node(2, 6 * GiB)]
    [place], waits = one_pass(nodes, ("a", cpu_gang(2, 1.5)))
    assert waits == {} and sorted(w for _, w in place.placement.shares) == [1, 1]


def test_a_gang_with_enough_cpus_in_all_but_not_node_by_node_can_never_start() -> None:
    nodes = [ray_node(1, 2 * GiB), ray_node(2, 4 * GiB)]  # 3 CPUs for 2 x 1.5, but a 1-CPU node holds none
    places, waits = one_pass(nodes, ("a", cpu_gang(2, 1.5)))
    assert places == [] and waits["a"].permanent
    assert waits["a"].message == (
        "needs 2 workers x 1.5 cpus as one gang; pool ray-cpu has 3 cpus in total on 2 nodes, "
        "room for 1 such worker (a worker runs on one node)"
    )
    assert [r.code for r in waits["a"].reasons] == ["too-large"]


def test_a_worker_larger_than_every_node_is_refused_naming_the_largest_node() -> None:
    nodes = [ray_node(2, 4 * GiB), ray_node(2, 5 * GiB), ray_node(1, 6 * GiB)]  # 5 CPUs, none holds 3
    answer = book(*nodes).offer("wide", cpu_gang(1, 3), 1.0)
    assert answer == {
        "action": "wait",
        "permanent": True,
        "reason": (
            "one worker does not fit any node of pool ray-cpu (its largest node has 2 cpus, 6.0 GiB memory)"
        ),
    }


def test_memory_counts_node_by_node_too() -> None:
    nodes = [ray_node(4, 8 * GiB), ray_node(4, 2 * GiB)]  # a 3 GiB worker fits the first node only
    places, waits = one_pass(nodes, ("a", cpu_gang(2, 1, memory_per_worker=3 * GiB)))
    assert [p.placement.shares for p in places] == [((0, 2),)]
    places, waits = one_pass(nodes, ("b", cpu_gang(3, 1, memory_per_worker=3 * GiB)))
    assert places == [] and waits["b"].permanent
    assert waits["b"].message == (  # 10 GiB would hold 3 x 3 GiB only by splitting a worker
        "needs 3 workers x 1 cpus as one gang; pool ray-cpu has 8 cpus in total on 2 nodes, "
        "room for 2 such workers (a worker runs on one node)"
    )


def test_a_one_cpu_worker_is_not_split_across_two_half_free_nodes() -> None:
    nodes = [ray_node(2, 4 * GiB), ray_node(2, 5 * GiB)]
    cluster = cluster_from_nodes(nodes)
    state = ClusterState(cluster)
    scheduler = Scheduler(cluster, "fifo", ManualClock(10.0))
    state.submit("a", cpu_gang(2, 1.5), 0.0)
    state.apply(scheduler.schedule(state).decisions, 10.0)
    assert [cap.free for cap in state.capacity.pools.values()] == [[0.5, 0.5]]
    state.submit("b", cpu_gang(1, 1), 1.0)  # one CPU free in all, half on each node: it waits
    result = scheduler.schedule(state, explain=True)
    assert result.placements == [] and not result.waits["b"].permanent
    assert result.waits["b"].message == (
        "needs 1 worker x 1 cpus as one gang; pool ray-cpu has 1 cpus free, too scattered for the gang "
        "(it needs at least 1 node, largest free block 0.5)"
    )


# -- (d) GPU workers on GPU nodes of the type they ask for ----------------------------------------


def gpu_cluster() -> list[dict[str, Any]]:
    return [
        ray_node(16, 60 * GiB, head=True),
        ray_node(8, 90 * GiB, gpus=4, kind="A100"),
        ray_node(8, 95 * GiB, gpus=2, kind="A100"),
        ray_node(4, 30 * GiB, gpus=1, kind="T4"),
    ]


def test_gpu_nodes_form_one_pool_per_accelerator_type_apart_from_cpu_nodes() -> None:
    pools = {p.name: p for p in cluster_from_nodes(gpu_cluster()).pools}
    assert {name: (p.accelerator, p.nodes, p.capacity) for name, p in pools.items()} == {
        "ray-cpu": ("cpu", 1, 16.0),
        "ray-nvidia-a100": ("nvidia-a100", 2, 6.0),
        "ray-nvidia-t4": ("nvidia-t4", 1, 1.0),
    }
    assert [s.accelerators for s in pools["ray-nvidia-a100"].node_sizes or ()] == [4, 2]


def test_gpu_workers_go_only_to_nodes_of_the_type_they_ask_for() -> None:
    a100 = ray_request(
        GangRequest(
            workers=3, accelerators_per_worker=2, cpus_per_worker=1, accelerators=("nvidia-a100-40gb",)
        )
    )
    [place], waits = one_pass(gpu_cluster(), ("train", a100))
    assert waits == {} and place.placement.pool == "ray-nvidia-a100"
    assert place.placement.shares == ((0, 2), (1, 1))  # 2 workers on the 4-GPU node, 1 on the 2-GPU node
    # a fourth worker would need 8 A100s: the T4 node and the 16-CPU node do not count
    _, waits = one_pass(
        gpu_cluster(),
        (
            "big",
            ray_request(
                GangRequest(workers=4, accelerators_per_worker=2, accelerators=("nvidia-a100-40gb",))
            ),
        ),
    )
    assert waits["big"].permanent
    assert waits["big"].message == "needs 8 nvidia-a100 as one gang; pool ray-nvidia-a100 has 6 in total"


def test_a_small_gpu_gang_takes_the_node_that_fits_it_best() -> None:
    one = ray_request(GangRequest(workers=1, accelerators_per_worker=2, accelerators=("nvidia-a100-40gb",)))
    [place], _ = one_pass(gpu_cluster(), ("small", one))
    assert place.placement.shares == ((1, 1),)  # the 2-GPU node: the 4-GPU node stays whole


def test_a_gpu_gang_of_any_type_never_lands_on_cpu_nodes() -> None:
    anygpu = GangRequest(workers=7, accelerators_per_worker=1)
    _, waits = one_pass(gpu_cluster(), ("g", anygpu))
    assert waits["g"].permanent
    assert waits["g"].message == (
        "needs 7 nvidia-a100 as one gang; pool ray-nvidia-a100 has 6 in total; "
        "needs 7 nvidia-t4 as one gang; pool ray-nvidia-t4 has 1 in total"
    )


def test_gpu_workers_need_the_cpus_of_their_node_too() -> None:
    nodes = [ray_node(8, 90 * GiB, gpus=4, kind="A100"), ray_node(2, 90 * GiB, gpus=4, kind="A100")]
    request = ray_request(
        GangRequest(
            workers=4, accelerators_per_worker=1, cpus_per_worker=2, accelerators=("nvidia-a100-40gb",)
        )
    )
    [place], _ = one_pass(nodes, ("g", request))
    assert place.placement.shares == ((0, 4),)
    _, waits = one_pass(
        nodes,
        (
            "h",
            ray_request(
                GangRequest(
                    workers=6,
                    accelerators_per_worker=1,
                    cpus_per_worker=2,
                    accelerators=("nvidia-a100-40gb",),
                )
            ),
        ),
    )
    assert waits["h"].message == (
        "needs 6 nvidia-a100 as one gang; pool ray-nvidia-a100 has 8 in total on 2 nodes, "
        "room for 5 such workers (a worker runs on one node)"
    )


def test_tpu_hosts_are_grouped_by_type_and_a_cpu_less_head_is_left_out() -> None:
    nodes = [
        ray_node(0, 2 * GiB, head=True),
        ray_node(8, 40 * GiB, gpus=0, kind="TPU-V5LITEPOD", TPU=4),
        ray_node(8, 41 * GiB, kind="TPU-V5LITEPOD", TPU=4),
        ray_node(8, 41 * GiB, kind="TPU-V4", TPU=4),
    ]
    pools = {p.name: (p.accelerator, p.nodes) for p in cluster_from_nodes(nodes).pools}
    assert pools == {"ray-tpu-v5litepod": ("tpu-v5litepod", 2), "ray-tpu-v4": ("tpu-v4", 1)}


# -- (e) what runs holds its nodes ----------------------------------------------------------------


def test_a_second_gang_waits_while_the_first_holds_the_nodes_and_says_why() -> None:
    b = book(*three_one_cpu_nodes())
    assert b.offer("first", cpu_gang(2, 1), 1.0) == {"action": "run"}
    assert b.offer("second", cpu_gang(2, 1), 2.0) == {
        "action": "wait",
        "permanent": False,
        "reason": "needs 2 workers x 1 cpus as one gang; pool ray-cpu has 1 cpus free",
    }
    # the node left over takes a one-worker job (backfill); then nothing is free on any node
    assert b.offer("third", cpu_gang(1, 1), 3.0) == {"action": "run"}
    assert b.offer("fourth", cpu_gang(1, 1), 4.0)["reason"] == (
        "needs 1 worker x 1 cpus as one gang; pool ray-cpu has 0 cpus free; "
        "1 job queued ahead of it by policy adaptive"
    )
    rows = {r.job_id: (r.state, r.detail) for r in b.rows()}
    assert rows["first"] == ("running", "on pool ray-cpu: ray-cpu-0 (1), ray-cpu-1 (1)")
    assert rows["third"] == ("running", "on pool ray-cpu: ray-cpu-2 (1)")
    assert rows["second"][0] == rows["fourth"][0] == "waiting"
    b.done("first")
    assert b.offer("second", cpu_gang(2, 1), 2.0) == {"action": "run"}


def test_running_jobs_hold_their_nodes_node_by_node() -> None:
    nodes = [ray_node(2, 4 * GiB), ray_node(2, 5 * GiB)]
    b = book(*nodes)
    assert b.offer("a", cpu_gang(2, 1.5), 1.0) == {"action": "run"}  # one worker on each node
    answer = b.offer("b", cpu_gang(1, 1), 2.0)  # 1 CPU free in all, 0.5 on each node
    assert answer["action"] == "wait" and not answer["permanent"]
    assert "too scattered for the gang" in answer["reason"]
    b.done("a")
    assert b.offer("b", cpu_gang(1, 1), 2.0) == {"action": "run"}


# -- the pool model itself --------------------------------------------------------------------------


def test_node_sizes_must_match_the_node_count_and_stay_within_the_per_node_sizes() -> None:
    base = {"name": "p", "accelerator": "cpu", "cpus_per_node": 2}
    cluster = cluster_from_data({"pools": [{**base, "nodes": 2, "node_sizes": [{"cpus": 1}, {}]}]})
    assert cluster.pools[0].capacity == 3.0  # a size left out is the per-node value
    with pytest.raises(SpecError) as err:
        cluster_from_data({"pools": [{**base, "nodes": 3, "node_sizes": [{"cpus": 1}, {}]}]})
    assert "2 node sizes for 3 nodes" in str(err.value.issues[0])
    with pytest.raises(SpecError) as err:
        cluster_from_data({"pools": [{**base, "nodes": 1, "node_sizes": [{"cpus": 4}]}]})
    assert "4 is more than cpus_per_node 2" in str(err.value.issues[0])
    assert err.value.issues[0].field_path == "pools[0].node_sizes[0].cpus"
