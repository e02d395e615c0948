"""Keras-style layer lists: parsed once, built by each framework's builder.

A ``sequential`` model's ``layers`` is a YAML list whose items are either a Keras call written as
text, exactly as in Keras code::

    - Dense(128, activation='relu', input_shape=(784,))
    - BatchNormalization()
    - Dropout(0.5)
    - Dense(10, activation='softmax')

or a one-key mapping ``{Dense: {units: 128, activation: relu}}`` (arguments by name) or
``{Dense: [128, relu]}`` (by position, in Keras' order). Only literal arguments are accepted (the
text is parsed with :mod:`ast`, never evaluated). Shapes follow Keras: per sample, channels last.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

#: Each layer's arguments in Keras' positional order, with defaults (None: required).
LAYER_ARGS: dict[str, tuple[tuple[str, Any], ...]] = {
    "Dense": (("units", None), ("activation", None), ("use_bias", True), ("input_shape", None)),
    "Conv2D": (("filters", None), ("kernel_size", None), ("strides", 1), ("padding", "valid"),
               ("activation", None), ("use_bias", True), ("input_shape", None)),
    "MaxPooling2D": (("pool_size", 2), ("strides", None), ("padding", "valid"), ("input_shape", None)),
    "AveragePooling2D": (("pool_size", 2), ("strides", None), ("padding", "valid"), ("input_shape", None)),
    "Embedding": (("input_dim", None), ("output_dim", None), ("input_shape", None)),
    "Flatten": (("input_shape", None),),
    "Dropout": (("rate", None), ("input_shape", None)),
    "BatchNormalization": (("momentum", 0.99), ("epsilon", 0.001), ("input_shape", None)),
    "SimpleRNN": (("units", None), ("activation", "tanh"), ("return_sequences", False), ("input_shape", None)),
    "LSTM": (("units", None), ("return_sequences", False), ("input_shape", None)),
    "GRU": (("units", None), ("return_sequences", False), ("input_shape", None)),
    "Reshape": (("target_shape", None), ("input_shape", None)),
}

#: The largest vocabulary an Embedding takes (its input_dim).
MAX_VOCAB = 1_000_000

#: The longest layer written as text, the most layers, and the largest size or count one takes.
MAX_LAYER_CHARS = 500
MAX_LAYERS = 256
MAX_UNITS = 65536
MAX_KERNEL = 64
MAX_SHAPE_DIMS = 8
MAX_SHAPE_SIDE = 1_000_000

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softmax", "linear", "elu", "gelu", "selu", "softplus", "leaky_relu")


class LayerError(ValueError):
    """A layer entry that cannot be used; ``index`` is its position in the list."""

    def __init__(self, index: int, message: str, fix: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class Layer:
    """One parsed layer: its Keras class name and every argument, defaults filled in."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.args[name]


def parse_layer(item: Any, index: int) -> Layer:
    """One YAML item (text or one-key mapping) as a :class:`Layer`."""
    if isinstance(item, str):
        if len(item) > MAX_LAYER_CHARS:
            raise LayerError(index, f"a layer of {len(item)} characters (at most {MAX_LAYER_CHARS})",
                             "write one Keras call such as \"Dense(64, activation='relu')\"")
        kind, positional, named = _parse_call(item, index)
    elif isinstance(item, dict) and len(item) == 1:
        [(kind, given)] = item.items()
        if given is None:
            positional, named = [], {}
        elif isinstance(given, dict):
            positional, named = [], dict(given)
        elif isinstance(given, list):
            positional, named = list(given), {}
        else:
            positional, named = [given], {}
    else:
        raise LayerError(index, f"cannot read the layer {_short(repr(item))}",
                         "write a Keras call such as \"Dense(64, activation='relu')\" or {Dense: {units: 64}}")
    kind = str(kind)
    if kind not in LAYER_ARGS:
        import difflib

        close = [k for k in LAYER_ARGS if k.lower() == kind.lower()] or difflib.get_close_matches(
            kind, list(LAYER_ARGS), n=1, cutoff=0.6)
        raise LayerError(index, f"unknown layer {_short(kind)!r}",
                         f"did you mean {close[0]}?" if close else f"use one of {', '.join(LAYER_ARGS)}")
    spec = LAYER_ARGS[kind]
    names = [n for n, _ in spec]
    if len(positional) > len(names):
        raise LayerError(index, f"{kind} takes at most {len(names)} positional arguments, got {len(positional)}",
                         f"its arguments are {', '.join(names)}")
    args = dict(zip(names, positional, strict=False))
    for name, value in named.items():
        if name not in names:
            raise LayerError(index, f"{kind} has no argument {_short(str(name))!r}", f"its arguments are {', '.join(names)}")
        if name in args:
            raise LayerError(index, f"{kind} got {name!r} twice", "give it by position or by name, not both")
        args[name] = value
    for name, default in spec:
        if name not in args:
            if default is None and name not in ("input_shape", "activation", "strides"):
                raise LayerError(index, f"{kind} needs {name!r}", f"e.g. {kind}({name}=...)")
            args[name] = default
    _check(kind, args, index)
    return Layer(kind, args)


def parse_layers(items: list[Any]) -> list[Layer]:
    if len(items) > MAX_LAYERS:
        raise LayerError(MAX_LAYERS, f"{len(items)} layers; a sequential model takes at most {MAX_LAYERS}",
                         "write a smaller model, or an entrypoint for a custom one")
    layers = [parse_layer(item, i) for i, item in enumerate(items)]
    for i, layer in enumerate(layers[1:], start=1):
        if layer.args.get("input_shape") is not None:
            raise LayerError(i, "only the first layer may set input_shape", "remove input_shape here")
        if layer.kind == "Embedding":
            raise LayerError(i, "Embedding reads the token ids of the data: only the first layer may be one",
                             "move it to the start of the list")
    return layers


