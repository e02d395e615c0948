"""A TrainingJob's ``spec`` is the job spec with camelCase field names; job files stay snake_case.

The names are derived, never listed: :func:`to_camel` of each field of the spec models
(:mod:`orchestrator.spec.models`). The CRD generator names the schema's properties with it, and
:func:`convert_spec_keys` renames the keys of spec data both ways, walking the models' JSON Schema:
only *field names* change. Keys that are user data keep their spelling: a ``dict`` field's keys
(``kubernetes.node_selector`` labels such as ``cloud.google.com/gke-spot``), free-form values
(``params``, a sequential model's ``layers``), and every value.

Failure injection (``testing.inject``) is for tests and demos, not the production API: it is not
in the TrainingJob's spec but in the annotation :data:`INJECT_ANNOTATION` (JSON: the list of
injections, as ``testing.inject`` writes them in a job file). :func:`training_job_parts` splits
a job spec that way and :func:`job_spec_from_training_job` puts it back together.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.backends.k8s import GROUP
from orchestrator.errors import SpecError, SpecIssue
from orchestrator.spec import job_spec_json_schema
from orchestrator.spec.models import TolerationSpec

#: The annotation that carries failure injections (JSON list), for tests and demos only.
INJECT_ANNOTATION = f"{GROUP}/testing-inject"
#: Job spec sections that are not part of the TrainingJob API.
NOT_IN_API = ("testing",)


def to_camel(name: str) -> str:
    """``gpus_per_worker`` -> ``gpusPerWorker`` (a name without ``_`` is kept as it is)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def field_path(path: str) -> str:
    """A job spec field path (``training.batch_size``) as the TrainingJob names it (``training.batchSize``)."""
    return ".".join(to_camel(part) for part in path.split("."))


@dataclass
class _Shape:
    """Where field names are in spec data: an object's fields, a list's items, a map's values.
    ``None`` anywhere: free-form data, left as it is."""

    fields: dict[str, _Shape | None] | None = None
    items: _Shape | None = None
    values: _Shape | None = None
    camel: dict[str, str] = field(default_factory=dict)  # snake -> camel, of ``fields``
    snake: dict[str, str] = field(default_factory=dict)  # camel -> snake


