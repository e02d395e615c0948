"""The cluster queue's logic (QueueBook) without Ray: admission, waiting reasons, preemption, restarts."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.execution.admission import Admitted, Continue, Preempted, Waiting, Withdrawn
from orchestrator.execution.queue import (
    REJOIN_S,
    STALE_S,
    MachineAdmission,
    QueueBook,
    cluster_from_nodes,
    request_from_json,
    request_to_json,
)
from orchestrator.scheduler import GangRequest, Toleration
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState, JobStore, process_start_time


def node(cpus: float, gpus: float = 0, memory: int = 8 * 2**30, kind: str | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {"CPU": cpus, "memory": memory, "node:10.0.0.1": 1.0}
    if gpus:
        resources["GPU"] = gpus
    if kind:
        resources[f"accelerator_type:{kind}"] = 1.0
    return {"Alive": True, "Resources": resources}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0 - REJOIN_S  # the queue was created REJOIN_S ago

    def __call__(self) -> float:
        return self.now


def book(*nodes: dict[str, Any]) -> tuple[QueueBook, Clock]:
    clock = Clock()
    b = QueueBook("default", clock)
    clock.now += REJOIN_S
    b.nodes = list(nodes)
    return b, clock


def gang(workers: int = 2, cpus: float = 1, priority: str | None = None) -> GangRequest:
    return GangRequest(workers=workers, cpus_per_worker=cpus, priority=priority)


def test_second_gang_waits_for_the_first_and_starts_when_it_ends() -> None:
    b, clock = book(node(2))
    assert b.offer("a", gang(), 1.0) == {"action": "run"}
    answer = b.offer("b", gang(), 2.0)
    assert answer["action"] == "wait" and not answer["permanent"]
    assert "2 workers x 1 cpus" in answer["reason"] and "cpu" in answer["reason"]
    assert b.offer("a", gang(), 1.0, running=True, started_at=clock.now) == {"action": "continue"}
    b.done("a")
    assert b.offer("b", gang(), 2.0) == {"action": "run"}
    rows = {r.job_id: r for r in b.rows()}
    assert set(rows) == {"b"} and rows["b"].state == "running"


def test_a_gang_never_starts_half_placed() -> None:
    b, _ = book(node(2), node(2))
    assert b.offer("a", gang(workers=3), 1.0)["action"] == "run"  # 3 x 1 CPU spans two 2-CPU nodes
    answer = b.offer("b", gang(workers=2), 2.0)  # 1 CPU is free: not enough for the gang of 2
    assert answer["action"] == "wait"


def test_a_gang_larger_than_the_cluster_is_unschedulable() -> None:
    b, _ = book(node(2))
    answer = b.offer("big", gang(workers=4), 1.0)
    assert answer["action"] == "wait" and answer["permanent"]


def test_high_priority_preempts_low_which_requeues_and_resumes_later() -> None:
    b, clock = book(node(2))
    assert b.offer("low", gang(priority="low"), 1.0)["action"] == "run"
    clock.now += 30
    high = clock.now
    answer = b.offer("high", gang(priority="high"), high)
    # high does not start while low still holds the room: low is told to checkpoint and stop first
    assert answer["action"] == "wait" and "preempting low: waiting for them to checkpoint" in answer["reason"]
    assert b.offer("low", gang(priority="low"), 1.0, running=True) == {"action": "preempt", "by": "high"}
    rows = {r.job_id: r for r in b.rows()}
    assert "being preempted by high" in rows["low"].detail
    assert b.offer("high", gang(priority="high"), high)["action"] == "wait"  # low has not stopped yet
    # low checkpointed and stopped: it offers itself again and waits; high starts now
    assert b.offer("low", gang(priority="low"), 1.0)["action"] == "wait"
    assert b.offer("high", gang(priority="high"), high)["action"] == "run"
    assert b.offer("low", gang(priority="low"), 1.0)["action"] == "wait"
    b.done("high")
    assert b.offer("low", gang(priority="low"), 1.0)["action"] == "run"


def test_a_restarted_queue_rebuilds_itself_from_the_drivers_calls() -> None:
    b, clock = book(node(2))
    assert b.offer("a", gang(), 1.0)["action"] == "run"
    started = clock.now
    # the actor was restarted: it knows nothing, and admits nothing until running jobs reported in
    fresh_clock = Clock()
    fresh_clock.now = clock.now + 5
    fresh = QueueBook("default", fresh_clock)
    fresh.nodes = [node(2)]
    answer = fresh.offer("b", gang(), 2.0)
    assert answer["action"] == "wait" and "report in" in answer["reason"]
    assert fresh.offer("a", gang(), 1.0, running=True, started_at=started) == {"action": "continue"}
    fresh_clock.now += REJOIN_S
    assert fresh.offer("c", gang(), 3.0)["action"] == "wait"
    assert fresh.offer("b", gang(), 2.0)["action"] == "wait"
    assert {r.job_id: r.state for r in fresh.rows()} == {"a": "running", "b": "waiting", "c": "waiting"}
    fresh.done("a")
    assert fresh.offer("c", gang(), 3.0)["action"] == "wait"  # b was queued first: its own time, not its call
    assert fresh.offer("b", gang(), 2.0)["action"] == "run"


def test_jobs_running_beyond_the_model_are_shown_not_counted() -> None:
    b, clock = book(node(2))
    b.offer("a", gang(), 1.0, running=True, started_at=clock.now)
    b.offer("b", gang(), 2.0, running=True, started_at=clock.now + 1)
    rows = {r.job_id: r for r in b.rows()}
    assert rows["a"].state == rows["b"].state == "running"
    assert "not counted" in rows["b"].detail


def test_a_silent_driver_is_dropped_after_the_stale_limit() -> None:
    b, clock = book(node(2))
    b.offer("a", gang(), 1.0)
    assert b.offer("b", gang(), 2.0)["action"] == "wait"
    clock.now += STALE_S / 2
    assert b.offer("b", gang(), 2.0)["action"] == "wait"
    clock.now += STALE_S / 2 + 1  # "a" has not reported for longer than STALE_S
    assert b.offer("b", gang(), 2.0)["action"] == "run"


def test_cluster_model_groups_nodes_by_kind() -> None:
    cluster = cluster_from_nodes(
        [node(8, gpus=4, kind="A100"), node(8, gpus=4, kind="A100"), node(4), {"Alive": False, "Resources": {"CPU": 64}}],
        ["research"],
    )
    pools = sorted(cluster.pools, key=lambda p: p.name)
    shapes = sorted((p.name, p.nodes, p.accelerator, p.cpus_per_node) for p in pools)
    # from Ray's accelerator_type A100; more kinds and nodes of other sizes: test_ray_cluster_pools.py
    assert shapes == [("ray-cpu", 1, "cpu", 4.0), ("ray-nvidia-a100", 2, "nvidia-a100", 8.0)]
    assert {q.name for q in cluster.queues} == {"default", "research"}


def test_requests_survive_the_trip_through_json() -> None:
    request = GangRequest(workers=4, accelerators_per_worker=1, cpus_per_worker=2, memory_per_worker=2**30,
                          accelerators=("nvidia-a100-40gb", "nvidia-t4"), queue="research", priority="high",
                          tolerations=(Toleration.parse("spot=true:NoSchedule"),))
    assert request_from_json(request_to_json(request)) == request


@pytest.mark.parametrize("nodes", [[], [{"Alive": False, "Resources": {"CPU": 2}}]])
def test_no_live_node_means_every_job_waits(nodes: list[dict[str, Any]]) -> None:
    b, _ = book(*nodes)
    assert b.offer("a", gang(), 1.0)["action"] == "wait"


# -- the local backend's queue: the job store, this machine ---------------------------------------

def store_with(tmp_path: Path, *jobs: tuple[str, str, str | None]) -> JobStore:
    """A job store with (id, state, priority) jobs of 2 workers x 1 CPU, driven by this live process."""
    store = JobStore(tmp_path / "jobs.db")
    now = time.time()  # a minute of attained service: far below las's first band
    for i, (job_id, state, priority) in enumerate(jobs):
        spec = JobSpec.model_validate({"name": "q", "model": {"type": "cnn"},
                                       "resources": {"workers": 2, "cpus_per_worker": 1, "priority": priority}})
        store.create(JobRecord(id=job_id, name="q", backend="local", state=JobState(state),
                               spec=spec.model_dump(mode="json"), job_dir=tmp_path / job_id, created_at=now - 60 + i,
                               started_at=now - 60 + i, driver_pid=os.getpid(),
                               driver_started=process_start_time(os.getpid())))
    return store


def admission(store: JobStore, job_id: str) -> MachineAdmission:
    from orchestrator.scheduler import request_from_spec

    record = store.get(job_id)
    return MachineAdmission(store, job_id, request_from_spec(JobSpec.model_validate(record.spec)),
                            record.created_at, node(2))


def once(adm: MachineAdmission) -> tuple[bool, list[str]]:
    """One ask: admitted or not, and the reasons to wait it was told (decision objects, as words)."""
    said: list[Waiting] = []
    calls = iter([False, True])
    outcome = adm.wait(lambda: next(calls), said.append)
    assert isinstance(outcome, Admitted | Withdrawn) and all(isinstance(w, Waiting) for w in said)
    return isinstance(outcome, Admitted), [w.reason for w in said]


def test_local_jobs_wait_in_the_store_until_the_machine_is_free(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("orchestrator.execution.queue.POLL_S", 0.0)
    store = store_with(tmp_path, ("a", "running", None), ("b", "running", None))
    admitted, said = once(admission(store, "b"))
    assert not admitted and "2 workers x 1 cpus" in said[0]
    record = store.get("b")
    assert record.state is JobState.PENDING and record.message.startswith("queued: ")
    store.transition("a", JobState.SUCCEEDED, {JobState.RUNNING})
    admitted, _ = once(admission(store, "b"))
    assert admitted and store.get("b").state is JobState.RUNNING and store.get("b").message is None


def test_a_local_high_priority_job_preempts_through_the_victims_record(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("orchestrator.execution.queue.POLL_S", 0.0)
    store = store_with(tmp_path, ("low", "running", "low"), ("high", "pending", "high"))
    assert admission(store, "low").report() == Continue()
    admitted, said = once(admission(store, "high"))
    assert not admitted and "preempting low" in said[0]  # not before low has stopped
    assert admission(store, "low").report() == Preempted("high")
    low = admission(store, "low")
    low.requeued()  # it checkpointed and stopped; it waits behind high now
    store.transition("low", JobState.PENDING, {JobState.RUNNING})
    assert once(admission(store, "high"))[0]
    admitted, said = once(low)
    assert not admitted and said and "preempt_by" not in store.get("low").result
    store.transition("high", JobState.SUCCEEDED, {JobState.RUNNING})
    assert once(admission(store, "low"))[0]


def test_gpu_gangs_are_matched_in_rays_accelerator_names() -> None:
    from orchestrator.execution.queue import ray_request

    b, _ = book(node(8, gpus=4, kind="A100"))
    ours = GangRequest(workers=2, accelerators_per_worker=2, cpus_per_worker=1, accelerators=("nvidia-a100-40gb",))
    assert ray_request(ours).accelerators == ("nvidia-a100",)
    assert b.offer("gpu", ray_request(ours), 1.0)["action"] == "run"
    t4 = GangRequest(workers=1, accelerators_per_worker=1, accelerators=("nvidia-t4",))
    answer = b.offer("t4", ray_request(t4), 2.0)
    assert answer["action"] == "wait" and answer["permanent"] and "nvidia-t4" in answer["reason"]
    tpu = cluster_from_nodes([{"Alive": True, "Resources": {"CPU": 8, "TPU": 4, "accelerator_type:TPU-V5LITEPOD": 1}}])
    assert [p.accelerator for p in tpu.pools] == ["tpu-v5litepod"]
    v5e = GangRequest(workers=1, accelerators_per_worker=4, accelerators=("tpu-v5-lite-podslice",), topology="2x2")
    assert ray_request(v5e).accelerators == ("tpu-v5litepod",) and ray_request(v5e).topology is None


# -- the history the live queues carry into the scheduler's state (issue 24) -----------------------

def test_the_cluster_queue_carries_preemptions_and_earlier_service_into_its_state() -> None:
    b, clock = book(node(2))
    assert b.offer("low", gang(priority="low"), 1.0) == {"action": "run"}
    started = clock.now
    clock.now += 50.0
    assert b.offer("low", gang(priority="low"), 1.0, running=True, started_at=started) == {"action": "continue"}
    assert b.offer("high", gang(priority="high"), 2.0)["action"] == "wait"  # low is told to stop
    preempted = clock.now
    assert b.entries["low"].preempted_at == (preempted,)
    clock.now += 5.0  # low checkpointed and stopped: it offers itself again
    assert b.offer("low", gang(priority="low"), 1.0)["action"] == "wait"
    assert b.entries["low"].attained == 2 * 55.0  # 2 CPUs x its run
    _, state, _ = b._build(clock.now)
    low = state.jobs["low"]
    assert (low.preempted_at, low.preemptions, low.attained) == ((preempted,), 1, 110.0)


def test_the_cluster_queue_learns_its_bands_from_the_jobs_that_finished() -> None:
    b, clock = book(node(2))
    for i in range(60):  # one job after another, each 1 CPU x (i + 1) x 10 s
        assert b.offer(f"j{i}", gang(workers=1), clock.now) == {"action": "run"}
        clock.now += (i + 1) * 10.0
        b.done(f"j{i}")
    assert list(b.finished)[:3] == [10.0, 20.0, 30.0] and len(b.finished) == 60
    assert b.offer("next", gang(workers=1), clock.now) == {"action": "run"}
    scheduler, state, _ = b._pass(clock.now)
    assert state.finished_count == 60
    # the default policy's bands: the 0.9 and 0.99 quantiles (by job count) of the 10, 20, ...,
    # 600 s that finished, not the prior 8 and 80 GPU-hours
    assert scheduler.policy.thresholds == pytest.approx((541.0, 594.1))


def test_the_cluster_queue_applies_the_preemption_budget_to_real_jobs() -> None:
    b, clock = book(node(2))
    assert b.offer("long", gang(), 1.0) == {"action": "run"}
    entry = b.entries["long"]
    entry.preempted_at = (clock.now - 300.0, clock.now - 200.0, clock.now - 100.0)  # 3 in the window
    entry.attained = 10**6  # far past every band: a newcomer would preempt it by band
    entry.started_at = clock.now - 3600.0  # its quantum is long over
    scheduler, state, _ = b._build(clock.now)
    assert scheduler.policy.protection(state.jobs["long"], clock.now) == (  # type: ignore[attr-defined]
        "preemption-budget", clock.now - 300.0 + 6 * 3600.0)
    answer = b.offer("short", gang(), 2.0)
    assert answer["action"] == "wait" and "preemption-budget" in answer["reason"]
    assert b.entries["long"].state == "running"


def test_the_machine_queue_keeps_each_jobs_history_in_the_store(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("orchestrator.execution.queue.POLL_S", 0.0)
    store = store_with(tmp_path, ("low", "running", "low"), ("high", "pending", "high"))
    store.update("low", result={"run_started_at": time.time() - 50.0})
    admitted, _ = once(admission(store, "high"))
    assert not admitted
    (preempted,) = store.get("low").result["preempted_at"]
    assert abs(preempted - time.time()) < 60
    low = admission(store, "low")
    low.requeued()  # it stopped: its run's service is kept, the order is cleared
    result = store.get("low").result
    assert set(result) == {"preempted_at", "attained_s"} and 2 * 50.0 <= result["attained_s"] < 2 * 120.0
    store.transition("low", JobState.PENDING, {JobState.RUNNING})
    book = admission(store, "high")._book()
    assert book.entries["low"].preempted_at == (preempted,)
    assert book.entries["low"].attained == result["attained_s"]
    # high runs and ends: its service joins the sample the next pass draws its bands from
    assert once(admission(store, "high"))[0]
    assert abs(store.get("high").result["run_started_at"] - time.time()) < 60  # its run counts from admission
    store.update("high", result={**store.get("high").result, "run_started_at": time.time() - 30.0})
    admission(store, "high").leave()
    store.transition("high", JobState.SUCCEEDED, {JobState.RUNNING})
    service = store.get("high").result["service_s"]
    assert 2 * 30.0 <= service < 2 * 100.0
    assert list(admission(store, "low")._book().finished) == [service]


def test_a_place_a_job_has_not_heard_of_yet_adds_no_service() -> None:
    b, clock = book(node(2))
    assert b.offer("a", gang(), 1.0) == {"action": "run"}
    assert b.offer("b", gang(), 2.0)["action"] == "wait"
    b.done("a")
    assert b.offer("c", gang(), 3.0)["action"] == "wait"  # c's pass places b, which has not asked since
    assert b.entries["b"].state == "running"
    clock.now += 1.5
    assert b.offer("b", gang(), 2.0) == {"action": "run"}
    assert b.entries["b"].attained == 0.0 and list(b.finished) == [0.0]  # a ran 0 s by this clock


def test_a_head_without_cpus_is_left_out_of_the_pools() -> None:
    """A head started with --num-cpus 0 (it runs drivers only) offers no worker a place."""
    from orchestrator.execution.queue import cluster_from_nodes

    head = {"Alive": True, "Resources": {"memory": 1e9, "node:__internal_head__": 1.0}}
    worker = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}}
    cluster = cluster_from_nodes([head, worker])
    assert [(p.nodes, p.cpus_per_node) for p in cluster.pools] == [(1, 2.0)]
