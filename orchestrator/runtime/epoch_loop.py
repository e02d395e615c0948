"""The one epoch loop every built-in model trains with, and the adapter each framework and model kind fills in.

:func:`run_epochs` owns the order of a run: restore -> report the model -> per epoch (this rank's
shard, the steps, stop checks and mid-epoch checkpoints, the all-reduced sums, the evaluation, the
epoch checkpoint, the report) -> the final metrics and export. An :class:`EpochAdapter` supplies
what differs: how one step trains, how an epoch is judged, how the state is saved and restored.
A fix to resume, checkpointing or stopping therefore lands here once for torch and tensorflow,
supervised models and gans alike.

A mid-epoch checkpoint carries the epoch's running sums (:class:`EpochSums`), so a restart
finishes the epoch exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from orchestrator.runtime.loop_common import (
    STOP_CHECK_EVERY,
    EpochSums,
    RestorePoint,
    check_gan_losses_finite,
    checkpoint_due,
    epoch_metrics,
    gan_epoch_metrics,
    step_checkpoint_due,
)
from orchestrator.runtime.session import TrainSession
from orchestrator.spec.models import GANModel, JobSpec


@dataclass(frozen=True)
class ModelSummary:
    """What rank 0 tells the driver about the model once it is restored (the ``model`` event)."""

    parameters: int
    param_checksum: str
    optimizer_checksum: str
    device: str
    sync_backend: str


class FrameworkState(Protocol):
    """A framework's model and optimizer state as the loop checkpoints, restores and reduces it."""

    def restore(self) -> RestorePoint:
        """Load the newest checkpoint (if any); where to continue."""
        ...

    def summary(self) -> ModelSummary:
        """Size and checksums (collective)."""
        ...

    def all_reduce(self, counts: list[float]) -> list[float]:
        """``counts`` summed over the ranks (collective)."""
        ...

    def save(self, *, epoch: int, step: int, step_in_epoch: int = 0, extra: dict[str, Any] | None = None) -> float:
        """Checkpoint; the seconds it took (collective)."""
        ...


class EpochAdapter(ABC):
    """One framework's and one model kind's part of the epoch loop.

    Subclasses set ``state`` (checkpoints, restore, all-reduce: shared by a framework's model kinds)
    and implement the steps, the evaluation and the finish.

    The loop calls these in a fixed order; methods marked *collective* run on every rank and may
    all-reduce. ``mid_epoch`` says whether stop requests and ``checkpoint.every_steps`` are taken
    within an epoch (a gan takes them at the epoch's end).
    """

    mid_epoch: ClassVar[bool] = True
    state: FrameworkState

    def __init__(self, sess: TrainSession, spec: JobSpec) -> None:
        data = sess.data
        assert data is not None
        self.sess, self.spec, self.data = sess, spec, data
        self.rank, self.world = sess.rank, sess.world_size

    def restore(self) -> RestorePoint:
        """Load the newest checkpoint (if any) into the model and optimizer; where to continue."""
        return self.state.restore()

    def summary(self) -> ModelSummary:
        """The model's size and checksums after the restore (collective)."""
        return self.state.summary()

    def prepare(self) -> None:  # noqa: B027 (a hook: most adapters need nothing here)
        """Build what the steps need once the model is restored (DDP wrappers, compiled steps)."""

    def steps(self, shard_size: int) -> int:
        """The steps of an epoch over a shard of ``shard_size`` samples."""
        return max(1, math.ceil(shard_size / self.spec.per_worker_batch_size))

    def train_mode(self) -> None:  # noqa: B027 (a hook: tensorflow's steps set the mode themselves)
        """Put the networks in training mode at an epoch's start."""

    @abstractmethod
    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        """Train on the samples ``sel``: (the loss shown as progress, and the two sums the epoch keeps:
        loss and correct predictions, or a gan's generator and discriminator losses, each times the batch)."""

    def all_reduce(self, counts: list[float]) -> list[float]:
        """``counts`` summed over the ranks (collective)."""
        return self.state.all_reduce(counts)

    def save(self, *, epoch: int, step: int, step_in_epoch: int = 0, extra: dict[str, Any] | None = None) -> float:
        """Checkpoint the model, optimizer and random state; the seconds it took (collective)."""
        return self.state.save(epoch=epoch, step=step, step_in_epoch=step_in_epoch, extra=extra)

    @abstractmethod
    def evaluate(self, epoch: int, totals: Sequence[float]) -> tuple[float, ...]:
        """Judge the finished epoch before the stop check (collective); passed on to :meth:`metrics`."""

    def after_checkpoint(self, epoch: int) -> None:  # noqa: B027 (a hook: only a gan draws here)
        """What an epoch does after its checkpoint and before its report (a gan draws its grid)."""

    @abstractmethod
    def metrics(self, totals: Sequence[float], evaluation: tuple[float, ...], seconds: float,
                checkpoint_seconds: float) -> dict[str, float]:
        """The epoch's report from the sums over all ranks."""

    @abstractmethod
    def finish(self) -> tuple[dict[str, float], str | None]:
        """Final metrics and export after the last epoch (collective); rank 0 also returns the param checksum."""


