"""Search-space expressions: ``loguniform(1e-4, 1e-1)``, ``choice([32, 64])``, ``grid([...])``.

An expression is parsed with :mod:`ast` and only its literal arguments are read
(:func:`ast.literal_eval`): nothing a user writes is ever evaluated as code. The result is a
:class:`Dimension`, plain data; :func:`to_ray` turns it into Ray Tune's sampler at run time.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

#: name -> (number of arguments, what they are), for messages and checks.
SIGNATURES: dict[str, str] = {
    "uniform": "uniform(low, high)",
    "quniform": "quniform(low, high, q)",
    "loguniform": "loguniform(low, high)",
    "qloguniform": "qloguniform(low, high, q)",
    "randint": "randint(low, high)  (high exclusive)",
    "lograndint": "lograndint(low, high)  (high exclusive)",
    "choice": "choice([a, b, c])",
    "grid": "grid([a, b, c])",
}
RANGE_KINDS = ("uniform", "quniform", "loguniform", "qloguniform", "randint", "lograndint")
LIST_KINDS = ("choice", "grid")
#: The longest expression, the most values one choice()/grid() lists, the largest number it takes.
MAX_EXPRESSION_CHARS = 4000
MAX_CHOICES = 1000
MAX_ABS_NUMBER = 2**63 - 1
EXAMPLE = "loguniform(1e-4, 1e-1), uniform(0.1, 0.5), randint(1, 4), choice([32, 64, 128]) or grid([0.001, 0.01])"


class ExpressionError(ValueError):
    """A search-space expression cannot be used; ``fix`` says how to write it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class Dimension:
    """One parsed search dimension: its kind and its literal arguments."""

    kind: str
    args: tuple[Any, ...]
    text: str

    @property
    def values(self) -> list[Any]:
        """The listed values (choice, grid)."""
        return list(self.args[0]) if self.kind in LIST_KINDS else []

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    @property
    def is_finite(self) -> bool:
        return self.kind in LIST_KINDS

    @property
    def draws_whole_numbers(self) -> bool:
        """A quantised range whose low, high and q are all integers draws integers.

        Ray Tune's ``quniform(16, 64, 16)`` draws floats (32.0), which an integer field such as
        ``training.batch_size`` refuses; such a dimension runs as ``qrandint`` / ``qlograndint``
        (high inclusive, like ``quniform``), so it draws 16, 32, 48 or 64.
        """
        return self.kind in ("quniform", "qloguniform") and all(
            isinstance(a, int) and not isinstance(a, bool) for a in self.args[:3]
        )

    def clip(self, value: Any) -> Any:
        """``value`` brought back into a range's bounds (PBT multiplies values by 0.8 or 1.2 unclipped)."""
        if self.kind in LIST_KINDS or not _is_number(value):
            return value
        low, high = self.args[0], self.args[1]
        if self.kind in ("randint", "lograndint"):
            return int(min(max(int(round(value)), int(low)), int(high) - 1))
        if self.draws_whole_numbers:
            return int(min(max(int(round(value)), int(low)), int(high)))
        return min(max(float(value), float(low)), float(high))

    def samples_for_validation(self) -> list[Any]:
        """Values to check against the job spec field: every listed value, or both ends of a range."""
        if self.kind in LIST_KINDS:
            return self.values
        low, high = self.args[0], self.args[1]
        if self.kind in ("randint", "lograndint"):
            return [int(low), int(high) - 1]
        if self.draws_whole_numbers:
            return [int(low), int(high)]
        ends = [float(low), float(high)]
        if self.kind in ("uniform", "loguniform"):  # draws have fractions: an int field must refuse them
            ends.append(float(low) + (float(high) - float(low)) * 0.37)
        return ends


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_expression(text: Any) -> Dimension:
    """Parse one expression; raises :class:`ExpressionError` with a fix."""
    if not isinstance(text, str):
        raise ExpressionError(
            f"a search dimension is written as an expression in a string, got {type(text).__name__} "
            f"{_short(repr(text))}",
            fix=f"write one of {EXAMPLE}",
        )
    source = text.strip()
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"an expression of {len(source)} characters (at most {MAX_EXPRESSION_CHARS})",
                              fix=f"write one sampler call such as {EXAMPLE}")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ExpressionError(f"cannot read {_short(source)!r}", fix=f"write one of {EXAMPLE}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ExpressionError(f"{_short(source)!r} is not a sampler call", fix=f"write one of {EXAMPLE}")
    name = call.func.id
    if name not in SIGNATURES:
        import difflib

        close = difflib.get_close_matches(name, list(SIGNATURES), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ExpressionError(f"unknown sampler {_short(name)!r}",
                              fix=f"{hint}use one of: " + ", ".join(SIGNATURES.values()))
    if call.keywords:
        raise ExpressionError(f"{name}() takes positional arguments only", fix=f"write {SIGNATURES[name]}")
    try:
        args = tuple(ast.literal_eval(arg) for arg in call.args)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ExpressionError(
            f"the arguments of {name}() must be literal numbers, strings or lists", fix=f"write {SIGNATURES[name]}"
        ) from None
    _check_args(name, args)
    return Dimension(kind=name, args=args, text=source)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_big(value: Any) -> bool:
    """A number no field takes and Ray Tune cannot sample (beyond 64-bit), anywhere in ``value``."""
    if isinstance(value, (list, tuple)):
        return any(_too_big(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_ABS_NUMBER


def _check_args(name: str, args: tuple[Any, ...]) -> None:
    usage = SIGNATURES[name]
    if _too_big(args):
        raise ExpressionError(f"{name}(): a number beyond {MAX_ABS_NUMBER}", fix=f"write {usage} with smaller numbers")
    if name in LIST_KINDS:
        if len(args) != 1 or not isinstance(args[0], (list, tuple)) or not args[0]:
            raise ExpressionError(f"{name}() takes one non-empty list", fix=f"write {usage}")
        if len(args[0]) > MAX_CHOICES:
            raise ExpressionError(f"{name}() lists {len(args[0])} values (at most {MAX_CHOICES})",
                                  fix="list fewer values, or sample a range such as uniform(low, high)")
        if any(isinstance(v, (dict, set)) for v in args[0]):
            raise ExpressionError(f"{name}() values must be numbers, strings, booleans or lists", fix=f"write {usage}")
        return
    wanted = 3 if name.startswith("q") else 2
    if len(args) != wanted or not all(_is_number(a) for a in args):
        raise ExpressionError(f"{name}() takes {wanted} numbers", fix=f"write {usage}")
    low, high = args[0], args[1]
    if name in ("randint", "lograndint") and not all(isinstance(a, int) for a in args):
        raise ExpressionError(f"{name}() takes whole numbers", fix=f"write {usage}, or uniform(low, high) for floats")
    if not low < high:
        raise ExpressionError(f"{name}(): low ({low}) must be below high ({high})", fix=f"write {usage}")
    if name.startswith(("log", "qlog")) and low <= 0:
        raise ExpressionError(f"{name}(): a log scale needs low > 0 (got {low})",
                              fix=f"use a positive low, e.g. {name}(1e-4, {high})")
    if len(args) == 3 and args[2] <= 0:
        raise ExpressionError(f"{name}(): q must be positive (got {args[2]})", fix=f"write {usage}")


def to_ray(dim: Dimension, *, grid_all: bool = False) -> Any:
    """Ray Tune's sampler for ``dim`` (``grid_all``: choice() is searched exhaustively too)."""
    from ray import tune

    if dim.kind == "grid" or (grid_all and dim.kind == "choice"):
        return tune.grid_search(dim.values)
    if dim.kind == "choice":
        return tune.choice(dim.values)
    if dim.draws_whole_numbers:
        whole = tune.qrandint if dim.kind == "quniform" else tune.qlograndint
        low, high, q = dim.args[:3]
        return whole(low, high + 1 if q == 1 else high, q)  # Ray: high is exclusive when q is 1
    sampler = getattr(tune, dim.kind)
    return sampler(*dim.args)


def grid_size(dims: dict[str, Dimension], *, grid_all: bool = False) -> int:
    """How many combinations the grid dimensions make (1 when there are none)."""
    size = 1
    for dim in dims.values():
        if dim.is_grid or (grid_all and dim.kind == "choice"):
            size *= len(dim.values)
    return size
