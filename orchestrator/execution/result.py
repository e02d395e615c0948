"""What a finished job leaves behind, as one typed value (:class:`JobResult`).

The job store keeps a job's result as a JSON object (``orchestrator status -o json`` prints it);
:meth:`JobResult.to_dict` is that object, key for key, so the boundary stays a dict while the
driver builds a value mypy can check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.execution.tracker import RunTracker
from orchestrator.metrics import names

#: Files a GAN's model directory may hold for its generator, in order of preference.
_GENERATOR_FILES = ("generator.torchscript.pt", "generator_saved_model")


def summary_metrics(tracker: RunTracker) -> dict[str, Any]:
    """The latest epoch's metrics, the epochs trained, throughput over all epochs, and the final metrics."""
    epochs = tracker.epoch_metrics
    out: dict[str, Any] = {}
    if epochs:
        out.update(epochs[max(epochs)])
        out["epochs"] = max(epochs)
        total_time = sum(m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values())
        total_samples = sum(
            m.get(names.SAMPLES_PER_SECOND, 0.0) * m.get(names.EPOCH_SECONDS, 0.0) for m in epochs.values()
        )
        if total_time > 0:
            out[names.SAMPLES_PER_SECOND] = total_samples / total_time
    out.update(tracker.final_metrics)
    return out


def write_shards(path: Path, shards: dict[int, dict[int, list[int]]]) -> None:
    """Merge the sample indices each rank trained on per epoch into ``shards.json`` (a resumed
    job adds its epochs to the earlier run's)."""
    if not shards:
        return
    existing: dict[str, dict[str, list[int]]] = json.loads(path.read_text()) if path.exists() else {}
    for rank, epochs in shards.items():
        for epoch, indices in epochs.items():
            existing.setdefault(str(rank), {})[str(epoch)] = indices
    path.write_text(json.dumps(existing))


def _exists(path: Path) -> str | None:
    return str(path) if path.exists() else None


@dataclass(frozen=True)
class JobResult:
    """A finished job's result: its metrics, checkpoint, exported model files and run facts."""

    metrics: dict[str, Any]
    checkpoint: str | None
    model_path: str | None
    torchscript_path: str | None
    keras_path: str | None  # tensorflow: the Keras file ...
    saved_model_path: str | None  # ... and a SavedModel that takes raw inputs
    model_dir: str | None
    generator_path: str | None  # a GAN's generator, and where its samples are
    samples_dir: str | None
    tensorboard_dir: str
    time_to_first_step_s: float | None
    model_checksum: str | None
    device: str | None
    sync_backend: str | None
    peak_worker_rss_bytes: int | None

    @classmethod
    def build(cls, tracker: RunTracker, job_dir: Path, model_dir: Path, checkpoint: str | None,
              requested_at: float) -> JobResult:
        """The result from the tracker's state and the files the workers wrote."""
        generator = next((model_dir / name for name in _GENERATOR_FILES if (model_dir / name).exists()), None)
        return cls(
            metrics=summary_metrics(tracker),
            checkpoint=checkpoint,
            model_path=_exists(model_dir / "model.pt"),
            torchscript_path=_exists(model_dir / "model.torchscript.pt"),
            keras_path=_exists(model_dir / "model.keras"),
            saved_model_path=str(model_dir / "saved_model") if (model_dir / "saved_model").is_dir() else None,
            model_dir=str(model_dir) if (model_dir / "model.json").exists() else None,
            generator_path=str(generator) if generator else None,
            samples_dir=str(job_dir / "samples") if generator else None,
            tensorboard_dir=str(job_dir / "tensorboard"),
            time_to_first_step_s=(tracker.first_step_at - requested_at) if tracker.first_step_at else None,
            model_checksum=tracker.model_checksum,
            device=tracker.device,
            sync_backend=tracker.sync_backend,
            peak_worker_rss_bytes=tracker.peak_worker_rss_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form (a GAN's generator keys only for a GAN), in the order it always had."""
        out: dict[str, Any] = {
            "metrics": self.metrics,
            "checkpoint": self.checkpoint,
            "model_path": self.model_path,
            "torchscript_path": self.torchscript_path,
            "keras_path": self.keras_path,
            "saved_model_path": self.saved_model_path,
            "model_dir": self.model_dir,
        }
        if self.generator_path is not None:
            out.update(generator_path=self.generator_path, samples_dir=self.samples_dir)
        out.update(
            tensorboard_dir=self.tensorboard_dir,
            time_to_first_step_s=self.time_to_first_step_s,
            model_checksum=self.model_checksum,
            device=self.device,
            sync_backend=self.sync_backend,
            peak_worker_rss_bytes=self.peak_worker_rss_bytes,
        )
        return out
