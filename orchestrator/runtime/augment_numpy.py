"""Data augmentation for training batches in numpy (the tensorflow path; torch has its own).

The same semantics as :mod:`orchestrator.runtime.augment`: training split only, after
preprocessing, images shaped (batch, channels, height, width) (other shapes get the noise alone);
flips, then one affine warp (rotation, translation, zoom about the centre; pixels from outside the
image repeat the border, bilinear), then the random crop (pad by ``crop`` pixels repeating the
border, cut back: a whole-pixel shift), then gaussian noise. Every draw comes from a numpy
generator seeded by (seed, epoch, rank, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import math

import numpy as np

from orchestrator.spec.models import AugmentSpec


def batch_rng(seed: int, epoch: int, rank: int, step: int) -> np.random.Generator:
    """The generator for one training step (deterministic, different for every step and rank)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, step]))


def _warp(image: np.ndarray, angle: float, zoom: float, tx: float, ty: float) -> np.ndarray:
    """One (h, w) image rotated by ``angle`` (radians), zoomed, shifted by (tx, ty) fractions of a side.

    The same map as torch's ``affine_grid``/``grid_sample`` (align_corners=False, border padding):
    an output pixel at normalised (u, v) reads the input at A (u, v) + 2 (tx, ty), with A the
    rotation divided by the zoom.
    """
    from scipy import ndimage

    h, w = image.shape
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # (row, col) order: row_in = (h/2) (sin u + cos v + 2ty) + cy, col_in = (w/2) (cos u - sin v + 2tx) + cx
    matrix = np.array([[cos, sin * h / w], [-sin * w / h, cos]])
    offset = np.array([cy + h * ty, cx + w * tx]) - matrix @ np.array([cy, cx])
    return ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="nearest")


def augment_batch(x: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """An augmented copy of ``x`` (the input is not changed)."""
    if not spec.active:
        return x
    out = np.array(x, dtype=np.float32, copy=True)
    n = len(out)
    if out.ndim == 4:
        if spec.flip.horizontal:
            flip = rng.random(n) < spec.flip.horizontal
            out[flip] = out[flip][..., ::-1]
        if spec.flip.vertical:
            flip = rng.random(n) < spec.flip.vertical
            out[flip] = out[flip][..., ::-1, :]
        low, high = (spec.scale[0], spec.scale[1]) if spec.scale is not None else (1.0, 1.0)
        if spec.rotate or spec.translate or (low, high) != (1.0, 1.0):
            angle = rng.uniform(-spec.rotate, spec.rotate, n) * (math.pi / 180.0)
            zoom = rng.uniform(low, high, n)
            tx = rng.uniform(-spec.translate, spec.translate, n)
            ty = rng.uniform(-spec.translate, spec.translate, n)
            for i in range(n):
                for c in range(out.shape[1]):
                    out[i, c] = _warp(out[i, c], angle[i], zoom[i], tx[i], ty[i])
        if spec.crop:
            pad = spec.crop
            h, w = out.shape[-2:]
            padded = np.pad(out, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
            dy = rng.integers(0, 2 * pad + 1, n)
            dx = rng.integers(0, 2 * pad + 1, n)
            out = np.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if spec.noise:
        out = out + (spec.noise * rng.standard_normal(out.shape)).astype(np.float32)
    return out.astype(np.float32, copy=False)
