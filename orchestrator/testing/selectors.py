"""Kubernetes label and field selectors, as the API server reads them (for the emulator).

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``,
joined by commas. Field selectors: ``metadata.name=x``, ``metadata.namespace!=y`` and any other
dotted path, joined by commas.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SET_RE = re.compile(r"^\s*(!?)([^\s!=,()]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=,()]+)\s*(==|=|!=)\s*([^\s,()]*)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def matches_labels(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Whether ``obj``'s ``metadata.labels`` satisfy a label selector (empty: everything)."""
    if not selector:
        return True
    labels: Mapping[str, str] = obj.get("metadata", {}).get("labels") or {}
    for term in _split(selector):
        eq = _EQ_RE.match(term)
        if eq:
            key, op, value = eq.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
            continue
        found = _SET_RE.match(term)
        if found is None:
            raise ValueError(f"unparsable label selector term {term!r}")
        negated, key, op, values = found.groups()
        if op is None:
            if (key in labels) == bool(negated):
                return False
            continue
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if op == "in" and labels.get(key) not in wanted:
            return False
        if op == "notin" and key in labels and labels[key] in wanted:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def matches_fields(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Whether ``obj`` satisfies a field selector such as ``metadata.name=x``."""
    if not selector:
        return True
    for term in _split(selector):
        eq = _EQ_RE.match(term)
        if eq is None:
            raise ValueError(f"unparsable field selector term {term!r}")
        path, op, value = eq.groups()
        if (_field(obj, path) == value) != (op != "!="):
            return False
    return True
