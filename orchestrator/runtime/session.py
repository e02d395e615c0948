"""The per-worker training session, and the helpers a user training function calls.

Inside a worker, our wrapper creates one :class:`TrainSession` and makes it current; the
built-in training loops and user entrypoints then use the module-level helpers::

    from orchestrator.runtime import session

    def train(config):
        data = session.get_data()
        restored = session.restore_checkpoint()          # dict or None
        for epoch in range(start, config["training"]["epochs"] + 1):
            for step, batch in enumerate(session.shard(epoch)): ...
            session.report(epoch=epoch, train_loss=..., val_accuracy=...)
            session.save_checkpoint({"model": ...}, epoch=epoch, step=global_step)

The session is framework-neutral; the framework layer supplies the collectives (broadcast,
gather, any-rank flags) and the checkpoint serialisation.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from orchestrator import events
from orchestrator.runtime.checkpoints import CheckpointInfo, CheckpointManager, StorageCheckpointManager
from orchestrator.runtime.data import PreparedData, shard_indices
from orchestrator.storage import LAYOUT, Storage, cache_dir, cache_key

if TYPE_CHECKING:
    from orchestrator.spec.models import JobSpec


class InjectedFailureError(RuntimeError):
    """Raised on purpose by failure injection (testing.inject with kind: exception)."""


class Collectives(Protocol):
    """What the session needs from the framework's process group."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any: ...

    def all_gather_object(self, obj: Any) -> list[Any]: ...

    def any_rank(self, flag: bool) -> bool: ...

    def barrier(self) -> None: ...


class LocalCollectives:
    """Collectives for a single process (world size 1)."""

    def __init__(self, device: Any = None) -> None:
        self.device = device

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def any_rank(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        return None


@dataclass(frozen=True)
class JobPaths:
    """Where a job's artefacts go.

    Without storage, everything is in the job directory (shared by workers on one machine).
    With ``storage`` (:class:`orchestrator.storage.Storage`, the job's own folder in it), the
    storage holds the job's outputs: checkpoints go there (unless ``checkpoint.dir`` names a
    path), rank 0 exports the model and sample grids into this node's cache and uploads them,
    and every rank restores from storage into its own node's cache.

    ``job_id`` owns the checkpoint directory: its temporaries are named with it, and another
    job's directory is refused (:func:`orchestrator.runtime.checkpoints.check_owner`).
    """

    job_dir: Path
    checkpoint_dir: Path | None
    model_dir: Path
    job_id: str | None = None
    storage: Storage | None = None
    #: The exported model to start from (``init_from``): its ``model/`` folder, as storage.
    init_from: Storage | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> JobPaths:
        paths = cls(
            Path(cfg["job_dir"]),
            Path(cfg["checkpoint_dir"]) if cfg.get("checkpoint_dir") else None,
            Path(cfg["model_dir"]),
            cfg.get("job_id"),
            cfg.get("storage"),
            cfg.get("init_from"),
        )
        if paths.storage is not None:  # this node's disk is only a cache
            local = cache_dir("jobs", paths.job_id or "job")
            paths = replace(paths, job_dir=local, model_dir=local / "model")
        return paths

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job_dir": str(self.job_dir),
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
            "model_dir": str(self.model_dir),
        }
        if self.job_id:
            out["job_id"] = self.job_id
        if self.storage is not None:
            out["storage"] = self.storage
        if self.init_from:
            out["init_from"] = self.init_from
        return out

    def checkpoint_manager(self, keep: int) -> Any:
        """The job's checkpoints: ``checkpoint_dir`` when set, else the storage's ``checkpoints/``."""
        if self.checkpoint_dir is None and self.storage is not None:
            where = self.storage.child(LAYOUT["checkpoints"])
            if where.local_path is not None:  # a shared path: an atomic rename commits there
                return CheckpointManager(where.local_path, keep=keep, owner=self.job_id)
            return StorageCheckpointManager(where, keep=keep, owner=self.job_id,
                                            cache=cache_dir("checkpoints", cache_key(where.uri)))
        return CheckpointManager(self.checkpoint_dir or self.job_dir / "checkpoints", keep=keep, owner=self.job_id)


