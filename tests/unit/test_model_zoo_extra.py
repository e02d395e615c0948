"""The rest of the seed's model zoo in torch, in-process (no Ray): token-id text classification with an
embedding (the generated ``tokens`` source), AveragePooling2D, stride and padding on the built-in cnn
(validated against the data), and the DCGAN beside the dense gan: shapes, validation, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from orchestrator.errors import SpecError
from orchestrator.models.torch_models import build_cnn, build_gan, build_rnn, build_sequential
from orchestrator.runtime.data import prepare_data
from orchestrator.runtime.tokens import MARKER_A, MARKER_B, MARKER_C, token_sequences
from orchestrator.spec import load_spec
from orchestrator.spec.models import JobSpec
from orchestrator.spec.shapes import TOKENS_STEPS, TOKENS_VOCAB

REPO = Path(__file__).resolve().parents[2]
TOKENS: dict[str, Any] = {"source": "tokens", "preprocessing": "none"}
EMBEDDED_LSTM: dict[str, Any] = {"type": "rnn", "cell": "lstm", "hidden": 32,
                                 "embedding": {"vocab_size": TOKENS_VOCAB, "dim": 16}}
DCGAN: dict[str, Any] = {"type": "gan", "architecture": "dcgan"}
GAN_DATA: dict[str, Any] = {"preprocessing": "normalize", "validation_fraction": 0.05, "test_fraction": 0.05}


def spec_of(model: dict[str, Any], **extra: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "zoo", "model": model, **extra})


def refused(model: dict[str, Any], **extra: Any) -> str:
    """The message and fix with which the spec is refused (as `orchestrator validate` shows them)."""
    with pytest.raises(ValidationError) as err:
        spec_of(model, **extra)
    error = err.value.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if cause is None:  # a single field's bound
        return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    return f"{getattr(cause, 'field_path', '')}: {cause} / fix: {getattr(cause, 'fix', '')}"


def fit(model: torch.nn.Module, spec: JobSpec, epochs: int, lr: float = 0.01) -> tuple[float, float]:
    """Train in this process as one worker would (seeded, one thread); (first epoch's, last) val accuracy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = prepare_data(spec.data, 0)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        order_rng = np.random.default_rng(0)
        accuracies = []
        for _ in range(epochs):
            model.train()
            order = torch.from_numpy(order_rng.permutation(len(x)))
            for i in range(0, len(x), 64):
                sel = order[i : i + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[sel]), y[sel]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                pred = model(torch.from_numpy(data.x_val)).argmax(1)
            accuracies.append(float((pred == torch.from_numpy(data.y_val)).float().mean()))
    finally:
        torch.set_num_threads(before)
    return accuracies[0], accuracies[-1]


# -- the tokens source ---------------------------------------------------------------------------------

def test_token_sequences_hold_their_markers_and_the_class_follows_them() -> None:
    x, y = token_sequences(noise=0.0)
    assert x.shape == (3000, TOKENS_STEPS) and x.dtype == np.int64 and 0 <= x.min() and x.max() < TOKENS_VOCAB
    assert ((x == MARKER_A).sum(1) == 1).all() and ((x == MARKER_B).sum(1) == 1).all()
    has_c = (x == MARKER_C).any(1)
    a_first = (x == MARKER_A).argmax(1) < (x == MARKER_B).argmax(1)
    np.testing.assert_array_equal(y, 2 * has_c + a_first)
    assert np.bincount(y).min() > 600  # four classes of about 750
    noisy_x, noisy_y = token_sequences()
    np.testing.assert_array_equal(noisy_x, x)  # the same sequences, seeded
    assert 0.02 < float((noisy_y != y).mean()) < 0.06  # 5% relabelled at random (3 in 4 to another class)
    assert np.array_equal(token_sequences()[1], noisy_y)


def test_a_bag_of_words_cannot_solve_the_tokens_task() -> None:
    """Counts of each id (order thrown away): only C's presence is visible, so at most about half right."""
    from sklearn.linear_model import LogisticRegression

    data = prepare_data(spec_of(EMBEDDED_LSTM, data=TOKENS).data, 0)

    def bag(x: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(row.astype(np.int64), minlength=TOKENS_VOCAB) for row in x])

    clf = LogisticRegression(max_iter=2000).fit(bag(data.x_train), data.y_train)
    accuracy = float((clf.predict(bag(data.x_val)) == data.y_val).mean())
    assert 0.40 <= accuracy <= 0.56, accuracy


