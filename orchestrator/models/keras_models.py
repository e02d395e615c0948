"""Built-in Keras models (Keras 2 through ``tf_keras``), with the same spec fields as the torch ones.

Our data keeps images channels first, (channels, height, width), as torch does; every model here
takes samples in that layout and turns them channels last (Keras' layout) in its first layer, so
both frameworks read the same arrays. Outputs are logits (no softmax): the loss takes them, as
torch's cross-entropy does, and the arg max is the same.
"""

from __future__ import annotations

from typing import Any

import tf_keras as keras
from tf_keras import layers as kl

from orchestrator.spec.layers import Layer, check_output_shape, parse_layers
from orchestrator.spec.models import CNNModel, GANModel, RNNModel, SequentialModel

#: torch's BatchNorm defaults, so a spec means the same in both frameworks (Keras keeps
#: ``momentum`` of the running value, torch ``momentum`` of the new one: 0.9 here is torch's 0.1).
BN = {"momentum": 0.9, "epsilon": 1e-5}


def _channels_last(inp: Any, sample_shape: tuple[int, ...]) -> Any:
    return kl.Permute((2, 3, 1))(inp) if len(sample_shape) == 3 else inp


def build_cnn(spec: CNNModel, sample_shape: tuple[int, ...], outputs: int) -> keras.Model:
    """Conv blocks (conv -> [batch norm] -> ReLU -> [2x2 max-pool]) then a dense head, as in torch."""
    if len(sample_shape) != 3:
        raise ValueError(f"the cnn model needs image samples shaped (channels, height, width), got {sample_shape}")
    _, height, width = sample_shape
    inp = keras.Input(shape=sample_shape)
    x = _channels_last(inp, sample_shape)
    for filters in spec.conv_filters:
        x = kl.Conv2D(filters, spec.kernel_size, padding="same")(x)
        if spec.batch_norm:
            x = kl.BatchNormalization(**BN)(x)
        x = kl.ReLU()(x)
        if spec.pool and height >= 2 and width >= 2:
            x = kl.MaxPooling2D(2)(x)
            height, width = height // 2, width // 2
    x = kl.Flatten()(x)
    for units in spec.dense_units:
        x = kl.Dense(units, activation="relu")(kl.Dropout(spec.dropout)(x))
    out = kl.Dense(outputs)(kl.Dropout(spec.dropout)(x))
    return keras.Model(inp, out, name="cnn")


def build_rnn(spec: RNNModel, sample_shape: tuple[int, ...], outputs: int) -> keras.Model:
    """An RNN (simple, LSTM or GRU) reading each sample row by row: 8x8 digits are 8 steps of 8."""
    inp = keras.Input(shape=sample_shape)
    if len(sample_shape) == 3:  # (c, h, w) -> h steps of c * w features
        c, h, w = sample_shape
        x = kl.Reshape((h, c * w))(kl.Permute((2, 1, 3))(inp))
    elif len(sample_shape) == 2:
        x = inp
    elif len(sample_shape) == 1:
        x = kl.Reshape((sample_shape[0], 1))(inp)
    else:
        raise ValueError(f"the rnn model needs images, sequences or vectors, got samples shaped {sample_shape}")
    cell = {"simple": kl.SimpleRNN, "lstm": kl.LSTM, "gru": kl.GRU}[spec.cell]
    for i in range(spec.layers):
        last = i == spec.layers - 1
        rnn = cell(spec.hidden, return_sequences=not last)
        x = (kl.Bidirectional(rnn) if spec.bidirectional else rnn)(x)
        if not last and spec.dropout:
            x = kl.Dropout(spec.dropout)(x)  # between layers, as torch's `dropout`
    for units in spec.dense_units:
        x = kl.Dense(units, activation="relu")(kl.Dropout(spec.dropout)(x))
    out = kl.Dense(outputs)(kl.Dropout(spec.dropout)(x))
    return keras.Model(inp, out, name="rnn")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def _activation(name: str | None) -> Any:
    if name in (None, "linear"):
        return None
    if name == "leaky_relu":
        return kl.LeakyReLU(0.01)  # torch's default slope
    return kl.Activation(name)


