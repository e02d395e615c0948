"""The events a job's workers (and its driver) send about a running job, one class per kind.

Workers build these, :meth:`Event.to_wire` turns one into the plain dict that crosses a process
boundary (the progress sink's Ray actor queue; the ``ORCHESTRATOR_EVENT`` lines a ray-backend
driver writes to its Ray job's log), and :func:`from_wire` reads it back. Consumers dispatch with
``match`` on the classes, so mypy catches a renamed field and one search finds every consumer.

The wire form is ``{"type": KIND, **fields}``: the keys the events have always had, so logs
written before these classes existed still read. :func:`from_wire` ignores a dict of an unknown
``type`` (returns None: every consumer skipped those) and keys it does not know, and raises
:class:`KeyError` naming a missing field that consumers always read (as they did).

This module sits low in the layers: the standard library only.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeAlias


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    """What every event carries: when it happened and which worker rank sent it (None: no rank,
    e.g. Ray Train's controller or the driver)."""

    #: The wire ``type`` of this kind.
    KIND: ClassVar[str] = ""
    #: Consumers read ``time`` of this kind as data (attempt bookkeeping): the wire must carry it.
    TIME_REQUIRED: ClassVar[bool] = False
    #: Whether the wire form carries ``time`` (the driver's own queue notices never did).
    WIRE_TIME: ClassVar[bool] = True

    time: float = field(default_factory=_time.time)
    rank: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The plain dict form (JSON-safe where the values are)."""
        out: dict[str, Any] = {"type": self.KIND}
        for f in fields(self)[2:]:
            out[f.name] = getattr(self, f.name)
        # time and rank last, where the worker's emit() used to add them
        if self.WIRE_TIME:
            out["time"] = self.time
        if self.rank is not None:  # events without a rank never had the key
            out["rank"] = self.rank
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Step(_Event):
    """Rank 0's step progress (at most a few a second)."""

    KIND: ClassVar[str] = "step"
    epoch: int
    step: int
    steps: int
    loss: float
    global_step: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Epoch(_Event):
    """Rank 0's epoch metrics (already reduced over ranks)."""

    KIND: ClassVar[str] = "epoch"
    epoch: int
    metrics: Mapping[str, float]
    global_step: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Model(_Event):
    """The built model: its size, checksums, device and the gradient sync in use."""

    KIND: ClassVar[str] = "model"
    parameters: int
    param_checksum: str
    optimizer_checksum: str | None = None
    device: str | None = None
    sync_backend: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory(_Event):
    """A worker process's peak resident memory, sent as its training function returns."""

    KIND: ClassVar[str] = "memory"
    peak_rss_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Final(_Event):
    """Rank 0: the final metrics, where the model was saved, the final weights' checksum."""

    KIND: ClassVar[str] = "final"
    metrics: Mapping[str, float]
    model_dir: str | None = None
    param_checksum: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(_Event):
    """Rank 0 wrote a checkpoint."""

    KIND: ClassVar[str] = "checkpoint"
    epoch: int
    global_step: int
    path: str
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointSkipped(_Event):
    """A checkpoint that failed verification and was not restored."""

    KIND: ClassVar[str] = "checkpoint_skipped"
    path: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard(_Event):
    """The training sample positions one rank used in one epoch."""

    KIND: ClassVar[str] = "shard"
    epoch: int
    indices: Sequence[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(_Event):
    """The loop stopped on request (cancel, preemption) after a checkpoint."""

    KIND: ClassVar[str] = "stopped"
    epoch: int
    global_step: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStart(_Event):
    """A (re)started worker group is about to train, and what it restored."""

    KIND: ClassVar[str] = "attempt_start"
    TIME_REQUIRED: ClassVar[bool] = True
    attempt: int | None = None
    restored_epoch: int | None = None
    restored_step: int | None = None
    restored_path: str | None = None
    pid: int | None = None
    #: The Ray node id each rank runs on, in rank order (a lost node shows which ranks it took).
    nodes: list[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstStep(_Event):
    """Rank 0's first training step of an attempt."""

    KIND: ClassVar[str] = "first_step"
    TIME_REQUIRED: ClassVar[bool] = True
    attempt: int | None = None
    epoch: int | None = None
    global_step: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Injected(_Event):
    """A failure injected on purpose (``testing.inject``) is about to happen."""

    KIND: ClassVar[str] = "injected"
    TIME_REQUIRED: ClassVar[bool] = True
    reason: str
    kind: str | None = None
    epoch: int | None = None
    global_step: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerError(_Event):
    """A worker's training function raised; ``permanent``: a restart cannot cure it (a full disk)."""

    KIND: ClassVar[str] = "worker_error"
    TIME_REQUIRED: ClassVar[bool] = True
    error: str
    traceback: str | None = None
    permanent: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Hang(_Event):
    """The hang watchdog saw no progress for ``failure.hang_timeout_s`` and ends the worker."""

    KIND: ClassVar[str] = "hang"
    TIME_REQUIRED: ClassVar[bool] = True
    reason: str
    seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure(_Event):
    """Ray Train's controller saw the worker group fail (per-rank error lines)."""

    KIND: ClassVar[str] = "failure"
    TIME_REQUIRED: ClassVar[bool] = True
    errors: Mapping[Any, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Image(_Event):
    """A PNG for TensorBoard (base64), e.g. a GAN's sample grid."""

    KIND: ClassVar[str] = "image"
    tag: str
    epoch: int
    height: int
    width: int
    png: str
    colorspace: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(_Event):
    """Lines a worker printed (stdout or stderr)."""

    KIND: ClassVar[str] = "log"
    lines: Sequence[str]
    stream: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Queued(_Event):
    """The driver waits in a queue, and why (sent by the driver, never by a worker)."""

    KIND: ClassVar[str] = "queued"
    WIRE_TIME: ClassVar[bool] = False
    reason: str


Event: TypeAlias = (
    Step | Epoch | Model | Memory | Final | Checkpoint | CheckpointSkipped | Shard | Stopped | AttemptStart
    | FirstStep | Injected | WorkerError | Hang | Failure | Image | Log | Queued
)

#: Every event class, by its wire ``type``.
KINDS: dict[str, type[Event]] = {
    cls.KIND: cls
    for cls in (Step, Epoch, Model, Memory, Final, Checkpoint, CheckpointSkipped, Shard, Stopped, AttemptStart,
                FirstStep, Injected, WorkerError, Hang, Failure, Image, Log, Queued)
}


def from_wire(data: Any) -> Event | None:
    """The event a wire dict describes; None for anything but a dict of a known ``type``.

    Raises :class:`KeyError` (the field's name) when a field consumers always read is missing.
    """
    if not isinstance(data, Mapping):
        return None
    cls = KINDS.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = data[f.name]
        elif f.default is MISSING and (f.default_factory is MISSING or (f.name == "time" and cls.TIME_REQUIRED)):
            raise KeyError(f.name)
    return cls(**values)


def events_from_wire(items: Sequence[Any]) -> list[Event]:
    """The known events of a drained batch, in order (unknown kinds dropped, as consumers did)."""
    return [event for event in map(from_wire, items) if event is not None]
