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
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UsageError(f"{path} is a single array, not an .npz file",
                             fix="save it with numpy.savez(path, x=samples)")
        with loaded as npz:
            if "x" not in npz.files:
                raise UsageError(f"{path} has no array named x (it has {', '.join(npz.files) or 'none'})",
                                 fix="save it with numpy.savez(path, x=samples)")
            x = np.asarray(npz["x"])
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", fix="give an .npz file saved with numpy.savez(path, x=...)") \
            from None
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
    """Class (and its probability, and all probabilities) per sample, or the value for regression."""
    import torch

    meta = json.loads((model_dir / "model.json").read_text())
    model = torch.jit.load(str(model_dir / meta["files"]["torchscript"]), map_location="cpu").eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    if meta.get("task") == "classification":
        probs = torch.softmax(out, dim=1)
        best = probs.max(dim=1)
        return {"task": "classification", "predictions": best.indices.tolist(),
                "probability": [round(float(p), 6) for p in best.values],
                "probabilities": [[round(float(v), 6) for v in row] for row in probs]}
    return {"task": "regression", "predictions": [float(v) for v in out.reshape(len(x), -1)[:, 0]]}