def test_token_ids_reach_the_model_unchanged() -> None:
    data = prepare_data(spec_of(EMBEDDED_LSTM, data=TOKENS).data, 0)
    assert data.sample_shape == (TOKENS_STEPS,) and data.num_classes == 4 and data.preprocessor.kind == "none"
    raw, _ = token_sequences()
    np.testing.assert_array_equal(data.x_train, raw[data.train_index].astype(np.float32))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_rnn_with_an_embedding_learns_the_order_of_the_markers(cell: str) -> None:
    spec = spec_of({**EMBEDDED_LSTM, "cell": cell}, data=TOKENS)
    model = build_rnn(spec.model, (TOKENS_STEPS,), 4)  # type: ignore[arg-type]
    assert model.rows.weight.shape == (TOKENS_VOCAB, 16)  # type: ignore[union-attr]
    first, last = fit(model, spec, epochs=6)
    # chance is 0.25 and a bag of words about 0.5; the 5% label noise caps it near 0.96
    assert last >= 0.90, (first, last)


def test_a_keras_style_embedding_layer_list_learns_it_too() -> None:
    layers = [f"Embedding({TOKENS_VOCAB}, 16, input_shape=({TOKENS_STEPS},))", "GRU(32)",
              "Dense(4, activation='softmax')"]
    spec = spec_of({"type": "sequential", "layers": layers}, data=TOKENS)
    model = build_sequential(spec.model, (TOKENS_STEPS,), 4)  # type: ignore[arg-type]
    assert sum(p.numel() for p in model[1].parameters()) == TOKENS_VOCAB * 16  # the table, as Keras counts it
    _, last = fit(model, spec, epochs=6)
    assert last >= 0.90, last


def test_the_exported_embedding_model_predicts_from_raw_token_ids(tmp_path: Path) -> None:
    from orchestrator.models.predict import predict, read_inputs
    from orchestrator.runtime.torch_ddp import build_model, export_torch_model

    spec = spec_of(EMBEDDED_LSTM, data=TOKENS)
    data = prepare_data(spec.data, 0)
    torch.manual_seed(0)
    net = build_model(spec, data).eval()
    export_torch_model(net, data, spec, tmp_path)
    raw, _ = token_sequences()
    np.savez(tmp_path / "x.npz", x=raw[:20])  # int64 ids, as a user has them
    out = predict(tmp_path, read_inputs(str(tmp_path / "x.npz"), (TOKENS_STEPS,)))
    with torch.no_grad():
        expected = net(torch.from_numpy(raw[:20])).argmax(1).tolist()
    assert out["predictions"] == expected
    assert json.loads((tmp_path / "model.json").read_text())["sample_shape"] == [TOKENS_STEPS]


@pytest.mark.parametrize(("model", "data", "words"), [
    (EMBEDDED_LSTM, {"source": "tokens"}, "data.preprocessing: an embedding reads token ids, which standardize"),
    (EMBEDDED_LSTM, {"source": "tokens", "preprocessing": "normalize"}, "fix: set data.preprocessing: none"),
    (EMBEDDED_LSTM, {"source": "digits", "preprocessing": "none"}, "data.source: an embedding reads token ids, and digits gives samples of real values shaped (1, 8, 8)"),
    (EMBEDDED_LSTM, {**TOKENS, "cleaning": {"clip_outliers_z": 3.0}}, "data.cleaning.clip_outliers_z"),
    (EMBEDDED_LSTM, {**TOKENS, "augment": {"noise": 0.1}}, "data.augment"),
    ({**EMBEDDED_LSTM, "embedding": {"vocab_size": 20}}, TOKENS,
     f"model.embedding.vocab_size: the tokens data set has ids 0 to {TOKENS_VOCAB - 1}"),
    ({"type": "sequential", "layers": ["Embedding(10, 4)", "LSTM(8)", "Dense(4)"]}, TOKENS,
     f"model.layers.0: the tokens data set has ids 0 to {TOKENS_VOCAB - 1}: a vocabulary of 10 is too small"),
])
def test_token_ids_must_reach_an_embedding_unchanged(model: dict[str, Any], data: dict[str, Any], words: str) -> None:
    assert words in refused(model, data=data)


