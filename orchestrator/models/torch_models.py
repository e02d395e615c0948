"""Built-in PyTorch models, built from the spec's model section."""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.spec.layers import Layer, check_output_shape, parse_layers
from orchestrator.spec.models import CNNModel, GANModel, RNNModel, SequentialModel
from orchestrator.spec.shapes import (
    check_image_shape,
    cnn_sides,
    conv_side,
    dcgan_discriminator_sides,
    dcgan_start,
)


def build_cnn(spec: CNNModel, sample_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Conv blocks (conv -> [batch norm] -> ReLU -> [2x2 max-pool]) then a dense head.

    Each conv has its block's stride and the spec's padding ('same': Keras' ceil(side / stride),
    zero-padded as TensorFlow pads, the extra row or column on the far side; 'valid': none). Pooling
    is skipped once the feature map is smaller than 2x2, so the same spec works on 8x8 digits and on
    larger images. A map that would vanish raises ValueError with the sizes and the fix.
    """
    channels, height, width = check_image_shape(tuple(sample_shape), "the cnn model")
    cnn_sides(spec.conv_filters, spec.kernel_size, spec.strides, spec.padding, spec.pool, height, width)
    layers: list[nn.Module] = []
    k = spec.kernel_size
    for filters, stride in zip(spec.conv_filters, spec.strides, strict=True):
        layers.append(_conv(channels, filters, k, stride, spec.padding, (height, width)))
        height, width = conv_side(height, k, stride, spec.padding), conv_side(width, k, stride, spec.padding)
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(filters))
        layers.append(nn.ReLU())
        if spec.pool and height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = filters
    layers.append(nn.Flatten())
    features = channels * height * width
    for units in spec.dense_units:
        layers += [nn.Dropout(spec.dropout), nn.Linear(features, units), nn.ReLU()]
        features = units
    layers += [nn.Dropout(spec.dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


class _PaddedConv2d(nn.Conv2d):
    """A Conv2d that zero-pads its input unevenly first (TensorFlow's 'same' with an even kernel or a
    stride): the same parameters (and state_dict keys) as a plain Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 pads: tuple[int, int, int, int]) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride)
        self.pads: list[int] = list(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(nn.functional.pad(x, self.pads), self.weight, self.bias)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, padding: str,
          size: tuple[int, int]) -> nn.Module:
    if padding == "valid":
        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride)
    left, right, top, bottom = _same_padding_strided(size, (kernel, kernel), (stride, stride))
    if left == right and top == bottom:  # a plain Conv2d (what an odd kernel at stride 1 always was)
        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(top, left))
    return _PaddedConv2d(in_channels, out_channels, kernel, stride, (left, right, top, bottom))


class RowsAsSequence(nn.Module):
    """(batch, channels, height, width) images as sequences of rows: (batch, height, channels x width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.permute(0, 2, 1, 3).flatten(2)
        if x.dim() == 2:  # flat vectors: one feature per step
            return x.unsqueeze(-1)
        return x


class TokenEmbedding(nn.Embedding):
    """An embedding table over token ids that arrive as floats (the data pipeline's dtype): (batch,
    steps) ids in, (batch, steps, dim) vectors out. The same parameters as ``nn.Embedding``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(x.long(), self.weight)


class RecurrentClassifier(nn.Module):
    """A recurrent stack over the rows of each sample (or its embedded token ids), then a dense head
    on the last step."""

    def __init__(self, spec: RNNModel, features: int, num_classes: int) -> None:
        super().__init__()
        cell = {"simple": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[spec.cell]
        self.rows: nn.Module = RowsAsSequence()
        if spec.embedding is not None:
            self.rows = TokenEmbedding(spec.embedding.vocab_size, spec.embedding.dim)
            features = spec.embedding.dim
        self.rnn = cell(features, spec.hidden, num_layers=spec.layers, batch_first=True,
                        bidirectional=spec.bidirectional, dropout=spec.dropout if spec.layers > 1 else 0.0)
        width = spec.hidden * (2 if spec.bidirectional else 1)
        head: list[nn.Module] = []
        for units in spec.dense_units:
            head += [nn.Dropout(spec.dropout), nn.Linear(width, units), nn.ReLU()]
            width = units
        head += [nn.Dropout(spec.dropout), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.rows(x))
        return self.head(out[:, -1])  # type: ignore[no-any-return]


def build_rnn(spec: RNNModel, sample_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """An RNN (simple, LSTM or GRU) reading each sample row by row: 8x8 digits are 8 steps of 8; with
    an embedding, samples are (steps,) token ids, each step one embedded token."""
    if spec.embedding is not None:
        if len(sample_shape) != 1:
            raise ValueError(f"an rnn with an embedding reads token ids shaped (steps,), got samples shaped "
                             f"{sample_shape}; use data.source: tokens, or an .npz of integer ids shaped (N, steps)")
        features = spec.embedding.dim
    elif len(sample_shape) == 3:
        features = sample_shape[0] * sample_shape[2]
    elif len(sample_shape) == 2:
        features = sample_shape[1]
    elif len(sample_shape) == 1:
        features = 1
    else:
        raise ValueError(f"the rnn model needs images, sequences or vectors, got samples shaped {sample_shape}")
    return RecurrentClassifier(spec, features, num_classes)


def _activation(name: str | None) -> nn.Module | None:
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "gelu": nn.GELU,
        "selu": nn.SELU, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU,
    }
    if name in (None, "linear"):
        return None
    if name == "softmax":
        return nn.Softmax(dim=-1)
    return table[name]()


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape: list[int] = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[0]] + self.shape)


