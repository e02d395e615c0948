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
from orchestrator.spec.shapes import (
    check_image_shape,
    cnn_sides,
    conv_side,
    dcgan_discriminator_sides,
    dcgan_start,
)

#: torch's BatchNorm defaults, so a spec means the same in both frameworks (Keras keeps
#: ``momentum`` of the running value, torch ``momentum`` of the new one: 0.9 here is torch's 0.1).
BN = {"momentum": 0.9, "epsilon": 1e-5}


def _channels_last(inp: Any, sample_shape: tuple[int, ...]) -> Any:
    return kl.Permute((2, 3, 1))(inp) if len(sample_shape) == 3 else inp


def build_cnn(spec: CNNModel, sample_shape: tuple[int, ...], outputs: int) -> keras.Model:
    """Conv blocks (conv -> [batch norm] -> ReLU -> [2x2 max-pool]) then a dense head, as in torch:
    each conv with its block's stride and the spec's padding."""
    _, height, width = check_image_shape(tuple(sample_shape), "the cnn model")
    cnn_sides(spec.conv_filters, spec.kernel_size, spec.strides, spec.padding, spec.pool, height, width)
    inp = keras.Input(shape=sample_shape)
    x = _channels_last(inp, sample_shape)
    k = spec.kernel_size
    for filters, stride in zip(spec.conv_filters, spec.strides, strict=True):
        x = kl.Conv2D(filters, k, strides=stride, padding=spec.padding)(x)
        height, width = conv_side(height, k, stride, spec.padding), conv_side(width, k, stride, spec.padding)
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
    if spec.embedding is not None:
        if len(sample_shape) != 1:
            raise ValueError(f"an rnn with an embedding reads token ids shaped (steps,), got samples shaped "
                             f"{sample_shape}; use data.source: tokens, or an .npz of integer ids shaped (N, steps)")
        x = kl.Embedding(spec.embedding.vocab_size, spec.embedding.dim)(inp)  # float ids are cast to int
    elif len(sample_shape) == 3:  # (c, h, w) -> h steps of c * w features
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
    if kind == "AveragePooling2D":
        return kl.AveragePooling2D(a["pool_size"], strides=a["strides"], padding=a["padding"])
    if kind == "Embedding":
        return kl.Embedding(a["input_dim"], a["output_dim"])
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
    if spec.architecture == "dcgan":
        return build_dcgan(spec, sample_shape)
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


def build_dcgan(spec: GANModel, sample_shape: tuple[int, ...]) -> tuple[keras.Model, keras.Model]:
    """The torch DCGAN pair (:func:`orchestrator.models.torch_models.build_dcgan`) in Keras, layer for
    layer: the same sizes and parameter counts; samples channels first in and out."""
    channels, height, width = check_image_shape(tuple(sample_shape), "the dcgan architecture")
    h0, w0 = dcgan_start(height, width, len(spec.generator_filters))
    dcgan_discriminator_sides(height, width, len(spec.discriminator_filters))
    g = spec.generator_filters
    z = keras.Input(shape=(spec.latent,))
    x = kl.ReLU()(kl.BatchNormalization(**BN)(kl.Dense(g[0] * h0 * w0, use_bias=False)(z)))
    x = kl.Permute((2, 3, 1))(kl.Reshape((g[0], h0, w0))(x))  # torch's channels-first order, then Keras'
    for b in g[1:]:
        x = kl.ReLU()(kl.BatchNormalization(**BN)(kl.Conv2DTranspose(b, 4, strides=2, padding="same",
                                                                      use_bias=False)(x)))
    x = kl.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="sigmoid")(x)
    generator = keras.Model(z, kl.Permute((3, 1, 2))(x), name="generator")
    s = keras.Input(shape=tuple(sample_shape))
    y = kl.Permute((2, 3, 1))(s)
    for i, filters in enumerate(spec.discriminator_filters):
        # torch's padding=1 on both sides (Keras' 'same' would pad an odd side unevenly)
        y = kl.Conv2D(filters, 4, strides=2, padding="valid", use_bias=i == 0)(kl.ZeroPadding2D(1)(y))
        if i > 0:
            y = kl.BatchNormalization(**BN)(y)
        y = kl.Dropout(spec.dropout)(kl.LeakyReLU(0.2)(y))
    discriminator = keras.Model(s, kl.Dense(1)(kl.Flatten()(y)), name="discriminator")
    return generator, discriminator