def test_an_embedding_is_the_first_layer_or_none_and_its_sizes_are_checked() -> None:
    assert "only the first layer may be one" in refused({"type": "sequential", "layers": [
        "Reshape((24, 1))", "Embedding(32, 4)", "LSTM(8)", "Dense(4)"]}, data=TOKENS)
    assert "input_dim (the vocabulary size) must be an integer from 2" in refused(
        {"type": "sequential", "layers": ["Embedding(1, 4)", "LSTM(8)", "Dense(4)"]}, data=TOKENS)
    assert "vocab_size: Input should be greater than or equal to 2" in refused(
        {**EMBEDDED_LSTM, "embedding": {"vocab_size": 1}}, data=TOKENS)


def test_an_rnn_embedding_on_image_samples_is_a_clear_builder_error() -> None:
    spec = spec_of(EMBEDDED_LSTM, data=TOKENS)
    with pytest.raises(ValueError, match=r"reads token ids shaped \(steps,\), got samples shaped \(1, 8, 8\)"):
        build_rnn(spec.model, (1, 8, 8), 10)  # type: ignore[arg-type]


# -- AveragePooling2D -----------------------------------------------------------------------------------

def test_average_pooling_valid_and_same_give_keras_sizes_and_means() -> None:
    layers = ["AveragePooling2D(3, strides=2, padding='same')", "Flatten()", "Dense(10)"]
    model = build_sequential(spec_of({"type": "sequential", "layers": layers}).model, (1, 7, 7), 10).eval()  # type: ignore[arg-type]
    pool = model[1]
    img = torch.arange(49.0).reshape(1, 7, 7, 1)
    out = pool(img)[0, :, :, 0]
    assert out.shape == (4, 4)  # ceil(7 / 2)
    # TensorFlow pads 'same' with the extra cell on the far side; the mean counts only cells inside
    grid = img[0, :, :, 0]
    assert float(out[0, 0]) == pytest.approx(float(grid[0:2, 0:2].mean()))  # pad 1 before: rows 0-1, cols 0-1
    assert float(out[3, 3]) == pytest.approx(float(grid[5:7, 5:7].mean()))
    assert float(out[1, 2]) == pytest.approx(float(grid[1:4, 3:6].mean()))
    valid = build_sequential(spec_of({"type": "sequential", "layers": ["AveragePooling2D((2, 2))", "Flatten()",
                                                                       "Dense(10)"]}).model, (1, 8, 8), 10)  # type: ignore[arg-type]
    assert float(valid[1](img[:, :6, :6])[0, 0, 0, 0]) == pytest.approx(float(grid[0:2, 0:2].mean()))
    x = torch.randn(3, 1, 7, 7)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)
    assert "share" not in model.state_dict() and not any("share" in k for k in model.state_dict())


def test_an_average_pool_that_does_not_fit_says_so() -> None:
    with pytest.raises(ValueError, match=r"layer 0 \(AveragePooling2D\): a 9x9 pool does not fit 8x8"):
        build_sequential(spec_of({"type": "sequential", "layers": [  # type: ignore[arg-type]
            "AveragePooling2D(9)", "Flatten()", "Dense(10)"]}).model, (1, 8, 8), 10)