def check_output_shape(shape: tuple[int, ...], outputs: int) -> None:
    """Raise ValueError unless a built layer list ends in ``outputs`` values per sample (both builders)."""
    if len(shape) != 1:
        raise ValueError(f"the last layer gives samples shaped {shape}; end with Flatten and Dense({outputs})")
    if shape[0] != outputs:
        want = f"{outputs} classes; end with Dense({outputs}, activation='softmax')" if outputs > 1 \
            else "one target (regression); end with Dense(1)"
        raise ValueError(f"the last layer gives {shape[0]} outputs but the data has {want}")


def _parse_call(text: str, index: int) -> tuple[str, list[Any], dict[str, Any]]:
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise LayerError(index, f"cannot parse {_short(text)!r}: {exc.msg}", "write it as in Keras: Dense(64)") from None
    except (ValueError, MemoryError, RecursionError):  # a NUL byte, or nesting the parser cannot hold
        raise LayerError(index, f"cannot parse {_short(text)!r}", "write it as in Keras: Dense(64)") from None
    if isinstance(node, ast.Name):  # "Flatten" without parentheses
        return node.id, [], {}
    if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
        raise LayerError(index, f"{_short(text)!r} is not a layer call", "write it as in Keras: Dense(64)")
    kind = node.func.id if isinstance(node.func, ast.Name) else node.func.attr  # layers.Dense(...) too
    try:
        positional = [ast.literal_eval(a) for a in node.args]
        named = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise LayerError(index, f"{_short(text)!r}: arguments must be literals (numbers, strings, tuples, lists)",
                         "write values, not expressions or variable names") from None
    return kind, positional, named


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _positive_int(value: Any, limit: int = MAX_UNITS) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(kind: str, args: dict[str, Any], index: int) -> None:
    for name in ("use_bias", "return_sequences"):
        if name in args and not isinstance(args[name], bool):
            raise LayerError(index, f"{kind}: {name} must be true or false, got {_short(repr(args[name]))}",
                             f"give it by name, e.g. {kind}(..., {name}=True)")
    if kind == "BatchNormalization":
        if not (_finite(args["momentum"]) and 0 <= args["momentum"] < 1):
            raise LayerError(index, f"BatchNormalization: momentum must be in [0, 1), got {_short(repr(args['momentum']))}",
                             "e.g. BatchNormalization(momentum=0.99)")
        if not (_finite(args["epsilon"]) and 0 < args["epsilon"] <= 1):
            raise LayerError(index, f"BatchNormalization: epsilon must be in (0, 1], got {_short(repr(args['epsilon']))}",
                             "e.g. BatchNormalization(epsilon=0.001)")
    if kind == "SimpleRNN" and args["activation"] not in ("tanh", "relu"):
        raise LayerError(index, f"SimpleRNN: activation {_short(repr(args['activation']))} is not supported",
                         "use activation='tanh' or 'relu'")
    act = args.get("activation")
    if act is not None and act not in ACTIVATIONS:
        raise LayerError(index, f"{kind}: unknown activation {_short(repr(act))}", f"use one of {', '.join(ACTIVATIONS)}")
    if kind == "Embedding":
        if not _positive_int(args["input_dim"], MAX_VOCAB) or args["input_dim"] < 2:
            raise LayerError(index, f"Embedding: input_dim (the vocabulary size) must be an integer from 2 to "
                             f"{MAX_VOCAB}, got {_short(repr(args['input_dim']))}", "e.g. Embedding(32, 16)")
        if not _positive_int(args["output_dim"]):
            raise LayerError(index, f"Embedding: output_dim must be a positive integer (at most {MAX_UNITS}), "
                             f"got {_short(repr(args['output_dim']))}", "e.g. Embedding(32, 16)")
    for name in ("units", "filters"):
        if name in args and not _positive_int(args[name]):
            raise LayerError(index, f"{kind}: {name} must be a positive integer (at most {MAX_UNITS}), "
                             f"got {_short(repr(args[name]))}",
                             f"e.g. {kind}({name}=64)")
    if kind == "Dropout" and not (_finite(args["rate"]) and 0 <= args["rate"] < 1):
        raise LayerError(index, f"Dropout: rate must be in [0, 1), got {_short(repr(args['rate']))}", "e.g. Dropout(0.5)")
    for name in ("kernel_size", "pool_size", "strides"):
        if name in args and args[name] is not None:
            args[name] = _pair(kind, name, args[name], index)
    if "padding" in args and args["padding"] not in ("valid", "same"):
        raise LayerError(index, f"{kind}: padding must be 'valid' or 'same'", "use padding='same' or 'valid'")
    for name in ("input_shape", "target_shape"):
        value = args.get(name)
        if value is not None:
            if not (isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_SHAPE_DIMS
                    and all(_positive_int(v, MAX_SHAPE_SIDE) for v in value)):
                raise LayerError(index, f"{kind}: {name} must be a tuple of up to {MAX_SHAPE_DIMS} positive "
                                 f"integers (at most {MAX_SHAPE_SIDE}), got {_short(repr(value))}",
                                 f"e.g. {name}=(784,)")
            args[name] = tuple(value)


def _pair(kind: str, name: str, value: Any, index: int) -> tuple[int, int]:
    if _positive_int(value, MAX_KERNEL):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(v, MAX_KERNEL) for v in value):
        return (value[0], value[1])
    raise LayerError(index, f"{kind}: {name} must be a positive integer or a pair (at most {MAX_KERNEL}), "
                     f"got {_short(repr(value))}",
                     f"e.g. {name}=3 or {name}=(3, 3)")
