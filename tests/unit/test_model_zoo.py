"""Built-in torch models beyond the CNN (rnn, Keras-style sequential) and data augmentation, trained
in-process on the digits (no Ray): layer-list parsing, shapes, TorchScript, accuracy reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from orchestrator.errors import SpecError
from orchestrator.models.torch_models import build_rnn, build_sequential
from orchestrator.runtime.augment import augment_batch, batch_generator
from orchestrator.runtime.data import prepare_data
from orchestrator.spec import load_spec
from orchestrator.spec.layers import LayerError, parse_layer
from orchestrator.spec.models import AugmentSpec, JobSpec
from tests.unit.gan_helpers import GAN, GAN_DATA, train_gan_share

KERAS_EXAMPLE = [
    "Dense(128, activation='relu', input_shape=(64,))",
    "BatchNormalization()",
    "Dropout(0.5)",
    "Dense(10, activation='softmax')",
]


def spec_of(model: dict[str, Any], **extra: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "zoo", "model": model, **extra})


# -- layer lists ---------------------------------------------------------------------------------

def test_keras_calls_and_mappings_parse_to_the_same_layer() -> None:
    text = parse_layer("Dense(128, activation='relu', input_shape=(784,))", 0)
    by_name = parse_layer({"Dense": {"units": 128, "activation": "relu", "input_shape": [784]}}, 0)
    by_position = parse_layer({"Dense": [128, "relu", True, [784]]}, 0)
    assert text == by_name == by_position
    assert text.args == {"units": 128, "activation": "relu", "use_bias": True, "input_shape": (784,)}
    assert parse_layer("layers.Flatten()", 3).kind == "Flatten" and parse_layer("Flatten", 3).kind == "Flatten"


@pytest.mark.parametrize(("item", "words"), [
    ("Dropuot(0.5)", "did you mean Dropout?"),
    ("Dense(activation='relu')", "needs 'units'"),
    ("Dense(64, activaton='relu')", "no argument 'activaton'"),
    ("Dense(64, activation='swish2')", "unknown activation"),
    ("Dense(n_units)", "must be literals"),
    ("Dropout(1.5)", "rate must be in [0, 1)"),
    ("Conv2D(8, 0)", "kernel_size must be a positive integer or a pair"),
    ("Dense(64", "cannot parse"),
    ("LSTM(16, 'tanh')", "return_sequences must be true or false"),
    ("BatchNormalization(-1)", "momentum must be in [0, 1)"),
    ("SimpleRNN(8, activation='sigmoid')", "not supported"),
])
def test_bad_layers_say_what_and_how_to_fix(item: str, words: str) -> None:
    with pytest.raises(LayerError) as err:
        parse_layer(item, 2)
    assert words in f"{err.value.message} {err.value.fix}" and err.value.index == 2


def test_a_bad_layer_in_a_spec_file_names_its_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodel:\n  type: sequential\n  layers:\n    - Dense(64, input_shape=(64,))\n"
                    "    - Dense(10, input_shape=(64,))\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = err.value.render()
    assert "bad.yaml:6" in text and "model.layers[1]" in text and "only the first layer" in text


def test_the_repository_specs_of_the_model_zoo_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "jobs"
    lstm, keras = load_spec(root / "rnn-lstm.yaml"), load_spec(root / "sequential-keras.yaml")
    assert lstm.model is not None and lstm.model.type == "rnn" and lstm.model.cell == "lstm"
    assert keras.model is not None and keras.model.type == "sequential"
    assert yaml.safe_load((root / "sequential-keras.yaml").read_text())["model"]["layers"] == KERAS_EXAMPLE


# -- builders --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [
    KERAS_EXAMPLE,
    ["Conv2D(16, 3, padding='same', activation='relu')", "MaxPooling2D(2)", "Conv2D(32, (3, 3), activation='relu')",
     "BatchNormalization()", "Flatten()", {"Dense": [10]}],
    ["Reshape((8, 8))", "LSTM(32, return_sequences=True)", "GRU(16)", "Dense(10, activation='softmax')"],
    ["Reshape((8, 8))", "SimpleRNN(24, activation='relu')", "Dropout(0.1)", "Dense(10)"],
    ["MaxPooling2D(3, strides=1, padding='same')", "Conv2D(4, 3, strides=2, padding='same')",
     "MaxPooling2D((2, 3), padding='same')", "Flatten()", "Dense(10)"],
])
def test_sequential_models_build_run_and_script(layers: list[Any]) -> None:
    model = build_sequential(spec_of({"type": "sequential", "layers": layers}).model, (1, 8, 8), 10)  # type: ignore[arg-type]
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    assert model(x).shape == (5, 10)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)


def test_the_keras_example_has_keras_parameter_counts() -> None:
    model = build_sequential(spec_of({"type": "sequential", "layers": KERAS_EXAMPLE}).model, (1, 8, 8), 10)  # type: ignore[arg-type]
    # Keras: Dense 64*128+128, BatchNormalization 4*128 (2 trainable), Dense 128*10+10
    trainable = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert trainable == 64 * 128 + 128 + 2 * 128 + 128 * 10 + 10
    assert buffers == 2 * 128


@pytest.mark.parametrize(("layers", "words"), [
    (["Dense(10, input_shape=(65,))"], "does not match the data's samples"),
    (["Flatten()", "Dense(7)"], "data has 10 classes"),
    (["Conv2D(4, 3)"], "end with Flatten"),
    (["Flatten()", "LSTM(8)"], "needs sequences"),
])
def test_layer_lists_that_cannot_fit_the_data_say_why(layers: list[str], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        build_sequential(spec_of({"type": "sequential", "layers": layers}).model, (1, 8, 8), 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
def test_rnn_cells_read_rows_and_script(cell: str) -> None:
    spec = spec_of({"type": "rnn", "cell": cell, "layers": 2, "hidden": 16, "bidirectional": True,
                    "dropout": 0.1, "dense_units": [8]})
    model = build_rnn(spec.model, (1, 8, 8), 10).eval()  # type: ignore[arg-type]
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 10)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)
    # rows are the time steps: changing only the last row changes the output of a forward-only cell
    if cell != "simple":
        one = spec_of({"type": "rnn", "cell": cell, "hidden": 16})
        uni = build_rnn(one.model, (1, 8, 8), 10).eval()  # type: ignore[arg-type]
        y = x.clone()
        y[:, :, -1, :] += 1.0
        assert not torch.allclose(uni(x), uni(y))


# -- training in-process (what a worker does, without Ray) ------------------------------------------

def train(model: torch.nn.Module, spec: JobSpec, epochs: int, lr: float = 0.01) -> float:
    torch.manual_seed(0)
    data = prepare_data(spec.data, 0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = np.random.default_rng(0)
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(gen.permutation(len(x)))
        for step, i in enumerate(range(0, len(x), 64)):
            sel = order[i : i + 64]
            xb = augment_batch(x[sel], spec.data.augment, batch_generator(0, epoch, 0, step))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), y[sel]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(data.x_val)).argmax(1) == torch.from_numpy(data.y_val)).float().mean())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lstm_and_gru_reach_90_percent_on_digit_rows(cell: str) -> None:
    spec = spec_of({"type": "rnn", "cell": cell, "hidden": 64})
    assert train(build_rnn(spec.model, (1, 8, 8), 10), spec, epochs=15) >= 0.90  # type: ignore[arg-type]


def test_simple_rnn_trains() -> None:
    spec = spec_of({"type": "rnn", "cell": "simple", "hidden": 64})
    assert train(build_rnn(spec.model, (1, 8, 8), 10), spec, epochs=8) >= 0.6  # type: ignore[arg-type]


def test_the_keras_example_trains_on_flattened_digits() -> None:
    spec = spec_of({"type": "sequential", "layers": KERAS_EXAMPLE})
    assert train(build_sequential(spec.model, (1, 8, 8), 10), spec, epochs=15) >= 0.93  # type: ignore[arg-type]


def test_a_cnn_still_learns_with_every_augmentation_on() -> None:
    from orchestrator.models.torch_models import build_cnn

    spec = spec_of({"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
                   data={"augment": {"rotate": 10, "translate": 0.1, "scale": [0.9, 1.1], "crop": 1,
                                     "noise": 0.05}})
    assert train(build_cnn(spec.model, (1, 8, 8), 10), spec, epochs=15, lr=0.003) >= 0.90  # type: ignore[arg-type]


# -- augmentation ------------------------------------------------------------------------------------

def images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def aug(**fields: Any) -> AugmentSpec:
    return AugmentSpec.model_validate(fields)


def test_no_augmentation_is_the_identity_and_the_input_is_not_changed() -> None:
    x = images()
    assert augment_batch(x, aug(), batch_generator(1, 1, 0, 0)) is x
    assert torch.allclose(augment_batch(x, aug(scale=[1.0, 1.0], rotate=0.0), batch_generator(1, 1, 0, 0)), x)
    before = x.clone()
    augment_batch(x, aug(noise=0.5, crop=2, flip={"horizontal": 1.0}), batch_generator(1, 1, 0, 0))
    assert torch.equal(x, before)


def test_flips_follow_their_probability() -> None:
    x = images()
    assert torch.equal(augment_batch(x, aug(flip={"horizontal": 1.0}), batch_generator(1, 1, 0, 0)), x.flip(-1))
    assert torch.equal(augment_batch(x, aug(flip={"vertical": 1.0}), batch_generator(1, 1, 0, 0)), x.flip(-2))
    half = augment_batch(images(2000), aug(flip={"horizontal": 0.5}), batch_generator(1, 1, 0, 0))
    flipped = (half == images(2000).flip(-1)).flatten(1).all(1).float().mean()
    assert 0.45 <= float(flipped) <= 0.55


def test_the_same_step_gives_the_same_batch_and_another_step_another() -> None:
    x, spec = images(), aug(rotate=15, translate=0.1, scale=[0.9, 1.1], crop=1, noise=0.1,
                            flip={"horizontal": 0.5})
    first = augment_batch(x, spec, batch_generator(7, 3, 1, 5))
    assert torch.equal(first, augment_batch(x, spec, batch_generator(7, 3, 1, 5)))  # a resume redoes it exactly
    assert not torch.equal(first, augment_batch(x, spec, batch_generator(7, 3, 1, 6)))
    assert not torch.equal(first, augment_batch(x, spec, batch_generator(7, 3, 0, 5)))  # other rank
    # no two (rank, step) pairs of an epoch share their draws
    seeds = {batch_generator(7, 3, r, st).initial_seed() for r in range(4) for st in range(300)}
    assert len(seeds) == 4 * 300


def test_crop_shifts_each_image_by_whole_pixels_within_the_padding() -> None:
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(32, 1, 1, 1)
    out = augment_batch(x, aug(crop=1), batch_generator(1, 1, 0, 0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(32):
        assert any(torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8]) for dy in range(3) for dx in range(3))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_noise_has_the_asked_standard_deviation() -> None:
    x = torch.zeros(400, 1, 8, 8)
    out = augment_batch(x, aug(noise=0.2), batch_generator(1, 1, 0, 0))
    assert abs(float(out.mean())) < 0.01 and abs(float(out.std()) - 0.2) < 0.01


def test_rotation_by_a_small_angle_keeps_the_image_close() -> None:
    x = torch.nn.functional.avg_pool2d(images(64), 3, 1, 1)  # smooth images
    out = augment_batch(x, aug(rotate=5), batch_generator(1, 1, 0, 0))
    assert not torch.equal(out, x)
    assert float((out - x).abs().mean()) < 0.5 * float(x.abs().mean())


def test_bad_augmentation_values_are_spec_errors(tmp_path: Path) -> None:
    for bad, where, words in (("scale: [1.2, 0.8]", "data.augment.scale", "0 < low <= high"),
                              ("rotate: 400", "data.augment.rotate", "at most 180"),
                              ("flip: {horizontal: 2}", "data.augment.flip.horizontal", "at most 1")):
        path = tmp_path / "aug.yaml"
        path.write_text(f"name: aug\nmodel: {{type: cnn}}\ndata:\n  augment:\n    {bad}\n")
        with pytest.raises(SpecError) as err:
            load_spec(path)
        text = err.value.render()
        assert f"aug.yaml:5: {where}" in text and words in text, text


# -- sequence regression: the generated sine task ---------------------------------------------------

def test_sine_windows_are_a_regression_task_with_a_naive_baseline() -> None:
    from orchestrator.runtime.data import last_value_mse

    spec = spec_of({"type": "rnn", "cell": "gru"}, data={"source": "sine"})
    data = prepare_data(spec.data, 0)
    assert data.task == "regression" and data.sample_shape == (24, 1) and data.y_train.dtype == np.float32
    baseline = last_value_mse(data, "val")
    assert baseline is not None and 0.05 < baseline < 1.0  # the last value alone is a poor forecast
    from orchestrator.runtime.data import sine_windows

    raw_x, raw_y = sine_windows()
    assert raw_x.shape == (2000, 24, 1) and raw_y.shape == (2000,)
    assert np.abs(raw_x).max() <= 1.5 + 5 * 0.05 and np.abs(raw_y).max() <= 1.5 + 5 * 0.05
    clean_x, clean_y = sine_windows(noise=0.0)
    # noise-free, each window is one sinusoid: s[t+1] + s[t-1] = 2 cos(w) s[t] for every t
    s = np.concatenate([clean_x[:, :, 0], clean_y[:, None]], axis=1)
    ratio = (s[:, 2:] + s[:, :-2]) / np.where(np.abs(s[:, 1:-1]) > 0.2, s[:, 1:-1], np.nan)
    spread = np.nanmax(ratio, axis=1) - np.nanmin(ratio, axis=1)
    assert np.nanmax(spread) < 1e-3


def test_a_gru_forecasts_the_sine_at_least_twice_as_well_as_the_last_value() -> None:
    from orchestrator.runtime.data import last_value_mse
    from orchestrator.runtime.torch_ddp import task_loss

    spec = spec_of({"type": "rnn", "cell": "gru", "hidden": 32}, data={"source": "sine"})
    data = prepare_data(spec.data, 0)
    torch.manual_seed(0)
    model = build_rnn(spec.model, data.sample_shape, 1)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(20):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            task_loss(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    with torch.no_grad():
        val_mse = float(task_loss(model(torch.from_numpy(data.x_val)), torch.from_numpy(data.y_val)))
    baseline = last_value_mse(data, "val")
    assert baseline is not None and val_mse * 2 <= baseline, (val_mse, baseline)


def test_same_padding_gives_keras_output_sizes() -> None:
    # Keras: 'same' gives ceil(size / stride) per side, for convolutions and pools alike
    layers = ["Conv2D(4, 3, strides=2, padding='same')", "MaxPooling2D(3, strides=1, padding='same')",
              "MaxPooling2D((2, 2), padding='same')", "Flatten()", "Dense(10)"]
    model = build_sequential(spec_of({"type": "sequential", "layers": layers}).model, (1, 7, 7), 10)  # type: ignore[arg-type]
    x = torch.randn(2, 1, 7, 7)
    shapes = []
    for module in model:
        x = module(x)
        shapes.append(tuple(x.shape[1:]))
    assert (4, 4, 4) in shapes and (2, 2, 4) in shapes  # 7 -> ceil(7/2)=4 -> 4 (stride 1) -> ceil(4/2)=2
    pooled = build_sequential(spec_of({"type": "sequential", "layers": ["MaxPooling2D(3, strides=1, padding='same')",
                                                                          "Flatten()", "Dense(10)"]}).model,  # type: ignore[arg-type]
                              (1, 8, 8), 10)[1]
    img = torch.full((1, 8, 8, 1), -5.0)
    assert float(pooled(img).max()) == -5.0  # padding never wins a max


# -- gan ---------------------------------------------------------------------------------------------



def test_a_gan_needs_normalised_data() -> None:
    with pytest.raises(Exception, match="min-max normalised"):
        spec_of(GAN)
    assert spec_of(GAN, data=GAN_DATA).model.type == "gan"  # type: ignore[union-attr]


def test_the_gan_learns_digits_a_classifier_recognises() -> None:
    """The loop's own step (gan_step), in one process: 60 epochs on the real training digits, then 256
    samples judged by a classifier of the real digits (tests/unit/gan_helpers.py).

    Deterministic: one seed, one torch thread (the thread count changes float sums; a fresh clone on
    another machine once got 0.578 against a bar of 0.60). The bars hold across seeds with margin,
    measured with ``PYTHONPATH=. python bench/gan_spread.py --seeds 10`` (seeds 0-9, 1 thread):

    - confident share: 0.633 0.617 0.625 0.691 0.676 0.699 0.648 0.695 0.609 0.707
      (min 0.609, median 0.662, max 0.707); bar 0.50;
    - digits covered by >= 2% of the samples: 10 for every seed; bar 8;
    - largest share given one digit: 0.113 0.094 0.086 0.105 0.098 0.102 0.094 0.141 0.125 0.113
      (max 0.141); bar 0.25.

    An untrained generator (0 epochs, seeds 0-9) draws one blob that the classifier confidently
    calls one digit: share 1.0 but 1 digit covered, largest share 1.0. It fails the last two bars, as
    does a generator that collapsed to one mode; one that draws noise fails the first.
    """
    judged = train_gan_share(seed=0, epochs=60, threads=1)
    assert judged["real_share"] >= 0.9, judged  # the classifier itself: real digits
    assert judged["share"] >= 0.50, judged  # the quality proxy
    assert judged["classes"] >= 8, judged  # many digits, not one
    assert judged["top_class"] <= 0.25, judged


def test_an_untrained_gan_fails_the_bars_of_the_learning_test() -> None:
    """The learning test's bars are not met without training (its share alone would be: 1.0)."""
    judged = train_gan_share(seed=0, epochs=0, threads=1)
    assert judged["classes"] < 8 and judged["top_class"] > 0.25, judged