def _deref(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _merge(a: _Shape | None, b: _Shape | None) -> _Shape | None:
    """One shape for a value that may be either (a union); a conflict is free-form."""
    if a is None or b is None:
        return None
    if a.fields is not None and b.fields is not None:
        names = {**a.fields, **b.fields}
        merged = {n: _merge(a.fields[n], b.fields[n]) if n in a.fields and n in b.fields else names[n]
                  for n in names}
        return _object(merged)
    if a.fields is None and b.fields is None and (a.items is None) == (b.items is None) \
            and (a.values is None) == (b.values is None):
        return _Shape(items=_merge(a.items, b.items) if a.items else None,
                      values=_merge(a.values, b.values) if a.values else None)
    return None


def _object(fields: dict[str, _Shape | None]) -> _Shape:
    camel = {name: to_camel(name) for name in fields}
    return _Shape(fields=fields, camel=camel, snake={c: s for s, c in camel.items()})


def _shape(node: Mapping[str, Any], defs: Mapping[str, Any]) -> _Shape | None:
    node = _deref(node, defs)
    options = [o for o in node.get("anyOf") or node.get("oneOf") or [] if _deref(o, defs).get("type") != "null"]
    if options:
        shapes = [_shape(o, defs) for o in options]
        merged = shapes[0]
        for other in shapes[1:]:
            merged = _merge(merged, other)
        return merged
    if "properties" in node:
        return _object({name: _shape(sub, defs) for name, sub in node["properties"].items()})
    if node.get("type") == "array" and isinstance(node.get("items"), Mapping):
        items = _shape(node["items"], defs)
        return _Shape(items=items) if items is not None else None
    if isinstance(node.get("additionalProperties"), Mapping):
        values = _shape(node["additionalProperties"], defs)
        return _Shape(values=values) if values is not None else None
    return None  # a scalar, or free-form


@functools.cache
def _spec_shape() -> _Shape:
    schema = job_spec_json_schema()
    shape = _shape(schema, schema.get("$defs", {}))
    assert shape is not None and shape.fields is not None
    return shape


def convert_spec_keys(data: Mapping[str, Any], to: Literal["camel", "snake"], *,
                      problems: list[SpecIssue] | None = None) -> dict[str, Any]:
    """Job spec data with its field names in camelCase (a TrainingJob's ``spec``) or back in
    snake_case (a job file's). User data keeps its keys (see the module docstring). Going to
    snake_case, a snake_case field name where a camelCase one is due is added to ``problems``
    (when given) and kept, so the spec's check refuses it."""
    out = _convert(data, _spec_shape(), to, "", problems)
    assert isinstance(out, dict)
    return out


def _convert(data: Any, shape: _Shape | None, to: str, path: str, problems: list[SpecIssue] | None) -> Any:
    if shape is None:
        return data
    if isinstance(data, Mapping) and shape.fields is not None:
        out: dict[str, Any] = {}
        for raw, value in data.items():
            key = str(raw)
            if to == "camel":
                snake, new = key, shape.camel.get(key, key)
            else:
                snake = shape.snake.get(key, key)
                new = snake
                if key not in shape.snake and key in shape.camel and problems is not None:
                    problems.append(SpecIssue(f"{path}{key}", f"TrainingJob fields are camelCase: write "
                                              f"{shape.camel[key]}, not {key}", fix=f"rename it {shape.camel[key]}"))
            out[new] = _convert(value, shape.fields.get(snake), to, f"{path}{snake}.", problems)
        return out
    if isinstance(data, Mapping) and shape.values is not None:
        return {k: _convert(v, shape.values, to, f"{path}{k}.", problems) for k, v in data.items()}
    if isinstance(data, list) and shape.items is not None:
        return [_convert(v, shape.items, to, f"{path}{i}.", problems) for i, v in enumerate(data)]
    return data


def training_job_parts(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A job spec as data (snake_case) -> (the TrainingJob's ``spec``, its annotations): the spec in
    camelCase without ``testing``, tolerations as objects; failure injections, if any, in :data:`INJECT_ANNOTATION`."""
    body = {k: v for k, v in data.items() if k not in NOT_IN_API}
    resources = body.get("resources")
    if isinstance(resources, Mapping) and isinstance(resources.get("tolerations"), list):
        # a job file's short form (key=value:Effect) as the Toleration objects of the API
        body["resources"] = {**resources, "tolerations": [_toleration(t) for t in resources["tolerations"]]}
    annotations = {}
    inject = ((data.get("testing") or {}).get("inject")) or []
    if inject:
        annotations[INJECT_ANNOTATION] = json.dumps(inject, sort_keys=True, separators=(",", ":"))
    return convert_spec_keys(body, "camel"), annotations


def _toleration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return TolerationSpec.parse(value)
        except ValueError:
            return value  # refused by the spec's check, naming it
    return value


def job_spec_from_training_job(obj: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """A TrainingJob -> its job spec as data (snake_case, as in a job file), ``suspend`` left out,
    failure injections taken from :data:`INJECT_ANNOTATION`. ``strict``: a snake_case field name,
    a ``testing`` section in the spec or an unreadable annotation raise :class:`SpecError`
    (otherwise they are passed over, for a read-only view)."""
    meta = obj.get("metadata") or {}
    where = f"TrainingJob {meta.get('namespace')}/{meta.get('name')}"
    problems: list[SpecIssue] = []
    spec = {k: v for k, v in (obj.get("spec") or {}).items() if k != "suspend"}
    for name in NOT_IN_API:
        if name in spec:
            spec.pop(name)
            problems.append(SpecIssue(name, f"{name} is not part of the TrainingJob API",
                                      fix=f"put failure injections in the annotation {INJECT_ANNOTATION} (a JSON "
                                          "list), or submit with orchestrator submit --inject-failure"))
    data = convert_spec_keys(spec, "snake", problems=problems)
    raw = (meta.get("annotations") or {}).get(INJECT_ANNOTATION)
    if raw:
        try:
            inject = json.loads(raw)
            if not isinstance(inject, list):
                raise ValueError("not a list")
            data["testing"] = {"inject": inject}
        except ValueError as exc:
            problems.append(SpecIssue(f"metadata.annotations.{INJECT_ANNOTATION}", f"not a JSON list: {exc}",
                                      fix='e.g. [{"kind": "exception", "rank": 0, "at_step": 5}]'))
    if problems and strict:
        raise SpecError(problems, source=where)
    return data