def _keras_layer(layer: Layer) -> Any:
    kind, a = layer.kind, layer.args
    if kind == "Dense":
        return kl.Dense(a["units"], use_bias=a["use_bias"])
    if kind == "Conv2D":
        return kl.Conv2D(a["filters"], a["kernel_size"], strides=a["strides"] or (1, 1), padding=a["padding"],
                         use_bias=a["use_bias"])
    if kind == "MaxPooling2D":
        return kl.MaxPooling2D(a["pool_size"], strides=a["strides"], padding=a["padding"])
    if kind == "Flatten":
        return kl.Flatten()
    if kind == "Dropout":
        return kl.Dropout(a["rate"])
    if kind == "BatchNormalization":
        return kl.BatchNormalization(momentum=a["momentum"], epsilon=a["epsilon"])
    if kind == "SimpleRNN":
        return kl.SimpleRNN(a["units"], activation=a["activation"], return_sequences=a["return_sequences"])
    if kind in ("LSTM", "GRU"):
        return (kl.LSTM if kind == "LSTM" else kl.GRU)(a["units"], return_sequences=a["return_sequences"])
    if kind == "Reshape":
        return kl.Reshape(a["target_shape"])
    raise ValueError(f"{kind} has no Keras builder")


def build_sequential(spec: SequentialModel, sample_shape: tuple[int, ...], outputs: int) -> keras.Model:
    """A Keras-style layer list as a Keras model (shapes per sample, channels last).

    The input is reshaped to the first layer's ``input_shape`` when it gives one. A softmax on
    the last layer is left out: the loss takes logits (``from_logits``) and predictions (the arg
    max) are the same. Bad shapes raise ValueError naming the layer, as the torch builder does.
    """
    parsed = parse_layers(spec.layers)
    inp = keras.Input(shape=sample_shape)
    x = _channels_last(inp, sample_shape)
    shape = tuple(int(v) for v in x.shape[1:])
    first = parsed[0].args.get("input_shape")
    if first is not None:
        if _numel(first) != _numel(shape):
            raise ValueError(f"layer 0: input_shape {first} does not match the data's samples {shape} "
                             f"({_numel(shape)} values)")
        x = kl.Reshape(tuple(first))(x)
    for i, layer in enumerate(parsed):
        last = i == len(parsed) - 1
        try:
            x = _keras_layer(layer)(x)
        except ValueError as exc:
            raise ValueError(f"layer {i} ({layer.kind}) cannot take samples shaped "
                             f"{tuple(x.shape[1:])}: {str(exc).splitlines()[0]}") from None
        act = layer.args.get("activation")
        if layer.kind != "SimpleRNN" and not (last and act == "softmax"):
            activation = _activation(act)
            if activation is not None:
                x = activation(x)
    check_output_shape(tuple(int(v) for v in x.shape[1:]), outputs)
    return keras.Model(inp, x, name="sequential")


def build_gan(spec: GANModel, sample_shape: tuple[int, ...]) -> tuple[keras.Model, keras.Model]:
    """Generator (latent -> sample in [0, 1]) and discriminator (sample -> logit), as the torch pair."""
    size = _numel(tuple(sample_shape))
    z = keras.Input(shape=(spec.latent,))
    x = z
    for units in spec.generator_units:
        x = kl.LeakyReLU(0.2)(kl.BatchNormalization(**BN)(kl.Dense(units)(x)))
    x = kl.Reshape(tuple(sample_shape))(kl.Dense(size, activation="sigmoid")(x))
    generator = keras.Model(z, x, name="generator")
    s = keras.Input(shape=tuple(sample_shape))
    y = kl.Flatten()(s)
    for units in spec.discriminator_units:
        y = kl.Dropout(spec.dropout)(kl.LeakyReLU(0.2)(kl.Dense(units)(y)))
    discriminator = keras.Model(s, kl.Dense(1)(y), name="discriminator")
    return generator, discriminator