# -- the cnn's stride and padding --------------------------------------------------------------------------

def feature_shape(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    x = torch.zeros(2, *shape)
    for module in model:  # type: ignore[attr-defined]
        if isinstance(module, torch.nn.Flatten):
            return tuple(x.shape[1:])
        x = module(x)
    raise AssertionError("no Flatten")


@pytest.mark.parametrize(("fields", "shape"), [
    ({"conv_filters": [8, 16], "conv_strides": [2, 1], "padding": "same"}, (16, 1, 1)),  # 8 -> 4, pool 2 -> 2, pool 1
    ({"conv_filters": [8, 16], "conv_strides": [2, 1], "padding": "same", "pool": False}, (16, 4, 4)),
    ({"conv_filters": [8], "conv_strides": [2], "padding": "valid", "pool": False}, (8, 3, 3)),
    ({"conv_filters": [8], "kernel_size": 4, "pool": False}, (8, 8, 8)),  # 'same' with an even kernel: as Keras
    ({"conv_filters": [8], "kernel_size": 4, "conv_strides": [3], "pool": False}, (8, 3, 3)),
])
def test_cnn_strides_and_padding_give_keras_sizes(fields: dict[str, Any], shape: tuple[int, ...]) -> None:
    model = build_cnn(spec_of({"type": "cnn", **fields}).model, (1, 8, 8), 10).eval()  # type: ignore[arg-type]
    assert feature_shape(model, (1, 8, 8)) == shape
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)


def test_the_default_cnn_keeps_its_layers_and_parameter_names() -> None:
    """Old checkpoints and init_from still load: stride 1, odd kernel is the plain padded Conv2d it was."""
    model = build_cnn(spec_of({"type": "cnn"}).model, (1, 8, 8), 10)  # type: ignore[arg-type]
    assert type(model[0]) is torch.nn.Conv2d and model[0].padding == (1, 1)
    assert list(model.state_dict())[:2] == ["0.weight", "0.bias"]


def test_three_stride_2_valid_convs_do_not_fit_the_digits_and_validate_says_what_would() -> None:
    text = refused({"type": "cnn", "conv_filters": [8, 16, 32], "conv_strides": [2, 2, 2], "padding": "valid",
                    "pool": False})
    assert text.startswith("model.conv_strides: conv block 3 gets a 1x1 feature map, too small for a 3x3 kernel")
    assert "8x8 -> 3x3 -> 1x1" in text and "(data.source: digits)" in text
    assert "fix: set model.padding: same" in text and "keep 2 conv blocks" in text
    # the fix works: with padding same the same strides fit (8 -> 4 -> 2 -> 1)
    assert spec_of({"type": "cnn", "conv_filters": [8, 16, 32], "conv_strides": [2, 2, 2], "pool": False}).model


def test_cnn_strides_are_one_per_block_and_a_cnn_needs_images() -> None:
    assert "2 strides for 3 conv blocks" in refused({"type": "cnn", "conv_filters": [8, 16, 32], "conv_strides": [2, 2]})
    assert "data.source: the cnn model needs image samples" in refused({"type": "cnn"}, data={"source": "sine"})
    # an .npz file's shape is known once it is loaded: the builder checks it then (next test)
    assert spec_of({"type": "cnn", "conv_strides": [8, 8], "padding": "valid"}, data={"source": "/nowhere/x.npz"}).model


def test_a_strided_cnn_still_learns_the_digits() -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [16, 32], "conv_strides": [2, 1], "dense_units": [64]})
    _, last = fit(build_cnn(spec.model, (1, 8, 8), 10), spec, epochs=10, lr=0.003)  # type: ignore[arg-type]
    assert last >= 0.90, last


def test_an_npz_cnn_that_does_not_fit_fails_at_build_with_the_same_words() -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [8, 8], "conv_strides": [5, 1], "padding": "valid", "pool": False},
                   data={"source": "/nowhere/x.npz"})
    with pytest.raises(ValueError, match="conv block 2 gets a 2x2 feature map") as err:
        build_cnn(spec.model, (1, 12, 12), 10)  # type: ignore[arg-type]
    assert "set model.padding: same" in str(err.value)


