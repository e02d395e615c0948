"""What the torch and tensorflow training loops share: when to checkpoint, and the metrics they report.

Both frameworks report the same names (TensorBoard tags, Prometheus series and the job result
follow from them), so the dictionaries are built here once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.metrics import names
from orchestrator.runtime.data import PreparedData, last_value_mse
from orchestrator.spec.models import JobSpec


@dataclass(frozen=True)
class RestorePoint:
    """Where training continues after a framework's ``restore_checkpoint``.

    ``start_epoch`` is the epoch to run next; a mid-epoch checkpoint sets ``step_in_epoch`` to
    the steps of that epoch already done (skip them) and ``extra`` to what the loop saved with
    it (e.g. running loss sums).
    """

    start_epoch: int = 1
    global_step: int = 0
    step_in_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> RestorePoint:
        """From a checkpoint's epoch, global_step, step_in_epoch and extra (either framework's)."""
        in_epoch = int(saved.get("step_in_epoch", 0))
        epoch = int(saved["epoch"])
        return cls(start_epoch=epoch if in_epoch else epoch + 1, global_step=int(saved["global_step"]),
                   step_in_epoch=in_epoch, extra=dict(saved.get("extra") or {}))


#: How often (in steps) ranks agree on whether the driver asked them to stop.
STOP_CHECK_EVERY = 10


def checkpoint_due(spec: JobSpec, epoch: int, stop_now: bool) -> bool:
    """A checkpoint at the end of ``epoch``: every ``checkpoint.every_epochs``, the last epoch, or a stop."""
    return epoch % spec.checkpoint.every_epochs == 0 or epoch == spec.training.epochs or stop_now


def step_checkpoint_due(spec: JobSpec, global_step: int, last_step: bool) -> bool:
    """A mid-epoch checkpoint after this step (``checkpoint.every_steps``; the epoch's end has its own)."""
    every = spec.checkpoint.every_steps
    return every is not None and global_step % every == 0 and not last_step


@dataclass
class EpochSums:
    """One rank's running sums over the current epoch (loss, correct predictions, samples, seconds)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0

    def add(self, loss_sum: float, correct: float, seen: int) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.seen += seen

    def counts(self) -> list[float]:
        """What the ranks all-reduce: loss, correct, seen (seconds stay each rank's own)."""
        return [self.loss, self.correct, self.seen]

    @staticmethod
    def to_save(totals: list[float], seconds: float) -> dict[str, float]:
        """What a mid-epoch checkpoint keeps of the epoch so far: loss, correct and seen summed over
        every rank (all-reduced just before, on every rank), and this rank's seconds."""
        loss, correct, seen = totals
        return {"loss": loss, "correct": correct, "seen": seen, "seconds": seconds}

    @classmethod
    def restored(cls, extra: dict[str, float], rank: int) -> EpochSums:
        """The sums a rank continues a mid-epoch resume with: rank 0 carries the saved totals, the
        others start from zero, so the epoch's final all-reduce counts every sample once."""
        seconds = float(extra.get("seconds", 0.0))
        if rank != 0:
            return cls(seconds=seconds)
        return cls(loss=float(extra.get("loss", 0.0)), correct=float(extra.get("correct", 0.0)),
                   seen=float(extra.get("seen", 0.0)), seconds=seconds)


def check_gan_losses_finite(epoch: int, g_sum: float, d_sum: float) -> None:
    """Fail the job, with the fix, once a gan's summed losses are no longer numbers."""
    if not (math.isfinite(g_sum) and math.isfinite(d_sum)):
        raise FloatingPointError(f"the gan's losses diverged at epoch {epoch} (generator {g_sum}, "
                                 f"discriminator {d_sum}); lower the learning rates")


def epoch_metrics(*, classify: bool, loss: float, correct: float, seen: float, seconds: float, val_loss: float,
                  val_accuracy: float, learning_rate: float, checkpoint_seconds: float) -> dict[str, float]:
    """A supervised epoch's report from the sums over all ranks (regression: losses are MSEs, no accuracy)."""
    metrics = {
        names.TRAIN_LOSS: loss / max(seen, 1),
        names.TRAIN_ACCURACY: correct / max(seen, 1),
        names.VAL_LOSS: val_loss,
        names.VAL_ACCURACY: val_accuracy,
        names.LEARNING_RATE: learning_rate,
        names.SAMPLES_PER_SECOND: seen / max(seconds, 1e-9),
        names.EPOCH_SECONDS: seconds,
        names.CHECKPOINT_SECONDS: checkpoint_seconds,
    }
    if not classify:
        del metrics[names.TRAIN_ACCURACY], metrics[names.VAL_ACCURACY]
    return metrics


def test_metrics(data: PreparedData, test_loss: float, test_accuracy: float) -> dict[str, float]:
    """The final report: test loss and accuracy, or for regression the loss and the naive baselines."""
    if data.task == "classification":
        return {names.TEST_LOSS: test_loss, names.TEST_ACCURACY: test_accuracy}
    final = {names.TEST_LOSS: test_loss}
    for split in ("val", "test"):  # the naive forecast to beat (sequence regression)
        baseline = last_value_mse(data, split)
        if baseline is not None:
            final[f"{split}_baseline_mse"] = baseline
    return final


def gan_epoch_metrics(*, g_sum: float, d_sum: float, seen: float, seconds: float, learning_rate: float,
                      checkpoint_seconds: float) -> dict[str, float]:
    """A gan epoch's report (``train_loss`` is the generator's, for the terminal and the dashboards)."""
    return {
        names.TRAIN_LOSS: g_sum / max(seen, 1),
        names.GENERATOR_LOSS: g_sum / max(seen, 1),
        names.DISCRIMINATOR_LOSS: d_sum / max(seen, 1),
        names.LEARNING_RATE: learning_rate,
        names.SAMPLES_PER_SECOND: seen / max(seconds, 1e-9),
        names.EPOCH_SECONDS: seconds,
        names.CHECKPOINT_SECONDS: checkpoint_seconds,
    }


def write_model_json(model_dir: Path, framework: str, spec: JobSpec, data: PreparedData, files: dict[str, str]) -> None:
    """``model.json`` beside an exported classifier or regressor: what predict and users need to load it."""
    meta = {
        "framework": framework,
        "model": spec.model.model_dump(mode="json") if spec.model else {"entrypoint": spec.entrypoint},
        "sample_shape": list(data.sample_shape),
        "num_classes": data.num_classes,
        "task": data.task,
        "preprocessing": data.preprocessor.to_json(),
        "files": files,
    }
    (model_dir / "model.json").write_text(json.dumps(meta, indent=1))
