"""Node pools from ConfigMaps and Nodes, and the placement book over the scheduler."""

from __future__ import annotations

import pytest

from orchestrator.backends.k8s.placement import NO_POOLS, PlacementBook, decide_once
from orchestrator.backends.k8s.pools import assumed_pool, cluster_from_configmaps, pools_from_nodes
from orchestrator.errors import SpecError
from orchestrator.scheduler import ClusterSpec, ManualClock, NodePool, Place, Wait
from orchestrator.spec import validate_spec_data
from orchestrator.testing import builders as b

pytestmark = pytest.mark.k8s


def gpu_spec(name: str, workers: int, **kw: object) -> object:
    return validate_spec_data(b.spec_data(name, workers=workers, gpus=1, accelerator="nvidia-a100-40gb", **kw))


def test_configmaps_add_up_and_the_first_keeps_queues() -> None:
    a = b.pool_configmap("a", "ops", [b.gpu_pool("a100")], queues=[{"name": "team"}])
    t = b.pool_configmap("t", "ops", [b.tpu_pool("v5p")])
    cluster = cluster_from_configmaps([t, a])
    assert cluster is not None
    assert [p.name for p in cluster.pools] == ["a100", "v5p"]
    assert "team" in cluster.queue_by_name
    assert cluster_from_configmaps([]) is None


def test_a_malformed_configmap_is_named_with_the_field() -> None:
    bad = b.pool_configmap("broken", "ops", [{"name": "x", "accelerator": "nvidia-l4", "nodes": 1}])
    with pytest.raises(SpecError) as info:
        cluster_from_configmaps([bad])
    text = info.value.render()
    assert "configmap ops/broken" in text and "accelerators_per_node" in text
    missing = {"metadata": {"name": "empty", "namespace": "ops"}, "data": {}}
    with pytest.raises(SpecError, match="ops/empty"):
        cluster_from_configmaps([missing])


def test_pools_from_gke_nodes() -> None:
    nodes = [
        b.node("a-1", "a100", gpu="nvidia-tesla-a100", gpus=8, cpu="94", memory="640Gi",
               taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                       {"key": "team", "value": "x", "effect": "NoSchedule"}]),
        b.node("a-2", "a100", gpu="nvidia-tesla-a100", gpus=8, cpu="94", memory="640Gi"),
        b.node("a-3", "a100", gpu="nvidia-tesla-a100", gpus=8, ready=False),
        *[b.node(f"v-{i}", "v5p", tpu="tpu-v5p-slice", topology="2x2x2", chips=4, cpu="207500m") for i in range(4)],
        b.node("c-1", "cpu", cpu="16"),
        {"metadata": {"name": "unlabelled", "labels": {}}},
    ]
    pools = {p.name: p for p in pools_from_nodes(nodes)}
    assert set(pools) == {"a100", "v5p", "cpu"}
    a100 = pools["a100"]
    assert (a100.accelerator, a100.nodes, a100.accelerators_per_node, a100.cpus_per_node) == (
        "nvidia-a100-40gb", 2, 8, 94.0)
    assert [str(t) for t in a100.taints] == ["team=x:NoSchedule"]  # GKE's device taint is left out
    assert a100.labels == {"cloud.google.com/gke-nodepool": "a100"}
    v5p = pools["v5p"]
    assert (v5p.topology, v5p.hosts_per_slice, v5p.cpus_per_node) == ("2x2x2", 2, 207.5)
    assert pools["cpu"].accelerator == "cpu"


def test_a_configmap_pool_wins_over_the_same_pool_from_nodes() -> None:
    from_nodes = pools_from_nodes([b.node("a-1", "a100", gpu="nvidia-tesla-a100", gpus=8)])
    cluster = cluster_from_configmaps([b.pool_configmap("p", "ops", [b.gpu_pool("a100", nodes=5)])], from_nodes)
    assert cluster is not None and cluster.pool_by_name["a100"].nodes == 5