# -- the dcgan ----------------------------------------------------------------------------------------------

def test_the_dcgan_pair_has_convolutions_and_the_image_shape() -> None:
    spec = spec_of(DCGAN, data=GAN_DATA)
    generator, discriminator = build_gan(spec.model, (1, 8, 8))  # type: ignore[arg-type]
    kinds = [type(m).__name__ for m in generator]
    assert kinds.count("ConvTranspose2d") == 2 and kinds.count("BatchNorm2d") == 1 and kinds[-1] == "Sigmoid"
    assert "ReLU" in kinds and "LeakyReLU" not in kinds
    disc = [type(m).__name__ for m in discriminator]
    assert disc.count("Conv2d") == 2 and disc.count("LeakyReLU") == 2 and "Linear" in disc
    assert all(m.stride == (2, 2) for m in discriminator if isinstance(m, torch.nn.Conv2d))
    generator.eval()
    out = generator(torch.randn(5, 32))
    assert out.shape == (5, 1, 8, 8) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert discriminator(out).shape == (5, 1)
    g16, d16 = build_gan(spec_of({**DCGAN, "generator_filters": [64, 32, 16], "discriminator_filters": [16, 32, 64]},
                                 data={**GAN_DATA, "source": "/x.npz"}).model, (3, 16, 16))  # type: ignore[arg-type]
    assert g16.eval()(torch.randn(2, 32)).shape == (2, 3, 16, 16) and d16(torch.rand(2, 3, 16, 16)).shape == (2, 1)


@pytest.mark.parametrize(("model", "data", "words"), [
    ({**DCGAN, "generator_filters": [64, 32, 16, 8]}, GAN_DATA,
     "model.generator_filters: the dcgan generator doubles its side 4 times (once per generator_filters entry), so "
     "the image sides must divide by 16, and the data's images are 8x8 (data.source: digits) / fix: give "
     "model.generator_filters at most 3 entries"),
    ({**DCGAN, "discriminator_filters": [8, 8, 8, 8]}, GAN_DATA, "model.discriminator_filters: the dcgan "
     "discriminator halves the 8x8 images 4 times"),
    (DCGAN, {**GAN_DATA, "source": "sine"}, "data.source: the dcgan architecture needs image samples"),
    ({**DCGAN, "generator_units": [64]}, GAN_DATA, "generator_units is not used by architecture dcgan"),
    ({"type": "gan", "generator_filters": [8]}, GAN_DATA, "fix: drop it, or set architecture: dcgan"),
    (DCGAN, {"source": "digits"}, "data.preprocessing: a gan's generator draws values in [0, 1]"),
])
def test_dcgans_that_cannot_fit_are_refused_with_the_fix(model: dict[str, Any], data: dict[str, Any], words: str) -> None:
    assert words in refused(model, data=data)


