"""Predictions from a finished job's saved model (``orchestrator predict``).

The TorchScript file takes raw inputs, exactly like the data file's ``x`` (the training
preprocessing is inside it), so predicting needs nothing but that file and ``model.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import UsageError


def read_inputs(path: str, sample_shape: tuple[int, ...]) -> np.ndarray:
    """The ``x`` array of an .npz file, shaped like the model's samples (an 8x8 image may drop its channel)."""
    import zipfile
    import zlib

    from orchestrator.spec.datafile import DataFileError, inspect_npz

    save_hint = "save it with numpy.savez(path, x=samples)"
    try:
        inspect_npz(path, ("x",), save_hint=save_hint)  # headers only: a bad file fails before any load
    except DataFileError as exc:
        raise UsageError(f"--input {path}: {exc.message}", fix=exc.fix) from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = np.asarray(npz["x"])
    except MemoryError:
        raise UsageError(f"--input {path}: the samples do not fit in memory", fix="predict a smaller batch") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zlib.error) as exc:
        raise UsageError(f"cannot read {path}: {str(exc)[:200] or type(exc).__name__}",
                         fix="give an .npz file saved with numpy.savez(path, x=...)") from None
    if x.size == 0 or x.ndim == 0:
        raise UsageError(f"{path}: x holds no samples", fix="give at least one sample")
    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{path}: x must be numeric, got {x.dtype}", fix="convert it to a float array")
    if tuple(x.shape[1:]) != sample_shape and len(sample_shape) == 3 and sample_shape[0] == 1 \
            and tuple(x.shape[1:]) == sample_shape[1:]:
        x = x[:, None]  # (N, 8, 8) for a model of (1, 8, 8) samples, as training loads them
    if x.ndim == len(sample_shape) and tuple(x.shape) == sample_shape:
        x = x[None]  # one sample
    if tuple(x.shape[1:]) != sample_shape:
        raise UsageError(f"{path}: samples are shaped {tuple(x.shape[1:])}, the model takes {sample_shape}",
                         fix=f"give x shaped (N, {', '.join(map(str, sample_shape))})")
    return x.astype(np.float32)


def predict(model_dir: Path, x: np.ndarray) -> dict[str, Any]:
    """Class (and its probability, and all probabilities) per sample, or the value for regression.

    A torch job's TorchScript file or a tensorflow job's SavedModel, as ``model.json`` says; both
    take raw inputs and give logits (or the value).
    """
    meta = json.loads((model_dir / "model.json").read_text())
    if meta.get("framework") == "tensorflow":
        out = _tensorflow_outputs(model_dir / meta["files"]["saved_model"], x)
    else:
        import torch

        model = torch.jit.load(str(model_dir / meta["files"]["torchscript"]), map_location="cpu").eval()
        with torch.no_grad():
            out = model(torch.from_numpy(x)).numpy()
    if meta.get("task") == "classification":
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return {"task": "classification", "predictions": [int(v) for v in best],
                "probability": [round(float(probs[i, b]), 6) for i, b in enumerate(best)],
                "probabilities": [[round(float(v), 6) for v in row] for row in probs]}
    return {"task": "regression", "predictions": [float(v) for v in out.reshape(len(x), -1)[:, 0]]}


def _tensorflow_outputs(saved_model: Path, x: np.ndarray) -> np.ndarray:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    return np.asarray(loaded.serve(tf.constant(x, tf.float32)).numpy(), dtype=np.float64)
