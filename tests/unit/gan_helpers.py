"""The GAN quality check shared by the unit test and ``bench/gan_spread.py`` (which measures its spread)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

GAN: dict[str, Any] = {"type": "gan"}
GAN_DATA: dict[str, Any] = {"preprocessing": "normalize", "validation_fraction": 0.05, "test_fraction": 0.05}


def train_gan_share(seed: int, epochs: int = 60, threads: int = 1, samples: int = 256) -> dict[str, float]:
    """Train the built-in GAN with the loop's own step (gan_step) for ``epochs`` on the real training
    digits, in this process, and judge ``samples`` generated digits with a classifier of the real ones:

    - ``share``: the share it puts in one class at >= 0.8 (the loop's quality proxy; ``real_share``:
      the same for the real validation digits);
    - ``classes``: how many of the 10 digits at least 2% of the samples are confidently classified as,
      and ``top_class``: the largest share of samples confidently given one class. An untrained
      generator draws nearly the same blob for every latent vector, which the classifier calls one
      digit with confidence: a high ``share`` but one class (mode collapse looks the same).

    Deterministic for a given (seed, epochs, threads): one seed drives the weights, the batch order and
    the latent draws, and torch runs on ``threads`` intra-op threads (a different thread count changes
    the order of floating-point sums, hence the result); the thread count is restored afterwards.
    """
    from sklearn.linear_model import LogisticRegression

    from orchestrator.models.torch_models import build_gan
    from orchestrator.runtime.data import prepare_data
    from orchestrator.runtime.gan_loop import gan_step
    from orchestrator.runtime.images import confident_share
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate({"name": "zoo", "model": GAN, "data": GAN_DATA})
    gan: Any = spec.model
    data = prepare_data(spec.data, 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        generator, discriminator = build_gan(gan, data.sample_shape)
        g_opt = torch.optim.Adam(
            generator.parameters(), lr=gan.generator_learning_rate, betas=(gan.beta1, 0.999)
        )
        d_opt = torch.optim.Adam(
            discriminator.parameters(), lr=gan.discriminator_learning_rate, betas=(gan.beta1, 0.999)
        )
        x = torch.from_numpy(data.x_train)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                g_loss, d_loss = gan_step(
                    generator, discriminator, g_opt, d_opt, x[order[i : i + 64]], gan.latent, 0.9
                )
                assert math.isfinite(float(g_loss)) and math.isfinite(float(d_loss)), (g_loss, d_loss)
        generator.eval()
        with torch.no_grad():
            out = generator(torch.randn(samples, gan.latent, generator=gen)).numpy()
    finally:
        torch.set_num_threads(before)
    assert out.shape == (samples, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    share, real_share = confident_share(data.x_train, data.y_train, [out, data.x_val])
    classifier = LogisticRegression(C=10.0, max_iter=3000).fit(
        data.x_train.reshape(len(data.x_train), -1), data.y_train
    )
    proba = classifier.predict_proba(out.reshape(samples, -1))
    confident = proba.argmax(axis=1)[proba.max(axis=1) >= 0.8]
    counts = np.bincount(confident, minlength=10)
    return {
        "share": share,
        "real_share": real_share,
        "classes": int((counts >= 0.02 * samples).sum()),
        "top_class": float(counts.max() / samples),
    }
