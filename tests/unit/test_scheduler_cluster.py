"""Cluster files: every example loads; mistakes are named by field and line; specs become requests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.scheduler import GangRequest, Toleration, load_cluster, request_from_spec
from orchestrator.scheduler.cluster import ClusterFileError
from orchestrator.scheduler.order import PendingOrder, RunningWatch
from orchestrator.scheduler.policies import Las, Policy, get_policy
from orchestrator.spec.models import JobSpec
from tests.conftest import REPO
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool

EXAMPLES = sorted((REPO / "examples" / "clusters").glob("*.yaml"))


def test_there_are_example_clusters() -> None:
    assert {p.name for p in EXAMPLES} >= {"gpu.yaml", "tpu.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_cluster_loads(path: Path) -> None:
    spec = load_cluster(path)
    assert spec.pools and all(p.capacity > 0 for p in spec.pools)
    assert "default" in spec.queue_by_name


def test_the_gpu_and_tpu_examples_have_what_the_docs_promise() -> None:
    gpu = load_cluster(REPO / "examples/clusters/gpu.yaml")
    kinds = {p.accelerator for p in gpu.pools}
    assert {"nvidia-a100-40gb", "nvidia-h100-80gb", "nvidia-t4", "cpu"} <= kinds
    assert any(p.spot and p.taints for p in gpu.pools)
    assert gpu.cohort_members("ml")
    tpu = load_cluster(REPO / "examples/clusters/tpu.yaml")
    v5p = tpu.pool_by_name["v5p-4x4x4"]
    assert (v5p.chips_per_slice, v5p.hosts_per_slice, v5p.nodes // v5p.hosts_per_slice) == (64, 16, 2)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "pools:\n  - name: a\n    accelerator: nvidia-t4\n    nodes: 2\n",
            ["pools[0].accelerators_per_node", "needs accelerators_per_node", "c.yaml:2"],
        ),
        ("pools:\n  - name: a\n    nodes: 2\n", ["pools[0].cpus_per_node", "a cpu pool needs cpus_per_node"]),
        (
            "pools:\n  - {name: v, accelerator: tpu-v5p-slice, topology: 4x4x4, accelerators_per_node: 4, nodes: 20}\n",
            ["pools[0].nodes", "20 nodes is not a whole number of 4x4x4 slices (16 hosts each)"],
        ),
        (
            "pools:\n  - {name: a, nodes: 1, cpus_per_node: 4}\n  - {name: a, nodes: 1, cpus_per_node: 4}\n",
            ["pools[1].name", "'a' is used twice"],
        ),
        (
            "pools:\n  - {name: a, nodes: 1, cpus_per_node: 4, taints: [{key: k, effect: Never}]}\n",
            ["pools[0].taints[0].effect", "NoSchedule"],
        ),
        (
            "pools:\n  - {name: a, nodes: 1, cpus_per_node: 4, acelerator: cpu}\n",
            ["pools[0].acelerator", "unknown field", "did you mean `accelerator`"],
        ),
        (
            "pools:\n  - {name: a, nodes: 1, cpus_per_node: 4}\nqueues:\n  - {name: q, priority: urgent}\n",
            ["queues[0].priority", "unknown priority class 'urgent'"],
        ),
        (
            "pools:\n  - {name: a, nodes: 1, cpus_per_node: 4}\nqueues:\n  - {name: q, quotas: {cpu: {nominal: 2, lending_limit: 5}}}\n",
            ["lending_limit 5.0 exceeds nominal 2.0"],
        ),
        ("pools: [\n", ["YAML syntax error"]),
        ("", ["the file is empty"]),
        ("- just\n- a list\n", ["the top level must be a mapping"]),
    ],
)
def test_cluster_file_mistakes_are_named(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ClusterFileError) as err:
        load_cluster(path)
    rendered = err.value.render()
    assert err.value.exit_code == 2 and rendered.startswith(f"invalid cluster file {path}")
    for needle in needles:
        assert needle in rendered


def test_missing_cluster_file() -> None:
    with pytest.raises(ClusterFileError, match="no such file"):
        load_cluster("/nonexistent/cluster.yaml")


def spec(**resources: object) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "model": {"type": "cnn"}, "resources": resources})


def test_request_from_a_job_spec() -> None:
    request = request_from_spec(
        spec(
            workers=16,
            gpus_per_worker=4,
            accelerator="tpu-v5p-slice",
            topology="4x4x4",
            queue="research",
            priority="high",
            tolerations=["google.com/tpu=present:NoSchedule"],
            memory="8Gi",
        )
    )
    assert request == GangRequest(
        workers=16,
        accelerators_per_worker=4.0,
        cpus_per_worker=1.0,
        memory_per_worker=8 * 2**30,
        accelerators=("tpu-v5p-slice",),
        topology="4x4x4",
        queue="research",
        priority="high",
        tolerations=(Toleration("google.com/tpu", "present", "NoSchedule"),),
    )
    either = request_from_spec(spec(gpus_per_worker=1, accelerators=["nvidia-h100-80gb", "nvidia-a100-40gb"]))
    assert either.accelerators == ("nvidia-h100-80gb", "nvidia-a100-40gb") and either.queue == "default"
    with pytest.raises(ValidationError, match="no accelerators per worker"):  # the spec refuses it now
        spec(accelerator="nvidia-t4")


def test_an_unknown_priority_class_is_a_spec_error() -> None:
    h = Harness(cluster(gpu_pool()), "las")
    with pytest.raises(SpecError) as err:
        h.submit("x", gang(1, priority="urgent"))
    assert err.value.field_path == "resources.priority"


def random_walk(
    h: Harness, rng: random.Random, submit: Callable[[int], None], *, cancel_pending: bool, steps: int = 400
) -> Iterator[tuple[int, float]]:
    """A random life of the cluster: at each step time moves on, then a job is submitted, a pass is
    applied, a run is preempted or finished, or (``cancel_pending``) a waiting job is cancelled."""
    now = 0.0
    for step in range(steps):
        now += rng.choice([0.0, 1.0, 7.0, 30.0])
        h.clock.set(now)
        kind = rng.random()
        if kind < 0.4 or not h.state.jobs:
            submit(step)
        elif kind < 0.7:
            h.state.apply(h.scheduler.schedule(h.state).decisions, now)
        elif h.state.running and kind < 0.85:
            h.state.preempt(rng.choice(list(h.state.running.values())), now)
        elif h.state.running and (kind < 0.95 or not cancel_pending):
            h.state.finish(rng.choice(list(h.state.running)), now)
        elif cancel_pending and h.state.pending:
            h.state.finish(rng.choice(list(h.state.pending)), now)  # cancelled while waiting
        yield step, now


def test_the_kept_order_equals_a_full_sort() -> None:
    """PendingOrder (updated incrementally, log trimmed) gives exactly the order of a full sort."""
    rng = random.Random(7)
    policy = Las(thresholds=(50.0, 500.0), min_starve_s=30.0, starve_factor=1.0)
    h = Harness(cluster(gpu_pool(nodes=2)), policy)  # type: ignore[arg-type]
    order = PendingOrder(policy)

    def submit(step: int) -> None:
        h.submit(f"j{step}", gang(rng.choice([1, 2, 4, 8]), priority=rng.choice(["low", "normal", "high"])))

    for step, now in random_walk(h, rng, submit, cancel_pending=True):
        if step == 200:
            h.state.enqueued_base += len(h.state.enqueued)  # as if the log had been trimmed
            h.state.enqueued.clear()
        if step == 300:
            h.state.dequeued_base += len(h.state.dequeued)  # likewise the log of departures
            h.state.dequeued.clear()
        order.update(h.state, now)
        expected = sorted(h.state.pending.values(), key=lambda j: (-j.priority, policy.rank(j, now)))
        assert [j.id for j in order] == [j.id for j in expected]


@pytest.mark.parametrize("policy_name", ["las", "srtf"])
def test_the_running_watch_read_from_the_log_equals_one_built_afresh(policy_name: str) -> None:
    """RunningWatch follows the state's run_changes log (trimmed twice); at every step it holds
    what a watch built from scratch by set differences holds: the same runs, bands, next change
    and worst running job."""
    rng = random.Random(3)
    policy: Policy = (
        Las(thresholds=(50.0, 500.0), min_starve_s=30.0, starve_factor=1.0)
        if policy_name == "las"
        else get_policy(policy_name)
    )
    h = Harness(cluster(gpu_pool(nodes=2)), policy)
    watch = RunningWatch(policy)

    def submit(step: int) -> None:
        h.submit(f"j{step}", gang(rng.choice([1, 2, 4, 8])), duration=rng.choice([20.0, 90.0, 900.0]))

    for step, now in random_walk(h, rng, submit, cancel_pending=False):
        if step in (150, 300):
            h.state.run_changes_base += len(h.state.run_changes)  # as if the log had been trimmed
            h.state.run_changes.clear()
        fresh = RunningWatch(policy)
        fresh.synced = fresh.worst_synced = -1  # by set difference
        assert watch.next_time(h.state, now) == fresh.next_time(h.state, now)
        assert watch.seen == fresh.seen == {j.id: j.run_start for j in h.state.running.values()}
        if policy_name == "las":  # bands that change only at next_change: counted per band
            assert +watch.band_count == +fresh.band_count
            assert watch.worst_band(h.state, now) == fresh.worst_band(h.state, now)
        else:  # a steady key (srtf: when it would finish): the worst running job
            worst = watch.worst(h.state, now)
            assert worst is fresh.worst(h.state, now)
            assert worst is None or worst.id in h.state.running
        assert len(watch.worst_seen if policy_name == "srtf" else watch.seen) == len(h.state.running)
