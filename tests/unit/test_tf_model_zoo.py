"""The rest of the model zoo in tensorflow (Keras 2), in one process: the embedding rnn on the tokens
source, AveragePooling2D, the strided cnn and the DCGAN; the same layers, sizes and numbers as torch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("tf_keras", reason="the tensorflow extra is not installed (pip install 'train-orchestrator[tensorflow]')")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from orchestrator.models import keras_models as km  # noqa: E402
from orchestrator.models import torch_models as tm  # noqa: E402
from orchestrator.spec.shapes import TOKENS_STEPS, TOKENS_VOCAB  # noqa: E402
from tests.unit.test_tf_runtime import _close_sessions, run, spec_of  # noqa: E402,F401 (the fixture too)

TOKENS: dict[str, Any] = {"source": "tokens", "preprocessing": "none"}
DCGAN: dict[str, Any] = {"type": "gan", "architecture": "dcgan"}
GAN_DATA: dict[str, Any] = {"preprocessing": "normalize", "validation_fraction": 0.05, "test_fraction": 0.05}


def torch_count(model: torch.nn.Module) -> int:
    """Parameters plus batch-norm running statistics (Keras counts its moving mean and variance)."""
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))


def test_a_keras_rnn_with_an_embedding_learns_the_tokens_and_its_savedmodel_reads_raw_ids(tmp_path: Path) -> None:
    from orchestrator.models.predict import predict
    from orchestrator.runtime.tokens import token_sequences

    spec = spec_of({"type": "rnn", "cell": "gru", "hidden": 32, "embedding": {"vocab_size": TOKENS_VOCAB, "dim": 16}},
                   data=TOKENS, training={"epochs": 5, "batch_size": 64, "learning_rate": 0.01})
    final, sess, _ = run(tmp_path, spec)
    assert sess.of("epoch")[-1]["metrics"]["val_accuracy"] >= 0.90, sess.of("epoch")[-1]["metrics"]
    assert final["test_accuracy"] >= 0.90, final
    raw, labels = token_sequences()
    out = predict(tmp_path / "model", raw[:200].astype(np.float32))  # ids as `orchestrator predict` reads them
    assert float(np.mean(np.array(out["predictions"]) == labels[:200])) >= 0.85


def test_keras_builders_have_the_torch_sizes() -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any], tuple[int, ...], int]] = [
        ({"type": "rnn", "cell": "gru", "hidden": 16, "embedding": {"vocab_size": TOKENS_VOCAB, "dim": 8}}, TOKENS,
         (TOKENS_STEPS,), 4),
        ({"type": "cnn", "conv_filters": [8, 16], "conv_strides": [2, 2], "kernel_size": 4}, {}, (1, 8, 8), 10),
        ({"type": "cnn", "conv_filters": [8], "conv_strides": [2], "padding": "valid", "pool": False}, {}, (1, 8, 8), 10),
        ({"type": "sequential", "layers": ["AveragePooling2D(3, strides=2, padding='same')", "Conv2D(4, 3)",
                                           "AveragePooling2D(2)", "Flatten()", "Dense(10)"]}, {}, (1, 7, 7), 10),
    ]
    for model, data, shape, outputs in cases:
        spec = spec_of(model, data=data).model
        builder = {"rnn": "build_rnn", "cnn": "build_cnn", "sequential": "build_sequential"}[model["type"]]
        keras_model = getattr(km, builder)(spec, shape, outputs)
        torch_model = getattr(tm, builder)(spec, shape, outputs)
        assert keras_model.count_params() == torch_count(torch_model), model
        assert tuple(keras_model.output_shape[1:]) == (outputs,)
    g, d = km.build_gan(spec_of(DCGAN, data=GAN_DATA).model, (1, 8, 8))  # type: ignore[arg-type]
    tg, td = tm.build_gan(spec_of(DCGAN, data=GAN_DATA).model, (1, 8, 8))  # type: ignore[arg-type]
    assert (g.count_params(), d.count_params()) == (torch_count(tg), torch_count(td))
    assert tuple(g.output_shape[1:]) == (1, 8, 8) and tuple(d.output_shape[1:]) == (1,)


def _copy_torch_into_keras(torch_model: torch.nn.Module, keras_model: Any, flatten_from: tuple[int, ...] | None) -> None:
    """Each torch layer's weights into the Keras layer of the same kind, in order (kernel layouts
    converted; ``flatten_from``: the (c, h, w) before a Flatten, whose Dense rows Keras orders h, w, c)."""
    import tf_keras as keras

    weighted = [m for m in torch_model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d,
                torch.nn.ConvTranspose2d, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    layers = [layer for layer in keras_model.layers if layer.weights]
    assert len(weighted) == len(layers)
    for module, layer in zip(weighted, layers, strict=True):
        w = module.weight.detach().numpy() if hasattr(module, "weight") else None
        if isinstance(module, torch.nn.Linear):
            kernel = w.T  # type: ignore[union-attr]
            if flatten_from is not None and kernel.shape[0] == int(np.prod(flatten_from)):
                c, h, wd = flatten_from
                kernel = kernel.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1)
            values = [kernel]
        elif isinstance(module, torch.nn.ConvTranspose2d):
            values = [w.transpose(2, 3, 1, 0)]  # type: ignore[union-attr]  # (in, out, kh, kw) -> (kh, kw, out, in)
        elif isinstance(module, torch.nn.Conv2d):
            values = [w.transpose(2, 3, 1, 0)]  # type: ignore[union-attr]  # (out, in, kh, kw) -> (kh, kw, in, out)
        else:
            assert isinstance(layer, keras.layers.BatchNormalization)
            values = [w, module.bias.detach().numpy(), module.running_mean.numpy(), module.running_var.numpy()]  # type: ignore[union-attr]
        if not isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) and module.bias is not None:
            values.append(module.bias.detach().numpy())
        layer.set_weights(values)


def test_the_dcgan_and_a_strided_cnn_compute_the_same_numbers_in_both_frameworks() -> None:
    torch.manual_seed(0)
    spec: Any = spec_of(DCGAN, data=GAN_DATA).model
    tg, td = tm.build_gan(spec, (1, 8, 8))
    for m in tg.modules():  # non-trivial batch-norm statistics, so copying them is tested too
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    kg, kd = km.build_gan(spec, (1, 8, 8))
    _copy_torch_into_keras(tg, kg, None)
    _copy_torch_into_keras(td, kd, (64, 2, 2))
    z = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    tg.eval()
    td.eval()
    with torch.no_grad():
        t_images = tg(torch.from_numpy(z)).numpy()
        t_logits = td(torch.from_numpy(t_images)).numpy()
    k_images = kg(z, training=False).numpy()
    np.testing.assert_allclose(k_images, t_images, atol=1e-5)
    np.testing.assert_allclose(kd(t_images, training=False).numpy(), t_logits, atol=1e-4)
    # a cnn with 'same' padding, an even kernel and stride 2: TensorFlow's uneven padding, in torch too
    cnn: Any = spec_of({"type": "cnn", "conv_filters": [4], "conv_strides": [2], "kernel_size": 4,
                        "batch_norm": False, "pool": False, "dense_units": []}).model
    tc, kc = tm.build_cnn(cnn, (1, 7, 7), 10).eval(), km.build_cnn(cnn, (1, 7, 7), 10)
    _copy_torch_into_keras(tc, kc, (4, 4, 4))
    x = np.random.default_rng(1).standard_normal((3, 1, 7, 7)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(kc(x, training=False).numpy(), tc(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_average_pooling_same_averages_like_keras() -> None:
    spec: Any = spec_of({"type": "sequential", "layers": ["AveragePooling2D(3, strides=2, padding='same')",
                                                          "AveragePooling2D((2, 3), strides=1, padding='same')",
                                                          "Flatten()", "Dense(10)"]}).model
    import tf_keras as keras

    k = km.build_sequential(spec, (2, 7, 7), 10)
    t = tm.build_sequential(spec, (2, 7, 7), 10).eval()
    x = np.random.default_rng(2).random((3, 2, 7, 7)).astype(np.float32)
    pooled = keras.Model(k.input, k.layers[3].output)(x).numpy()  # input, permute, pool, pool
    out = torch.from_numpy(x)
    for module in list(t)[:3]:  # permute, pool, pool
        out = module(out)
    assert pooled.shape == (3, 4, 4, 2)
    np.testing.assert_allclose(out.numpy(), pooled, atol=1e-6)


def test_the_keras_dcgan_trains_in_the_gan_loop_and_exports_its_generator(tmp_path: Path) -> None:
    spec = spec_of({**DCGAN, "latent": 16}, data={"source": "digits", **GAN_DATA},
                   training={"epochs": 4, "batch_size": 64, "seed": 0})
    final, sess, _ = run(tmp_path, spec)
    epochs = [e["metrics"] for e in sess.of("epoch")]
    assert len(epochs) == 4
    d_losses = [e["discriminator_loss"] for e in epochs]
    assert all(math.isfinite(v) and math.isfinite(e["generator_loss"]) for v, e in zip(d_losses, epochs, strict=True))
    assert d_losses[0] < 1.3 and max(d_losses) - min(d_losses) > 0.02, d_losses  # it learns, then is pushed back
    assert final["confident_real"] >= 0.9 and 0.0 <= final["confident_samples"] <= 1.0
    assert (tmp_path / "samples" / "epoch-0004.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = tf.saved_model.load(str(tmp_path / "model" / "generator_saved_model"))
    drawn = loaded.generate(tf.random.normal([5, 16])).numpy()
    assert drawn.shape == (5, 1, 8, 8) and drawn.min() >= -1e-4 and drawn.max() <= 16.0 + 1e-3
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["model"]["architecture"] == "dcgan" and meta["framework"] == "tensorflow"
