"""The numpy augmentation of the tensorflow path: the laws the torch one keeps, and the same warp."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from orchestrator.runtime.augment_numpy import _warp, augment_batch, batch_rng
from orchestrator.spec.models import AugmentSpec


def images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)


def aug(**fields: Any) -> AugmentSpec:
    return AugmentSpec.model_validate(fields)


def test_no_augmentation_is_the_identity_and_the_input_is_not_changed() -> None:
    x = images()
    assert augment_batch(x, aug(), batch_rng(1, 1, 0, 0)) is x
    np.testing.assert_allclose(augment_batch(x, aug(rotate=0.0, scale=[1.0, 1.0]), batch_rng(1, 1, 0, 0)), x)
    before = x.copy()
    out = augment_batch(x, aug(noise=0.5, crop=2, rotate=20, flip={"horizontal": 1.0}), batch_rng(1, 1, 0, 0))
    np.testing.assert_array_equal(x, before)
    assert out.shape == x.shape and out.dtype == np.float32


def test_flips_follow_their_probability_and_twice_is_the_identity() -> None:
    x = images()
    once = augment_batch(x, aug(flip={"horizontal": 1.0}), batch_rng(1, 1, 0, 0))
    np.testing.assert_array_equal(once, x[..., ::-1])
    np.testing.assert_array_equal(augment_batch(once, aug(flip={"horizontal": 1.0}), batch_rng(1, 1, 0, 1)), x)
    np.testing.assert_array_equal(augment_batch(x, aug(flip={"vertical": 1.0}), batch_rng(1, 1, 0, 0)), x[..., ::-1, :])
    many = images(2000)
    half = augment_batch(many, aug(flip={"horizontal": 0.5}), batch_rng(1, 1, 0, 0))
    share = (half == many[..., ::-1]).reshape(2000, -1).all(1).mean()
    assert 0.45 <= share <= 0.55


def test_the_same_step_gives_the_same_batch_and_another_step_another() -> None:
    x, spec = images(), aug(rotate=15, translate=0.1, scale=[0.9, 1.1], crop=1, noise=0.1, flip={"horizontal": 0.5})
    first = augment_batch(x, spec, batch_rng(7, 3, 1, 5))
    np.testing.assert_array_equal(first, augment_batch(x, spec, batch_rng(7, 3, 1, 5)))
    assert not np.array_equal(first, augment_batch(x, spec, batch_rng(7, 3, 1, 6)))
    assert not np.array_equal(first, augment_batch(x, spec, batch_rng(7, 3, 0, 5)))


def test_crop_shifts_each_image_by_whole_pixels_within_the_padding() -> None:
    x = np.tile(np.arange(64.0, dtype=np.float32).reshape(1, 1, 8, 8), (32, 1, 1, 1))
    out = augment_batch(x, aug(crop=1), batch_rng(1, 1, 0, 0))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    for i in range(32):
        assert any(np.array_equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8]) for dy in range(3) for dx in range(3))
    assert len({o.tobytes() for o in out}) > 1


def test_noise_has_the_asked_standard_deviation() -> None:
    out = augment_batch(np.zeros((400, 1, 8, 8), np.float32), aug(noise=0.2), batch_rng(1, 1, 0, 0))
    assert abs(float(out.mean())) < 0.01 and abs(float(out.std()) - 0.2) < 0.01


def test_sequences_get_the_noise_alone() -> None:
    x = np.zeros((50, 24), np.float32)
    out = augment_batch(x, aug(noise=0.1, rotate=30, flip={"horizontal": 1.0}), batch_rng(1, 1, 0, 0))
    assert out.shape == x.shape and 0.08 < float(out.std()) < 0.12


@pytest.mark.parametrize(("angle", "zoom", "tx", "ty"), [(20.0, 1.0, 0.0, 0.0), (-35.0, 1.1, 0.1, -0.05),
                                                          (0.0, 0.9, -0.1, 0.1), (90.0, 1.0, 0.0, 0.0)])
def test_the_warp_is_the_torch_paths_warp(angle: float, zoom: float, tx: float, ty: float) -> None:
    """The same rotation, zoom and shift give the same pixels as torch's affine_grid + grid_sample."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    image = np.random.default_rng(3).random((8, 8)).astype(np.float32)
    a = angle * math.pi / 180
    cos, sin = math.cos(a) / zoom, math.sin(a) / zoom
    theta = torch.tensor([[[cos, -sin, 2 * tx], [sin, cos, 2 * ty]]], dtype=torch.float32)
    grid = f.affine_grid(theta, [1, 1, 8, 8], align_corners=False)
    expected = f.grid_sample(torch.from_numpy(image)[None, None], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(_warp(image, a, zoom, tx, ty), expected, atol=1e-5)