def test_a_dumped_gan_spec_validates_again() -> None:
    """The job record and the CRD carry every field: the other architecture's defaults must pass."""
    for model in (DCGAN, {"type": "gan"}):
        spec = spec_of(model, data=GAN_DATA)
        assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_a_dcgan_job_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dcgan.yaml"
    path.write_text("name: d\nmodel:\n  type: gan\n  architecture: dcgan\n  generator_filters: [8, 8, 8, 8]\n"
                    "data:\n  preprocessing: normalize\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "model.generator_filters" in err.value.render() and "at most 3 entries" in err.value.render()


def test_the_dcgan_trains_with_the_gan_loop_step_and_its_discriminator_learns() -> None:
    """The loop's own step (gan_step), 12 epochs on the training digits, one thread, seeded."""
    from sklearn.linear_model import LogisticRegression

    from orchestrator.runtime.gan_loop import gan_step

    spec = spec_of(DCGAN, data=GAN_DATA)
    gan: Any = spec.model
    data = prepare_data(spec.data, 0)
    classifier = LogisticRegression(C=10.0, max_iter=3000).fit(data.x_train.reshape(len(data.x_train), -1),
                                                              data.y_train)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        generator, discriminator = build_gan(gan, data.sample_shape)
        g_opt = torch.optim.Adam(generator.parameters(), lr=gan.generator_learning_rate, betas=(gan.beta1, 0.999))
        d_opt = torch.optim.Adam(discriminator.parameters(), lr=gan.discriminator_learning_rate,
                                 betas=(gan.beta1, 0.999))
        x = torch.from_numpy(data.x_train)
        z = torch.randn(256, gan.latent, generator=gen)

        def judge() -> tuple[float, int, float]:
            """The discriminator's accuracy on real vs generated; how many digits the samples cover (each
            confidently classified for >= 2% of them) and the largest share given one digit."""
            generator.eval()
            discriminator.eval()
            with torch.no_grad():
                fake = generator(z)
                accuracy = (float((discriminator(x[:256]) > 0).float().mean()) +
                            float((discriminator(fake) < 0).float().mean())) / 2
            generator.train()
            discriminator.train()
            proba = classifier.predict_proba(fake.numpy().reshape(256, -1))
            counts = np.bincount(proba.argmax(1)[proba.max(1) >= 0.8], minlength=10)
            return accuracy, int((counts >= 0.02 * 256).sum()), float(counts.max() / 256)

        start_accuracy, start_classes, start_top = judge()
        d_losses = []
        for _ in range(12):
            order = torch.randperm(len(x), generator=gen)
            total, steps = 0.0, 0
            for i in range(0, len(x), 64):
                _, d_loss = gan_step(generator, discriminator, g_opt, d_opt, x[order[i : i + 64]], gan.latent, 0.9)
                total, steps = total + float(d_loss), steps + 1
            d_losses.append(total / steps)
        accuracy, classes, top = judge()
    finally:
        torch.set_num_threads(before)
    assert all(math.isfinite(v) for v in d_losses)
    # an untrained discriminator guesses (its loss about 2 ln 2 = 1.39); it learns at once, then the
    # generator catches up and its loss climbs back
    assert d_losses[0] < 1.25 and max(d_losses[1:]) - min(d_losses[1:]) > 0.1, d_losses
    assert 0.35 <= start_accuracy <= 0.70 and accuracy >= 0.6, (start_accuracy, accuracy)
    # untrained: one blob, confidently one digit (or none); trained: most digits, none dominating
    assert start_classes <= 1 and classes >= 8 and top <= 0.25, (start_classes, start_top, classes, top)


def test_the_exported_dcgan_generator_draws_raw_images(tmp_path: Path) -> None:
    from orchestrator.runtime.gan_loop import export_gan

    spec = spec_of(DCGAN, data=GAN_DATA)
    data = prepare_data(spec.data, 0)
    generator, _ = build_gan(spec.model, data.sample_shape)  # type: ignore[arg-type]
    export_gan(generator, data, spec, tmp_path)
    loaded = torch.jit.load(str(tmp_path / "generator.torchscript.pt"))
    drawn = loaded(torch.randn(6, 32)).detach().numpy()
    assert drawn.shape == (6, 1, 8, 8) and drawn.min() >= -1e-4 and drawn.max() <= 16 + 1e-4
    assert json.loads((tmp_path / "model.json").read_text())["model"]["architecture"] == "dcgan"


def test_the_new_example_jobs_validate() -> None:
    tokens, dcgan = load_spec(REPO / "jobs" / "rnn-tokens.yaml"), load_spec(REPO / "jobs" / "dcgan.yaml")
    assert tokens.model is not None and tokens.model.type == "rnn" and tokens.model.embedding is not None
    assert tokens.data.source == "tokens" and tokens.data.preprocessing == "none"
    assert dcgan.model is not None and dcgan.model.type == "gan" and dcgan.model.architecture == "dcgan"
