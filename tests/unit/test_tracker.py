"""RunTracker: attempts, failures, recovery time and lost steps from the event stream."""

from __future__ import annotations

from orchestrator.events import Event, from_wire
from orchestrator.execution.tracker import RunTracker


def ev(type_: str, t: float, **kw: object) -> Event:
    event = from_wire({"type": type_, "time": t, "rank": kw.pop("rank", 0), **kw})
    assert event is not None
    return event


def test_fresh_run_has_one_attempt_and_no_recovery() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 10.0, attempt=1, restored_epoch=None, restored_step=None))
    tr.apply(ev("first_step", 12.0, attempt=1))
    tr.apply(ev("step", 13.0, epoch=1, step=20, steps=100, global_step=20, loss=0.5))
    tr.close(20.0, None)
    [a] = tr.public_attempts()
    assert a["attempt"] == 1 and a["ended_at"] == 20.0 and a["failure"] is None
    assert "recovery_seconds" not in a
    assert tr.new_recoveries == []
    assert tr.first_step_at == 12.0


def test_sigkill_recovery_time_and_lost_steps() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 0.0, attempt=1))
    tr.apply(ev("first_step", 1.0, attempt=1))
    tr.apply(ev("checkpoint", 5.0, epoch=1, global_step=20, path="/c/20", seconds=0.1))
    tr.apply(ev("step", 6.0, epoch=1, step=30, steps=100, global_step=30, loss=0.3))
    tr.apply(ev("injected", 6.5, rank=1, kind="sigkill", epoch=2, global_step=35, reason="injected sigkill on rank 1"))
    tr.apply(ev("failure", 8.0, errors={1: "ActorDiedError: worker died"}))  # Ray's view, later
    tr.apply(ev("attempt_start", 15.0, attempt=2, restored_epoch=1, restored_step=20))
    assert tr.apply(ev("first_step", 18.0, attempt=2))
    a1, a2 = tr.public_attempts()
    assert a1["failure"] == "injected sigkill on rank 1"  # the precise reason wins
    assert a1["failure_detected_at"] == 6.5 and a1["ended_at"] == 6.5
    assert a1["last_step"] == 35
    assert a2["restored_step"] == 20
    assert a2["lost_steps"] == 15
    assert a2["recovery_seconds"] == 18.0 - 6.5
    [rec] = tr.new_recoveries
    assert (rec.attempt, rec.seconds, rec.lost_steps) == (2, 11.5, 15)


def test_ray_failure_event_alone_marks_detection() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 0.0, attempt=1))
    tr.apply(ev("step", 3.0, epoch=1, step=12, steps=100, global_step=12, loss=1.0))
    tr.apply(ev("failure", 4.0, errors={0: "RuntimeError: boom"}))
    tr.apply(ev("failure", 6.0, errors={0: "RuntimeError: boom"}))  # repeated polls change nothing
    tr.apply(ev("attempt_start", 9.0, attempt=2, restored_step=10, restored_epoch=1))
    tr.apply(ev("first_step", 10.0, attempt=2))
    a1, a2 = tr.public_attempts()
    assert a1["failure"] == "rank 0: RuntimeError: boom"
    assert a1["failure_detected_at"] == 4.0
    assert a2["recovery_seconds"] == 6.0 and a2["lost_steps"] == 2


def test_worker_error_is_more_precise_than_rays_summary() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 0.0, attempt=1))
    tr.apply(ev("failure", 4.0, errors={1: "RayTaskError: ..."}))
    tr.apply(ev("worker_error", 4.5, rank=1, error="ValueError: bad batch"))
    tr.close(5.0, "training failed")
    [a] = tr.public_attempts()
    assert a["failure"] == "rank 1: ValueError: bad batch"
    assert a["failure_detected_at"] == 4.0
    assert tr.last_failure() == "rank 1: ValueError: bad batch"


def test_restart_without_any_failure_event_still_closes_the_attempt() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 0.0, attempt=1))
    tr.apply(ev("attempt_start", 30.0, attempt=2, restored_step=0))
    tr.apply(ev("first_step", 31.0, attempt=2))
    a1, a2 = tr.public_attempts()
    assert a1["ended_at"] == 30.0 and "restarted" in a1["failure"]
    assert a2["recovery_seconds"] == 1.0


def test_resume_after_clean_stop_is_not_a_recovery() -> None:
    earlier = [{"attempt": 1, "started_at": 0.0, "ended_at": 50.0, "failure": None}]
    tr = RunTracker(attempts=earlier)
    assert tr.current is None
    tr.apply(ev("attempt_start", 100.0, attempt=2, restored_epoch=3, restored_step=60))
    tr.apply(ev("first_step", 105.0, attempt=2))
    assert tr.new_recoveries == []
    assert [a["attempt"] for a in tr.public_attempts()] == [1, 2]


def test_epoch_metrics_and_resumed_shards_merge() -> None:
    tr = RunTracker()
    tr.apply(ev("attempt_start", 0.0, attempt=1))
    assert tr.apply(ev("epoch", 1.0, epoch=1, global_step=20, metrics={"val_accuracy": 0.8}))
    tr.apply(ev("shard", 1.0, rank=0, epoch=2, indices=[1, 2]))
    tr.apply(ev("shard", 9.0, rank=0, epoch=2, indices=[3, 4]))
    assert tr.shards[0][2] == [1, 2, 3, 4]
    assert tr.epoch_metrics[1]["val_accuracy"] == 0.8
    assert tr.current is not None and tr.current["last_step"] == 20


def test_model_event_records_device_and_sync_backend() -> None:
    tr = RunTracker()
    assert (tr.device, tr.sync_backend) == (None, None)
    tr.apply(ev("model", 1.0, parameters=1234, param_checksum="abc", optimizer_checksum="def",
                device="cuda:0", sync_backend="nccl"))
    assert (tr.device, tr.sync_backend) == ("cuda:0", "nccl")