class IndexFeed:
    """An epoch's batches as positions in the in-memory training split (``data.x_train``)."""

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = idx
        self.size = len(idx)

    def select(self, step: int, batch: int) -> np.ndarray:
        return self.idx[step * batch : (step + 1) * batch]

    def trained(self, first: int, end: int, batch: int) -> np.ndarray:
        """The samples of steps ``first`` to ``end`` (exclusive)."""
        return self.idx[first * batch : end * batch]


class TrainSession:
    """One worker's view of the job: rank, data, event stream, checkpoints, stop requests."""

    #: Rank 0 sends step progress at most this often (seconds); epoch events always go.
    PROGRESS_INTERVAL_S = 0.25

    def __init__(
        self,
        *,
        spec: JobSpec,
        rank: int,
        world_size: int,
        paths: JobPaths,
        data: PreparedData | None,
        sink: Any,
        collectives: Collectives,
        keep_checkpoints: int,
    ) -> None:
        #: The job's spec, typed (validated once, where the job was loaded).
        self.spec = spec
        #: The same spec as plain data (what a user entrypoint receives as its ``config``).
        self.config: dict[str, Any] = spec.model_dump(mode="json")
        self.rank = rank
        self.world_size = world_size
        self.paths = paths
        self.data = data
        self.sink = sink
        self.collectives = collectives
        self.checkpoints = paths.checkpoint_manager(keep_checkpoints)
        self._last_progress = 0.0
        self._stop_ref: Any = None
        self._stop_seen: str | None = None
        self.restored: CheckpointInfo | None = None
        self.started_at = time.time()
        self.first_step_at: float | None = None
        self.attempt = 1
        self.restarts = 0
        self.hang_timeout_s: float | None = spec.failure.hang_timeout_s
        self._injections = [i for i in spec.testing.inject if i.rank == rank]
        self._last_touch = time.monotonic()
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        #: Streamed data sets: the producers of the epoch being trained and of the next one.
        self._producers: dict[int, Any] = {}

    # -- events -------------------------------------------------------------------------
    def emit(self, event: events.Event, *, wait: bool = False) -> None:
        """Send one event to the driver: fire and forget, or (``wait``) until it is delivered."""
        if self.sink is None:
            return
        if event.rank is None:
            event = replace(event, rank=self.rank)
        ref = self.sink.push.remote([event.to_wire()])
        if wait:
            import ray

            try:
                ray.get(ref, timeout=10)
            except Exception:  # noqa: BLE001 - the driver may be gone; the event is best effort
                pass

    # -- liveness -----------------------------------------------------------------------
    def touch(self) -> None:
        """Record progress (the hang watchdog fires when there is none for hang_timeout_s)."""
        self._last_touch = time.monotonic()

    def _start_watchdog(self) -> None:
        if self.hang_timeout_s is None or self._watchdog is not None:
            return
        self.touch()
        self._watchdog = threading.Thread(target=self._watch, name="orchestrator-hang-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        assert self.hang_timeout_s is not None
        interval = min(1.0, self.hang_timeout_s / 4)
        while not self._closed.wait(interval):
            idle = time.monotonic() - self._last_touch
            if idle > self.hang_timeout_s:
                self.emit(events.Hang(seconds=idle,
                                      reason=f"rank {self.rank} made no progress for {idle:.0f}s "
                                             f"(failure.hang_timeout_s = {self.hang_timeout_s:g})"), wait=True)
                os.kill(os.getpid(), signal.SIGKILL)  # Ray Train sees a dead worker and restarts the group

    def close(self) -> None:
        self._closed.set()
        for producer in self._producers.values():
            producer.close()
        self._producers.clear()

    # -- failure injection (tests and demos) --------------------------------------------
    def maybe_inject(self, *, epoch: int, global_step: int, epoch_start: bool) -> None:
        """Fail on purpose when a spec'd injection matches this rank, attempt and point."""
        for inj in self._injections:
            if inj.attempt != self.attempt:
                continue
            hit = (epoch_start and inj.at_epoch == epoch) or (not epoch_start and inj.at_step == global_step)
            if not hit:
                continue
            kind = inj.kind
            what = f"injected {kind} on rank {self.rank} at epoch {epoch}, step {global_step} (attempt {self.attempt})"
            self.emit(events.Injected(kind=kind, epoch=epoch, global_step=global_step, reason=what), wait=True)
            if kind == "exception":
                raise InjectedFailureError(what)
            if kind == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                while True:  # no progress from here on; the watchdog ends it
                    time.sleep(3600)

    def progress(self, *, epoch: int, step: int, steps: int, loss: float, global_step: int) -> None:
        """Step progress for the terminal; only rank 0 sends, at most twice a second."""
        now = time.time()
        self.touch()
        if self.first_step_at is None:
            self.first_step_at = now
            if self.rank == 0:
                self.emit(events.FirstStep(epoch=epoch, global_step=global_step, attempt=self.attempt))
        if self._injections:
            self.maybe_inject(epoch=epoch, global_step=global_step, epoch_start=False)
        if self.rank != 0 or (now - self._last_progress < self.PROGRESS_INTERVAL_S and step != steps):
            return
        self._last_progress = now
        self.emit(events.Step(epoch=epoch, step=step, steps=steps, loss=loss, global_step=global_step))

    def report(self, *, epoch: int, global_step: int | None = None, **metrics: float) -> None:
        """Epoch metrics (already reduced over ranks); rank 0's report is the job's."""
        self.touch()
        if self.rank == 0:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            self.emit(events.Epoch(epoch=epoch, global_step=global_step, metrics=clean))

    def finished(self, metrics: dict[str, float], param_checksum: str) -> None:
        """Rank 0: the final metrics, where the model was saved, and the final weights' checksum.

        With storage, the exported model is uploaded first (``model/``), so the event names a
        model every node and every later command can read."""
        where = str(self.paths.model_dir)
        if self.paths.storage is not None and self.paths.model_dir.is_dir():
            target = self.paths.storage.child(LAYOUT["model"])
            target.delete("")  # a re-run's export replaces the earlier one whole
            target.put_dir(self.paths.model_dir, "")
            where = target.uri
        self.emit(events.Final(metrics=metrics, model_dir=where, param_checksum=param_checksum))

    def init_model_dir(self) -> Path | None:
        """The exported model this job starts from (``init_from``), copied into this node's cache;
        None when the job has none. The driver checked its architecture against this job's."""
        source = self.paths.init_from
        if source is None:
            return None
        local = cache_dir("init", cache_key(source.uri))
        source.get_dir("", local)
        if self.rank == 0:
            self.emit(events.Log(stream="stdout", lines=[f"initialised the model from {source.uri}"]))
        return local

    def publish(self, local: Path, rel: str) -> None:
        """Rank 0: copy a file this worker wrote (a sample grid) to the job's storage, if it has one."""
        if self.paths.storage is not None:
            self.paths.storage.put_file(local, rel)

    def model_built(self, *, parameters: int, param_checksum: str, optimizer_checksum: str, device: str,
                    sync_backend: str) -> None:
        """Rank 0: the model's size and checksums, its device and the gradient sync in use."""
        self.emit(events.Model(parameters=parameters, param_checksum=param_checksum,
                               optimizer_checksum=optimizer_checksum, device=device, sync_backend=sync_backend))

    def stopped(self, epoch: int, global_step: int) -> None:
        """Tell the driver the loop stopped on request (cancel, preemption) after a checkpoint."""
        self.emit(events.Stopped(epoch=epoch, global_step=global_step))

    def epoch_started(self, epoch: int, global_step: int) -> None:
        """Mark the start of an epoch (failure injection at_epoch; liveness)."""
        self.touch()
        if self._injections:
            self.maybe_inject(epoch=epoch, global_step=global_step, epoch_start=True)

    def record_shard(self, epoch: int, indices: np.ndarray) -> None:
        """Record which training samples this rank used in ``epoch`` (positions in the split)."""
        self.emit(events.Shard(epoch=epoch, indices=[int(i) for i in indices]))

    # -- data ---------------------------------------------------------------------------
    def epoch_feed(self, epoch: int) -> Any:
        """This rank's training batches for ``epoch``: :class:`IndexFeed` over the in-memory split, or
        :class:`orchestrator.runtime.datasets.TrainFeed` streaming its files. A streamed epoch starts
        the next epoch's producer, which opens its stream once this epoch's last batch is made."""
        if self.data is not None and self.data.stream is not None:
            from orchestrator.runtime.datasets import BatchProducer, TrainFeed

            plan, bs = self.data.stream, self.spec.per_worker_batch_size
            for old in [e for e in self._producers if e != epoch]:  # an epoch started before: done
                self._producers.pop(old).close()
            producer = self._producers.pop(epoch, None) or BatchProducer(plan, epoch, self.rank, self.world_size, bs)
            if epoch < self.spec.training.epochs:
                self._producers[epoch + 1] = BatchProducer(plan, epoch + 1, self.rank, self.world_size, bs,
                                                           after=producer.made)
            self._producers[epoch] = producer
            return TrainFeed(self.data, producer)
        return IndexFeed(self.shard(epoch))

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's training sample positions for ``epoch`` (disjoint across ranks)."""
        if self.data is None:
            raise RuntimeError("this job has no prepared data set")
        seed = self.spec.training.seed
        return shard_indices(len(self.data.x_train), self.rank, self.world_size, epoch, seed)

    # -- stopping -----------------------------------------------------------------------
    def _poll_stop(self) -> str | None:
        """Non-blocking look at the driver's stop flag (one outstanding request at a time)."""
        if self._stop_seen is not None or self.sink is None:
            return self._stop_seen
        import ray

        if self._stop_ref is None:
            self._stop_ref = self.sink.stop_reason.remote()
            return None
        ready, _ = ray.wait([self._stop_ref], timeout=0)
        if ready:
            self._stop_seen = ray.get(self._stop_ref)
            self._stop_ref = None
        return self._stop_seen

    def should_stop(self) -> bool:
        """True on every rank once the driver asked to stop (a collective: call it on all ranks)."""
        return self.collectives.any_rank(self._poll_stop() is not None)

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(
        self,
        write: Callable[[Path], None],
        *,
        epoch: int,
        step: int,
        meta: dict[str, Any] | None = None,
    ) -> float:
        """Rank 0 writes a checkpoint atomically; returns the seconds it took (0 elsewhere)."""
        seconds = 0.0
        self.touch()
        if self.rank == 0:
            start = time.perf_counter()
            info = self.checkpoints.save(write, step=step, epoch=epoch, meta=meta)
            seconds = time.perf_counter() - start
            self.emit(events.Checkpoint(epoch=epoch, global_step=step, path=info.location or str(info.path),
                                        seconds=seconds))
        self.touch()
        return seconds

    def find_restore_point(self) -> CheckpointInfo | None:
        """The newest valid checkpoint, chosen by rank 0 and agreed by all ranks.

        Rank 0 broadcasts the checkpoint's name (``ckpt-0000000120``), not a path on its own disk:
        every rank fetches that checkpoint from storage (into its own node's cache when the
        checkpoints are in object storage) and verifies it.
        """
        choice: str | None = None
        if self.rank == 0:
            self.checkpoints.cleanup_orphans()
            result = self.checkpoints.latest_valid()
            for path, reason in result.skipped:
                self.emit(events.CheckpointSkipped(path=str(path), reason=reason))
            choice = result.checkpoint.path.name if result.checkpoint else None
        choice = self.collectives.broadcast_object(choice)
        self.restored = self.checkpoints.fetch(choice) if choice else None
        return self.restored

    def begin_attempt(self) -> None:
        """Learn this worker group's attempt number; after a failure, wait the backoff first.

        Rank 0 asks the driver's sink for the number and all ranks agree on it. Call this once,
        on every rank, before restoring a checkpoint.
        """
        numbers = (1, 0)
        if self.rank == 0 and self.sink is not None:
            import ray

            numbers = tuple(ray.get(self.sink.next_attempt.remote(), timeout=60))  # type: ignore[assignment]
        self.attempt, self.restarts = self.collectives.broadcast_object(numbers)
        if self.restarts:
            failure = self.spec.failure
            wait = min(failure.backoff_s * 2 ** (self.restarts - 1), failure.backoff_max_s)
            if wait > 0:
                time.sleep(wait)  # exponential backoff between attempts

    def attempt_started(self) -> None:
        """Rank 0 tells the driver a (re)started worker group is about to train."""
        self._start_watchdog()
        nodes = self.collectives.all_gather_object(_node_id())
        if self.rank != 0:
            return
        restored = self.restored
        self.emit(events.AttemptStart(
            attempt=self.attempt,
            restored_epoch=restored.epoch if restored else None,
            restored_step=restored.step if restored else None,
            restored_path=(restored.location or str(restored.path)) if restored else None,
            pid=os.getpid(),
            nodes=[str(n) for n in nodes] if any(nodes) else None,
        ))


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - only informative
        return ""


# -- the current session, for user code --------------------------------------------------
_current: TrainSession | None = None


def set_session(session: TrainSession | None) -> None:
    global _current
    _current = session


def get_session() -> TrainSession:
    """The session of this worker; only valid inside a training function run by orchestrator."""
    if _current is None:
        raise RuntimeError(
            "no orchestrator training session: call this from a training function that "
            "`orchestrator submit` runs"
        )
    return _current


def touch_if_active() -> None:
    """Record progress for the hang watchdog, if a session is active (cheap; safe anywhere)."""
    if _current is not None:
        _current.touch()


def report(*, epoch: int, **metrics: float) -> None:
    """Report epoch metrics (rank 0's values are the job's; reduce over ranks first)."""
    get_session().report(epoch=epoch, global_step=None, **metrics)


def get_data() -> PreparedData:
    """The prepared (cleaned, split, preprocessed) data set of the job."""
    data = get_session().data
    if data is None:
        raise RuntimeError("this job has no prepared data set")
    return data


def shard(epoch: int) -> np.ndarray:
    """This worker's training sample positions for ``epoch``."""
    return get_session().shard(epoch)


def should_stop() -> bool:
    """True (on all ranks) once the job was asked to stop; save a checkpoint and return."""
    return get_session().should_stop()


class _ForwardingStream(io.TextIOBase):
    """Copies a worker's stdout/stderr lines to the driver log (and the original stream)."""

    def __init__(self, original: TextIO, session: TrainSession, stream: str) -> None:
        self._original = original
        self._session = session
        self._stream = stream
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self._original.write(text)
        with self._lock:
            self._buffer += text
            if "\n" in self._buffer:
                lines, self._buffer = self._buffer.rsplit("\n", 1)
                self._session.emit(events.Log(stream=self._stream, lines=lines.split("\n")))
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def close_buffer(self) -> None:
        with self._lock:
            if self._buffer:
                self._session.emit(events.Log(stream=self._stream, lines=[self._buffer]))
                self._buffer = ""


class captured_output:
    """Context manager: forward print()/warnings from user code to the job's log."""

    def __init__(self, session: TrainSession) -> None:
        self.session = session

    def __enter__(self) -> captured_output:
        self._saved = (sys.stdout, sys.stderr)
        self._out = _ForwardingStream(sys.stdout, self.session, "stdout")
        self._err = _ForwardingStream(sys.stderr, self.session, "stderr")
        sys.stdout, sys.stderr = self._out, self._err  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self._out.close_buffer()
        self._err.close_buffer()
        sys.stdout, sys.stderr = self._saved
