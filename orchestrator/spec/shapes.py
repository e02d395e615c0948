"""Shape arithmetic of the built-in models, shared by spec validation and both frameworks' builders.

Pure functions, no torch or tensorflow: ``orchestrator validate`` refuses a model that cannot fit a
built-in data set (whose sample shape is known without loading it), and the builders raise the same
message for any other data (an ``.npz`` file, known only once it is loaded).
"""

from __future__ import annotations

from collections.abc import Sequence

#: The generated token-sequence task (``data.source: tokens``): ids below this, this many per sample.
TOKENS_VOCAB = 32
TOKENS_STEPS = 24

#: The per-sample shape of each built-in data set (images channels first).
BUILTIN_SAMPLE_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (1, 8, 8),
    "sine": (24, 1),
    "tokens": (TOKENS_STEPS,),
}


class ShapeError(ValueError):
    """A model that cannot take the data's samples: ``field`` (under ``model``) and the fix."""

    def __init__(self, field: str, message: str, fix: str) -> None:
        super().__init__(f"{message}; {fix}")
        self.field = field
        self.message = message
        self.fix = fix


def conv_side(size: int, kernel: int, stride: int, padding: str) -> int:
    """A convolution's (or pool's) output side, as Keras computes it: 'same' ceil(size / stride),
    'valid' floor((size - kernel) / stride) + 1 (below 1: the kernel does not fit)."""
    return -(-size // stride) if padding == "same" else (size - kernel) // stride + 1


def cnn_sides(filters: Sequence[int], kernel: int, strides: Sequence[int], padding: str, pool: bool,
              height: int, width: int) -> list[tuple[int, int]]:
    """The feature map's (height, width) after each block of the built-in cnn (conv, then a 2x2
    max-pool when ``pool`` and the map is at least 2x2); raises :class:`ShapeError` when a block's
    kernel no longer fits, with the sizes it went through and what would fit."""
    sides = [(height, width)]
    h, w = height, width
    for i, stride in enumerate(strides[: len(filters)]):
        nh, nw = conv_side(h, kernel, stride, padding), conv_side(w, kernel, stride, padding)
        if nh < 1 or nw < 1:
            trail = " -> ".join(f"{a}x{b}" for a, b in sides)
            raise ShapeError(
                "conv_strides" if any(s > 1 for s in strides[: i + 1]) else "kernel_size",
                f"conv block {i + 1} gets a {h}x{w} feature map, too small for a {kernel}x{kernel} kernel "
                f"with padding {padding} (the input, then after each block: {trail})",
                _cnn_fix(filters, kernel, strides, padding, pool, height, width),
            )
        h, w = nh, nw
        if pool and h >= 2 and w >= 2:
            h, w = h // 2, w // 2
        sides.append((h, w))
    return sides


def _cnn_fix(filters: Sequence[int], kernel: int, strides: Sequence[int], padding: str, pool: bool,
             height: int, width: int) -> str:
    """What would fit: padding same, else the most leading blocks that fit with these settings."""
    fits = 0
    h, w = height, width
    for stride in strides[: len(filters)]:
        h, w = conv_side(h, kernel, stride, padding), conv_side(w, kernel, stride, padding)
        if h < 1 or w < 1:
            break
        fits += 1
        if pool and h >= 2 and w >= 2:
            h, w = h // 2, w // 2
    options = ["set model.padding: same (each conv then gives ceil(side / stride))"] if padding == "valid" else []
    if any(s > 1 for s in strides):
        options.append("use stride 1 in the later blocks (model.conv_strides)")
    if pool:
        options.append("set model.pool: false")
    options.append(f"keep {fits} conv block{'s' if fits != 1 else ''} (model.conv_filters)" if fits else
                   f"use a kernel_size of at most {min(height, width)}")
    return ", or ".join(options)


def dcgan_start(height: int, width: int, generator_filters: int) -> tuple[int, int]:
    """The side the dcgan generator starts from: ``generator_filters`` transposed convolutions of
    stride 2 double it up to the image's, so the image's sides must divide by 2 ** that many."""
    factor = 2 ** generator_filters
    if height % factor or width % factor:
        raise ShapeError(
            "generator_filters",
            f"the dcgan generator doubles its side {generator_filters} times (once per generator_filters "
            f"entry), so the image sides must divide by {factor}, and the data's images are {height}x{width}",
            _dcgan_fix(height, width, "generator_filters"),
        )
    return height // factor, width // factor


def dcgan_discriminator_sides(height: int, width: int, discriminator_filters: int) -> tuple[int, int]:
    """The discriminator's feature map after its ``discriminator_filters`` stride-2 convolutions."""
    h, w = height, width
    for _ in range(discriminator_filters):
        if h < 2 or w < 2:
            raise ShapeError(
                "discriminator_filters",
                f"the dcgan discriminator halves the {height}x{width} images {discriminator_filters} times "
                "(once per discriminator_filters entry): too many for their size",
                _dcgan_fix(height, width, "discriminator_filters"),
            )
        h, w = h // 2, w // 2
    return h, w


def _dcgan_fix(height: int, width: int, field: str) -> str:
    most = 0
    while height % (2 ** (most + 1)) == 0 and width % (2 ** (most + 1)) == 0:
        most += 1
    if most == 0:
        return "use the dense gan (model.architecture: dense), or images with even sides"
    return f"give model.{field} at most {most} entr{'ies' if most > 1 else 'y'}"


def check_image_shape(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """(channels, height, width) of image samples, else a :class:`ShapeError` naming ``what`` needs them."""
    if len(shape) != 3:
        raise ShapeError("type", f"{what} needs image samples shaped (channels, height, width), got {shape}",
                         "use image data (data.source: digits, or an .npz whose x is (N, H, W) or (N, C, H, W))")
    return shape[0], shape[1], shape[2]
