"""Data augmentation for training batches (``data.augment``), in torch.

Applied to the training split only, after preprocessing, to a batch of images shaped
(batch, channels, height, width); other shapes get the noise alone. Every random draw comes from
a generator seeded by (seed, epoch, rank, step), so a run and its mid-epoch resume see exactly the
same augmented batches. Order: flips, one affine warp (rotation, translation, zoom; pixels that
come from outside the image repeat the border, which is background for digits), the random crop
(pad by ``crop`` pixels, cut back to the original size: a shift by whole pixels), then noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from orchestrator.spec.models import AugmentSpec


def batch_generator(seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    """The generator for one training step (deterministic, different for every step and rank)."""
    import numpy as np

    mixed = int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(mixed)


def augment_batch(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """An augmented copy of ``x`` (the input is not changed)."""
    if not spec.active:
        return x
    n = x.shape[0]
    out = x.clone()

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen)).to(x.device)

    if x.dim() == 4:
        if spec.flip.horizontal:
            flip = (torch.rand(n, generator=gen) < spec.flip.horizontal).to(x.device)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        if spec.flip.vertical:
            flip = (torch.rand(n, generator=gen) < spec.flip.vertical).to(x.device)
            out = torch.where(flip[:, None, None, None], out.flip(-2), out)
        low, high = (spec.scale[0], spec.scale[1]) if spec.scale is not None else (1.0, 1.0)
        if spec.rotate or spec.translate or (low, high) != (1.0, 1.0):
            angle = uniform(-spec.rotate, spec.rotate) * (math.pi / 180.0)
            zoom = uniform(low, high)
            # normalised coordinates span 2 per side: a shift of fraction f is 2f
            tx = uniform(-spec.translate, spec.translate) * 2.0
            ty = uniform(-spec.translate, spec.translate) * 2.0
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(out.dtype), list(out.shape), align_corners=False)
            out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if spec.crop:
            pad = spec.crop
            h, w = out.shape[-2:]
            padded = F.pad(out, (pad, pad, pad, pad), mode="replicate")
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
            out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if spec.noise:
        out = out + spec.noise * torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return out