def test_assumed_pool_just_fits() -> None:
    s = validate_spec_data(b.spec_data("t", workers=4, gpus=4, accelerator="tpu-v5p-slice", topology="2x2x4"))
    pool = assumed_pool(s)
    assert (pool.topology, pool.hosts_per_slice, pool.accelerators_per_node) == ("2x2x4", 4, 4)
    assert isinstance(decide_once(ClusterSpec(pools=[pool]), s), Place)
    cpu = assumed_pool(validate_spec_data(b.spec_data("c", workers=3, cpus=1.5)))
    assert (cpu.accelerator, cpu.nodes, cpu.cpus_per_node) == ("cpu", 3, 2.0)


CLUSTER = ClusterSpec(pools=[NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=2, accelerators_per_node=8)])


def test_the_book_places_once_and_answers_the_same_again() -> None:
    book = PlacementBook(CLUSTER, clock=ManualClock(0.0))
    first, others = book.place("ns/a", gpu_spec("a", 8))
    assert isinstance(first, Place) and others == []
    again, _ = book.place("ns/a", gpu_spec("a", 8))
    assert again == Place("ns/a", first.placement)
    assert book.usage() == {"a100": ("nvidia-a100-40gb", 16.0, 8.0)}


def test_a_waiting_job_is_placed_by_the_pass_that_follows_a_release() -> None:
    book = PlacementBook(CLUSTER, clock=ManualClock(0.0))
    assert isinstance(book.place("ns/a", gpu_spec("a", 16))[0], Place)
    wait, _ = book.place("ns/b", gpu_spec("b", 8))
    assert isinstance(wait, Wait) and not wait.permanent
    assert "pool a100 has 0 free" in wait.message
    assert book.waiting() == ["ns/b"]
    assert book.release("ns/a") is True
    placed, _ = book.place("ns/b", gpu_spec("b", 8))
    assert isinstance(placed, Place) and book.waiting() == []


def test_too_large_is_a_permanent_wait_in_the_schedulers_words() -> None:
    wait, _ = PlacementBook(CLUSTER).place("ns/huge", gpu_spec("huge", 32))
    assert isinstance(wait, Wait) and wait.permanent
    assert "needs 32 nvidia-a100-40gb as one gang; pool a100 has 16 in total" in wait.message


def test_restored_jobs_hold_their_pool_before_others_are_placed() -> None:
    book = PlacementBook(CLUSTER, clock=ManualClock(0.0))
    book.restore("ns/old", gpu_spec("old", 16), "a100")
    assert book.placed("ns/old") == "a100"
    wait, _ = book.place("ns/new", gpu_spec("new", 1))
    assert isinstance(wait, Wait)


def test_new_pools_keep_placed_jobs_and_place_waiting_ones() -> None:
    book = PlacementBook(CLUSTER, clock=ManualClock(0.0))
    book.place("ns/a", gpu_spec("a", 16))
    book.place("ns/b", gpu_spec("b", 8))
    bigger = ClusterSpec(pools=[*CLUSTER.pools, NodePool(name="more", accelerator="nvidia-a100-40gb", nodes=1,
                                                         accelerators_per_node=8)])
    book.set_cluster(bigger)
    assert book.placed("ns/a") == "a100" and book.waiting() == ["ns/b"]
    placed, _ = book.place("ns/b", gpu_spec("b", 8))
    assert isinstance(placed, Place) and placed.placement.pool == "more"


def test_a_changed_spec_is_queued_anew_and_no_pools_is_said_plainly() -> None:
    book = PlacementBook(None)
    wait, _ = book.place("ns/a", gpu_spec("a", 4))
    assert isinstance(wait, Wait) and wait.reasons == (NO_POOLS,)
    book.set_cluster(CLUSTER)
    placed, _ = book.place("ns/a", gpu_spec("a", 2))
    assert isinstance(placed, Place) and placed.placement.shares == ((0, 2),)


def test_an_unknown_priority_class_is_a_permanent_wait() -> None:
    wait, _ = PlacementBook(CLUSTER).place("ns/p", gpu_spec("p", 1, resources={
        "workers": 1, "gpus_per_worker": 1, "accelerator": "nvidia-a100-40gb", "priority": "urgent"}))
    assert isinstance(wait, Wait) and wait.permanent and "urgent" in wait.message
