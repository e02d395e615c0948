"""Framework-neutral pieces of the gan loops: the sample grid, its PNG, and the quality proxy."""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np

from orchestrator.events import Image
from orchestrator.metrics import names
from orchestrator.runtime.data import PreparedData
from orchestrator.runtime.session import TrainSession

GRID = 8  # an 8 x 8 grid of samples per epoch
QUALITY_SAMPLES = 256


def png_bytes(image: np.ndarray) -> bytes:
    """A grey-scale PNG of ``image`` (2-D, values in [0, 1]), with zlib alone."""
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def sample_grid(samples: np.ndarray, scale: int = 4) -> np.ndarray:
    """``GRID`` x ``GRID`` images (N, 1, h, w) in [0, 1] tiled into one picture, each pixel scaled up."""
    n, _, h, w = samples.shape
    side = int(math.ceil(math.sqrt(n)))
    grid = np.zeros((side * (h + 1) + 1, side * (w + 1) + 1), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, side)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = samples[i, 0]
    return np.kron(grid, np.ones((scale, scale), dtype=np.float32))


def confident_share(x_train: np.ndarray, y_train: np.ndarray, samples: list[np.ndarray],
                    threshold: float = 0.8) -> list[float]:
    """For each array of ``samples``: the share a classifier of the real data puts in one class at >= ``threshold``.

    The classifier is a logistic regression (C=10) on the real training split; on the digits it
    gives 96% of the real validation digits a class at >= 0.8, the reference to read a GAN's share
    against (the loop reports both).
    """
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=10.0, max_iter=3000).fit(x_train.reshape(len(x_train), -1), y_train)
    return [float((classifier.predict_proba(s.reshape(len(s), -1)).max(axis=1) >= threshold).mean())
            for s in samples]


def confident_metrics(data: PreparedData, samples: np.ndarray) -> dict[str, float]:
    """A gan's final quality report: the confident share of its ``samples`` and of the real validation split."""
    share, real_share = confident_share(data.x_train, data.y_train, [samples, data.x_val])
    return {names.CONFIDENT_SAMPLES: share, names.CONFIDENT_REAL: real_share}


def emit_grid(sess: TrainSession, samples: np.ndarray, epoch: int) -> None:
    """Rank 0: a grid of ``samples`` (N, 1, h, w) in [0, 1] as ``samples/epoch-NNNN.png`` and a TensorBoard image."""
    if samples.ndim != 4 or samples.shape[1] != 1:
        return  # only single-channel images make a grid
    grid = sample_grid(samples)
    png = png_bytes(grid)
    folder = sess.paths.job_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"epoch-{epoch:04d}.png").write_bytes(png)
    sess.publish(folder / f"epoch-{epoch:04d}.png", f"samples/epoch-{epoch:04d}.png")
    sess.emit(Image(tag=names.SAMPLES_IMAGE_TAG, epoch=epoch, height=grid.shape[0], width=grid.shape[1],
                    colorspace=1, png=base64.b64encode(png).decode("ascii")))
