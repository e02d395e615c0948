"""The typed worker -> driver events and their one wire form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import events as ev
from orchestrator.events import KINDS, Event, from_wire

#: One event of every kind, with every field set (rank 0 at t=100 unless the kind has no rank).
SAMPLES: list[Event] = [
    ev.Step(epoch=2, step=5, steps=10, loss=0.25, global_step=15, time=100.0, rank=0),
    ev.Epoch(epoch=2, global_step=20, metrics={"val_accuracy": 0.9, "train_loss": 0.3}, time=100.0, rank=0),
    ev.Model(parameters=1234, param_checksum="abc", optimizer_checksum="def", device="cpu", sync_backend="gloo",
             time=100.0, rank=0),
    ev.Memory(peak_rss_bytes=2048, time=100.0, rank=1),
    ev.Final(metrics={"test_accuracy": 0.95}, model_dir="/j/model", param_checksum="abc", time=100.0, rank=0),
    ev.Checkpoint(epoch=2, global_step=20, path="/j/checkpoints/step-20", seconds=0.5, time=100.0, rank=0),
    ev.CheckpointSkipped(path="/j/checkpoints/step-10", reason="manifest missing", time=100.0, rank=0),
    ev.Shard(epoch=2, indices=[3, 1, 2], time=100.0, rank=1),
    ev.Stopped(epoch=2, global_step=20, time=100.0, rank=0),
    ev.AttemptStart(attempt=2, restored_epoch=1, restored_step=10, restored_path="/j/c/10", pid=42, time=100.0,
                    rank=0),
    ev.FirstStep(attempt=2, epoch=2, global_step=11, time=100.0, rank=0),
    ev.Injected(kind="sigkill", epoch=2, global_step=12, reason="injected sigkill", time=100.0, rank=1),
    ev.WorkerError(error="ValueError: x", traceback="Traceback ...", permanent=False, time=100.0, rank=1),
    ev.Hang(seconds=31.0, reason="rank 1 made no progress for 31s", time=100.0, rank=1),
    ev.Failure(errors={"1": "ActorDiedError: died"}, time=100.0),
    ev.Image(tag="samples", epoch=2, height=8, width=8, colorspace=1, png="iVBORw0=", time=100.0, rank=0),
    ev.Log(stream="stdout", lines=["hello", "world"], time=100.0, rank=1),
    ev.Queued(reason="needs 2 workers x 1 cpus as one gang", time=100.0),
]


def test_every_kind_has_a_sample() -> None:
    assert sorted(type(e).KIND for e in SAMPLES) == sorted(KINDS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).KIND)
def test_every_kind_round_trips_through_the_wire_form_and_json(event: Event) -> None:
    wire = event.to_wire()
    assert wire["type"] == type(event).KIND
    back = from_wire(json.loads(json.dumps(wire)))
    assert back is not None and back.to_wire() == wire
    if not isinstance(event, ev.Queued):  # the driver's queue notice never carried its time
        assert back == event


def test_the_wire_form_has_the_keys_and_order_the_dict_events_had() -> None:
    # what session.emit sent before the classes: the kind's keys, then time and rank (setdefault)
    step = ev.Step(epoch=1, step=2, steps=3, loss=0.5, global_step=7, time=9.0, rank=0)
    assert list(step.to_wire().items()) == [("type", "step"), ("epoch", 1), ("step", 2), ("steps", 3),
                                            ("loss", 0.5), ("global_step", 7), ("time", 9.0), ("rank", 0)]
    assert ev.Queued(reason="r").to_wire() == {"type": "queued", "reason": "r"}  # no time, no rank
    assert "rank" not in ev.Failure(errors={}, time=1.0).to_wire()  # Ray Train's controller has no rank


@pytest.mark.parametrize("wire", [{"type": "no_such_kind", "x": 1}, {"epoch": 1}, None, "epoch", [1, 2]])
def test_an_unknown_wire_event_is_ignored_as_before(wire: Any) -> None:
    assert from_wire(wire) is None
    assert ev.events_from_wire([wire, SAMPLES[0].to_wire()]) == [SAMPLES[0]]


@pytest.mark.parametrize(("wire", "missing"), [
    ({"type": "epoch", "epoch": 1, "time": 1.0}, "metrics"),
    ({"type": "checkpoint", "epoch": 1, "global_step": 2, "path": "/c", "time": 1.0}, "seconds"),
    ({"type": "queued"}, "reason"),
    ({"type": "attempt_start", "attempt": 1}, "time"),  # the tracker reads an attempt's time
])
def test_a_wire_event_without_a_field_consumers_read_raises_key_error(wire: dict[str, Any], missing: str) -> None:
    # the consumers' event["field"] raised KeyError(field) before; from_wire raises the same
    with pytest.raises(KeyError) as info:
        from_wire(wire)
    assert info.value.args == (missing,)


def test_optional_fields_and_unknown_keys_read_as_before() -> None:
    # consumers read these with .get(): absent means None; keys this version does not know are ignored
    event = from_wire({"type": "model", "parameters": 3, "param_checksum": "c", "time": 1.0, "rank": 0,
                       "added_later": True})
    assert event == ev.Model(parameters=3, param_checksum="c", time=1.0, rank=0)
    step = from_wire({"type": "step", "epoch": 1, "step": 1, "steps": 2, "loss": 0.1, "global_step": 1})
    assert step is not None and step.rank is None and step.time > 0  # metrics used "now" for a missing time


def test_events_are_frozen() -> None:
    step = SAMPLES[0]
    with pytest.raises(AttributeError):
        step.loss = 1.0  # type: ignore[misc]


def test_the_sink_knows_when_rank_0_returned() -> None:
    from orchestrator.runtime.progress import ProgressSink

    sink = ProgressSink()
    sink.push([ev.Memory(peak_rss_bytes=1, time=1.0, rank=1).to_wire(), {"type": "no_such_kind", "rank": 0}])
    assert not sink.returned()
    sink.push([ev.WorkerError(error="x", time=2.0, rank=0).to_wire()])
    assert sink.returned()
    assert [e["type"] for e in sink.drain()] == ["memory", "no_such_kind", "worker_error"]


def test_the_ray_job_writes_every_event_but_steps_as_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.backends.ray_cluster import EVENT_MARK
    from orchestrator.backends.ray_job import WireEvents

    out = WireEvents()
    for event in SAMPLES:
        out.on_event(event)
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(EVENT_MARK) for line in lines)
    sent = [from_wire(json.loads(line[len(EVENT_MARK):])) for line in lines]
    assert [type(e).KIND for e in sent if e is not None] == [type(e).KIND for e in SAMPLES if e.KIND != "step"]