def test_sample_grids_are_valid_pngs() -> None:
    import struct
    import zlib

    from orchestrator.runtime.images import png_bytes, sample_grid

    samples = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    grid = sample_grid(samples, scale=2)
    assert grid.shape == (2 * (8 * 9 + 1), 2 * (8 * 9 + 1))
    png = png_bytes(grid)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (grid.shape[1], grid.shape[0])
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    raw = zlib.decompress(png[idat + 4 : idat + 4 + length])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()  # filter byte per row
    assert np.array_equal(rows[:, 1:], (np.clip(grid, 0, 1) * 255).round().astype(np.uint8))
    # and an independent decoder reads the same picture
    import io

    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(decoded, rows[:, 1:])


def test_the_gans_two_optimizers_checkpoint_as_one() -> None:
    from orchestrator.models.torch_models import build_gan
    from orchestrator.runtime.gan_loop import PairOptimizer, gan_step
    from orchestrator.runtime.torch_ddp import optimizer_checksum

    spec = spec_of(GAN, data=GAN_DATA)
    generator, discriminator = build_gan(spec.model, (1, 8, 8))  # type: ignore[arg-type]
    pair = PairOptimizer(torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters()))
    before = optimizer_checksum(pair)  # type: ignore[arg-type]
    gan_step(generator, discriminator, pair.generator, pair.discriminator, torch.rand(16, 1, 8, 8), 32, 0.9)
    state = pair.state_dict()
    assert optimizer_checksum(pair) != before  # type: ignore[arg-type]
    again = PairOptimizer(torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters()))
    again.load_state_dict(state)
    assert optimizer_checksum(again) == optimizer_checksum(pair)  # type: ignore[arg-type]


def test_one_hot_labels_are_a_spec_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "onehot.npz"
    np.savez(path, x=np.random.default_rng(0).random((300, 8)).astype(np.float32),
             y=np.eye(3)[np.arange(300) % 3])
    with pytest.raises(SpecError, match="one label or one target"):
        prepare_data(spec_of({"type": "cnn"}, data={"source": str(path)}).data, 0)