class _ChannelsFirst(nn.Module):
    """Runs a (channels-first) torch image layer on channels-last tensors, as Keras lays them out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # type: ignore[no-any-return]


class _Recurrent(nn.Module):
    def __init__(self, layer: nn.Module, return_sequences: bool) -> None:
        super().__init__()
        self.layer = layer
        self.return_sequences = return_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.layer(x)
        return out if self.return_sequences else out[:, -1]  # type: ignore[no-any-return]


def _keras_shape(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our data's per-sample shape (images channels first) in Keras' layout (channels last)."""
    if len(sample_shape) == 3:
        c, h, w = sample_shape
        return (h, w, c)
    return tuple(sample_shape)


def build_sequential(spec: SequentialModel, sample_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A Keras-style layer list as a torch model; shapes per sample, channels last, as in Keras.

    The input is reshaped to the first layer's ``input_shape`` when it gives one (the 8x8 digits
    become 64 inputs for ``Dense(..., input_shape=(64,))``). A softmax on the last layer is left
    out of the model: the loss (cross-entropy on logits) includes it, as Keras' ``from_logits``
    would, and predictions (the arg max) are the same.
    """
    layers = parse_layers(spec.layers)
    shape = _keras_shape(sample_shape)
    modules: list[nn.Module] = []
    if len(sample_shape) == 3:
        modules.append(_Reshape(shape) if sample_shape[0] == 1 else _PermuteToChannelsLast())
    first = layers[0].args.get("input_shape")
    if first is not None:
        if _numel(first) != _numel(shape):
            raise ValueError(f"layer 0: input_shape {first} does not match the data's samples {shape} "
                             f"({_numel(shape)} values)")
        shape = tuple(first)
        modules.append(_Reshape(shape))
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        module, shape = _torch_layer(layer, shape, i)
        modules.append(module)
        # SimpleRNN's activation is its cell's own (inside nn.RNN), not another layer after it
        act = None if layer.kind == "SimpleRNN" else _activation(layer.args.get("activation"))
        if act is not None and not (last and layer.args.get("activation") == "softmax"):
            modules.append(act)
    check_output_shape(shape, num_classes)
    return nn.Sequential(*modules)


class _PermuteToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def _torch_layer(layer: Layer, shape: tuple[int, ...], index: int) -> tuple[nn.Module, tuple[int, ...]]:
    kind, a = layer.kind, layer.args

    def need(rank: int, what: str) -> None:
        if len(shape) != rank:
            raise ValueError(f"layer {index} ({kind}) needs {what}, got samples shaped {shape}")

    if kind == "Dense":
        if len(shape) == 1:
            return nn.Linear(shape[0], a["units"], bias=a["use_bias"]), (a["units"],)
        return nn.Linear(shape[-1], a["units"], bias=a["use_bias"]), (*shape[:-1], a["units"])
    if kind == "Flatten":
        return nn.Flatten(), (_numel(shape),)
    if kind == "Dropout":
        return nn.Dropout(a["rate"]), shape
    if kind == "Reshape":
        target = a["target_shape"]
        if _numel(target) != _numel(shape):
            raise ValueError(f"layer {index} (Reshape): {shape} has {_numel(shape)} values, {target} needs "
                             f"{_numel(target)}")
        return _Reshape(target), target
    if kind == "BatchNormalization":
        momentum = 1.0 - float(a["momentum"])  # Keras keeps `momentum` of the old value; torch the new
        if len(shape) == 1:
            return nn.BatchNorm1d(shape[0], eps=a["epsilon"], momentum=momentum), shape
        if len(shape) == 3:
            return _ChannelsFirst(nn.BatchNorm2d(shape[2], eps=a["epsilon"], momentum=momentum)), shape
        raise ValueError(f"layer {index} (BatchNormalization): samples shaped {shape} are not supported")
    if kind == "Conv2D":
        need(3, "images (height, width, channels)")
        h, w, c = shape
        (kh, kw), (sh, sw) = a["kernel_size"], a["strides"] or (1, 1)
        conv = nn.Conv2d(c, a["filters"], (kh, kw), stride=(sh, sw), bias=a["use_bias"])
        inner: nn.Module = conv
        if a["padding"] == "same":
            inner = nn.Sequential(nn.ZeroPad2d(_same_padding_strided((h, w), (kh, kw), (sh, sw))), conv)
        out = (conv_side(h, kh, sh, a["padding"]), conv_side(w, kw, sw, a["padding"]), a["filters"])
        if min(out[:2]) < 1:
            raise ValueError(f"layer {index} (Conv2D): a {kh}x{kw} kernel does not fit {h}x{w}; use padding='same'")
        return _ChannelsFirst(inner), out
    if kind == "MaxPooling2D":
        need(3, "images (height, width, channels)")
        h, w, c = shape
        (ph, pw) = a["pool_size"]
        (sh, sw) = a["strides"] or (ph, pw)
        pool: nn.Module = nn.MaxPool2d((ph, pw), stride=(sh, sw))
        if a["padding"] == "same":  # as Keras: pad (with -inf, so padding never wins) to ceil(size / stride)
            pool = nn.Sequential(nn.ConstantPad2d(_same_padding_strided((h, w), (ph, pw), (sh, sw)), float("-inf")),
                                 pool)
        out = (conv_side(h, ph, sh, a["padding"]), conv_side(w, pw, sw, a["padding"]), c)
        if min(out[:2]) < 1:
            raise ValueError(f"layer {index} (MaxPooling2D): a {ph}x{pw} pool does not fit {h}x{w}")
        return _ChannelsFirst(pool), out
    if kind == "AveragePooling2D":
        need(3, "images (height, width, channels)")
        h, w, c = shape
        (ph, pw) = a["pool_size"]
        (sh, sw) = a["strides"] or (ph, pw)
        out = (conv_side(h, ph, sh, a["padding"]), conv_side(w, pw, sw, a["padding"]), c)
        if min(out[:2]) < 1:
            raise ValueError(f"layer {index} (AveragePooling2D): a {ph}x{pw} pool does not fit {h}x{w}; "
                             "use padding='same'")
        avg: nn.Module = nn.AvgPool2d((ph, pw), stride=(sh, sw))
        if a["padding"] == "same":
            avg = _SameAvgPool2d((h, w), (ph, pw), (sh, sw))
        return _ChannelsFirst(avg), out
    if kind == "Embedding":
        return TokenEmbedding(a["input_dim"], a["output_dim"]), (*shape, a["output_dim"])
    if kind in ("SimpleRNN", "LSTM", "GRU"):
        need(2, "sequences (steps, features)")
        steps, features = shape
        if kind == "SimpleRNN":
            rnn: nn.Module = nn.RNN(features, a["units"], batch_first=True,
                                    nonlinearity="relu" if a["activation"] == "relu" else "tanh")
        else:
            rnn = (nn.LSTM if kind == "LSTM" else nn.GRU)(features, a["units"], batch_first=True)
        out_shape = (steps, a["units"]) if a["return_sequences"] else (a["units"],)
        return _Recurrent(rnn, a["return_sequences"]), out_shape
    raise ValueError(f"layer {index}: {kind} has no torch builder")


class _SameAvgPool2d(nn.Module):
    """Keras' 'same' average pool: zero-padded to ceil(size / stride), each output the mean of the
    cells its window covers inside the image (the padding is not counted)."""

    def __init__(self, size: tuple[int, int], pool: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.pads: list[int] = list(_same_padding_strided(size, pool, stride))
        self.pool: list[int] = list(pool)
        self.stride: list[int] = list(stride)
        ones = torch.ones(1, 1, *size)
        share = nn.functional.avg_pool2d(nn.functional.pad(ones, self.pads), self.pool, self.stride)
        self.register_buffer("share", share, persistent=False)  # the share of each window inside the image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.avg_pool2d(nn.functional.pad(x, self.pads), self.pool, self.stride)
        return out / self.share  # type: ignore[operator]


def _same_padding_strided(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """Left, right, top, bottom padding of TensorFlow's 'same': output ceil(size / stride), extra on the far side."""
    pads = []
    for n, k, st in zip(size, kernel, stride, strict=True):
        out = -(-n // st)
        pads.append(max((out - 1) * st + k - n, 0))
    ph, pw = pads
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def build_gan(spec: GANModel, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Generator (latent -> sample, sigmoid: data normalised to [0, 1]) and discriminator (sample -> logit)."""
    if spec.architecture == "dcgan":
        return build_dcgan(spec, sample_shape)
    size = _numel(tuple(sample_shape))
    gen: list[nn.Module] = []
    width = spec.latent
    for units in spec.generator_units:
        gen += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.LeakyReLU(0.2)]
        width = units
    gen += [nn.Linear(width, size), nn.Sigmoid(), _Reshape(tuple(sample_shape))]
    disc: list[nn.Module] = [nn.Flatten()]
    width = size
    for units in spec.discriminator_units:
        disc += [nn.Linear(width, units), nn.LeakyReLU(0.2), nn.Dropout(spec.dropout)]
        width = units
    disc += [nn.Linear(width, 1)]
    return nn.Sequential(*gen), nn.Sequential(*disc)


def build_dcgan(spec: GANModel, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """A DCGAN pair for (channels, height, width) images.

    Generator: a dense projection of the latent vector to ``generator_filters[0]`` maps of side
    image / 2 ** len(generator_filters), batch norm, ReLU; then per entry one 4x4 stride-2 transposed
    convolution doubling the side (batch norm and ReLU between, a sigmoid after the last, which gives
    the image's channels). Discriminator: per ``discriminator_filters`` entry a 4x4 stride-2
    convolution halving the side (batch norm from the second on), LeakyReLU(0.2) and dropout; then
    one logit. Sizes that do not fit raise ValueError with the fix.
    """
    channels, height, width = check_image_shape(tuple(sample_shape), "the dcgan architecture")
    h0, w0 = dcgan_start(height, width, len(spec.generator_filters))
    hd, wd = dcgan_discriminator_sides(height, width, len(spec.discriminator_filters))
    g = spec.generator_filters
    gen: list[nn.Module] = [nn.Linear(spec.latent, g[0] * h0 * w0, bias=False), nn.BatchNorm1d(g[0] * h0 * w0),
                            nn.ReLU(), _Reshape((g[0], h0, w0))]
    for a, b in zip(g, g[1:], strict=False):
        gen += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
    gen += [nn.ConvTranspose2d(g[-1], channels, 4, stride=2, padding=1), nn.Sigmoid()]
    disc: list[nn.Module] = []
    previous = channels
    for i, filters in enumerate(spec.discriminator_filters):
        disc.append(nn.Conv2d(previous, filters, 4, stride=2, padding=1, bias=i == 0))
        if i > 0:
            disc.append(nn.BatchNorm2d(filters))
        disc += [nn.LeakyReLU(0.2), nn.Dropout(spec.dropout)]
        previous = filters
    disc += [nn.Flatten(), nn.Linear(previous * hd * wd, 1)]
    return nn.Sequential(*gen), nn.Sequential(*disc)


class GeneratorToRaw(nn.Module):
    """The exported generator: latent vectors in, samples in the data's raw units out."""

    def __init__(self, generator: nn.Module, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.generator = generator
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z) * self.scale + self.shift


class WithPreprocessing(nn.Module):
    """Applies the training preprocessing (clip, shift, scale) before the model.

    The exported TorchScript model takes raw inputs, exactly like the data file's ``x``.
    """

    def __init__(
        self,
        model: nn.Module,
        shift: torch.Tensor,
        scale: torch.Tensor,
        clip_low: torch.Tensor | None,
        clip_high: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.clip = clip_low is not None and clip_high is not None
        self.register_buffer("clip_low", clip_low if clip_low is not None else shift.clone())
        self.register_buffer("clip_high", clip_high if clip_high is not None else shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # buffers: mypy reads them as Tensor | Module (nn.Module.__getattr__); TorchScript compiles
        # this method, so no class-level annotations or casts here
        x = x.to(self.shift.dtype)  # type: ignore[arg-type]
        if self.clip:
            x = torch.maximum(torch.minimum(x, self.clip_high), self.clip_low)  # type: ignore[arg-type]
        return self.model((x - self.shift) / self.scale)  # type: ignore[operator]