class SupervisedAdapter(EpochAdapter):
    """Classification and regression: a validation pass per epoch; sums are loss and correct predictions."""

    def __init__(self, sess: TrainSession, spec: JobSpec) -> None:
        super().__init__(sess, spec)
        self.classify = self.data.task == "classification"

    @abstractmethod
    def learning_rate(self) -> float:
        """The optimizer's current learning rate, for the epoch report."""

    def metrics(self, totals: Sequence[float], evaluation: tuple[float, ...], seconds: float,
                checkpoint_seconds: float) -> dict[str, float]:
        loss, correct, seen = totals
        val_loss, val_accuracy = evaluation
        return epoch_metrics(classify=self.classify, loss=loss, correct=correct, seen=seen, seconds=seconds,
                             val_loss=val_loss, val_accuracy=val_accuracy, checkpoint_seconds=checkpoint_seconds,
                             learning_rate=self.learning_rate())


class GanAdapter(EpochAdapter):
    """The built-in gan: sums are the generator's and the discriminator's losses; no mid-epoch stops.

    An epoch is a few dozen steps, and a stop asked for during it is taken at its end, with a
    checkpoint, so cancel and preemption lose nothing.
    """

    mid_epoch = False

    def __init__(self, sess: TrainSession, spec: JobSpec) -> None:
        super().__init__(sess, spec)
        assert isinstance(spec.model, GANModel)
        self.gan = spec.model

    def steps(self, shard_size: int) -> int:
        # a last batch of one sample is dropped: the generator's batch norm needs two or more
        bs = self.spec.per_worker_batch_size
        return max(1, shard_size // bs + (1 if shard_size % bs >= 2 else 0))

    def evaluate(self, epoch: int, totals: Sequence[float]) -> tuple[float, ...]:
        check_gan_losses_finite(epoch, totals[0], totals[1])
        return ()

    def metrics(self, totals: Sequence[float], evaluation: tuple[float, ...], seconds: float,
                checkpoint_seconds: float) -> dict[str, float]:
        g_sum, d_sum, seen = totals
        return gan_epoch_metrics(g_sum=g_sum, d_sum=d_sum, seen=seen, seconds=seconds,
                                 learning_rate=self.gan.generator_learning_rate, checkpoint_seconds=checkpoint_seconds)


def run_epochs(sess: TrainSession, spec: JobSpec, adapter: EpochAdapter) -> dict[str, float]:
    """Train with ``adapter`` from the newest checkpoint to the last epoch; the final metrics ({} if stopped)."""
    rank = sess.rank
    point = adapter.restore()
    summary = adapter.summary()
    if rank == 0:
        sess.model_built(parameters=summary.parameters, param_checksum=summary.param_checksum,
                         optimizer_checksum=summary.optimizer_checksum, device=summary.device,
                         sync_backend=summary.sync_backend)
    adapter.prepare()
    bs = spec.per_worker_batch_size
    global_step = point.global_step
    checkpoint_seconds = 0.0
    stopped = False
    epoch = point.start_epoch

    for epoch in range(point.start_epoch, spec.training.epochs + 1):
        feed = sess.epoch_feed(epoch)  # this rank's shard: positions in memory, or a stream of files
        steps = adapter.steps(feed.size)
        first = point.step_in_epoch if epoch == point.start_epoch else 0
        sums = EpochSums.restored(point.extra, rank) if first else EpochSums()
        sess.epoch_started(epoch, global_step)
        adapter.train_mode()
        t0 = time.perf_counter()
        step = first
        for step in range(first, steps):
            sel = feed.select(step, bs)
            shown_loss, first_sum, second_sum = adapter.step(epoch, step, sel)
            global_step += 1
            sums.add(first_sum, second_sum, len(sel))
            sess.progress(epoch=epoch, step=step + 1, steps=steps, loss=shown_loss, global_step=global_step)
            if not adapter.mid_epoch:
                continue
            last_step = step + 1 == steps
            stop = (step + 1) % STOP_CHECK_EVERY == 0 and not last_step and sess.should_stop()
            if stop or step_checkpoint_due(spec, global_step, last_step):
                sums.seconds += time.perf_counter() - t0
                adapter.save(epoch=epoch, step=global_step, step_in_epoch=step + 1,
                             extra=EpochSums.to_save(adapter.all_reduce(sums.counts()), sums.seconds))
                t0 = time.perf_counter()
            if stop:
                stopped = True
                break
        sums.seconds += time.perf_counter() - t0
        sess.record_shard(epoch, feed.trained(first, min(step + 1, steps), bs))  # what this attempt trained
        if stopped:
            break
        totals = adapter.all_reduce(sums.counts())
        evaluation = adapter.evaluate(epoch, totals)
        stop_now = sess.should_stop()
        if checkpoint_due(spec, epoch, stop_now):
            checkpoint_seconds = adapter.save(epoch=epoch, step=global_step)
        adapter.after_checkpoint(epoch)
        sess.report(epoch=epoch, global_step=global_step,
                    **adapter.metrics(totals, evaluation, sums.seconds, checkpoint_seconds))
        if stop_now:
            stopped = True
            break

    if stopped:
        sess.stopped(epoch, global_step)
        return {}
    final, checksum = adapter.finish()
    if rank == 0:
        assert checksum is not None
        sess.finished(final, checksum)
    return final
