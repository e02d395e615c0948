"""docs/spec-reference.md: every job spec field, generated from the pydantic models' JSON Schema."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.spec import job_spec_json_schema
from orchestrator.sweep.models import TuneSpec

Schema = dict[str, Any]

_INTRO = """\
Every field of a job spec, generated from the pydantic models in `orchestrator/spec/models.py`
(and `orchestrator/sweep/models.py` for `tune:`) by `python -m orchestrator.docgen`; a test fails
when this file is out of date. Every section is optional except `name` and one of `model` /
`entrypoint`; unknown fields are errors. `orchestrator validate SPEC` prints a spec with every
default filled in, `orchestrator schema` the JSON Schema this page is made from. What the fields
mean in practice (models, data, resources, accelerators) is explained in [spec.md](spec.md).
"""

_CONSTRAINTS = (
    ("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"), ("exclusiveMaximum", "< {}"),
    ("minLength", "length >= {}"), ("maxLength", "length <= {}"),
    ("minItems", "items >= {}"), ("maxItems", "items <= {}"), ("pattern", "matches `{}`"),
)


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _resolve(node: Schema, defs: Schema) -> Schema:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else node


def _type_of(node: Schema, defs: Schema) -> str:
    if "$ref" in node:
        return "section" if "properties" in _resolve(node, defs) else _type_of(_resolve(node, defs), defs)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " | ".join(f"`{json.dumps(value)}`" for value in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            kinds = [_type_of(option, defs) for option in node[key]]
            return " or ".join(dict.fromkeys(kinds))
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type_of(node.get('items', {}), defs)}"
    if kind == "object":
        values = node.get("additionalProperties")
        return f"mapping of {_type_of(values, defs)}" if isinstance(values, dict) and values else "mapping"
    return {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean",
            "null": "null"}.get(str(kind), "any")


def _constraints(node: Schema) -> list[str]:
    found = [template.format(node[key]) for key, template in _CONSTRAINTS if key in node]
    for key in ("anyOf", "oneOf"):
        for option in node.get(key, ()):
            found += _constraints(option)
    items = node.get("items")
    if isinstance(items, dict):
        found += [f"each {text}" for text in _constraints(items)]
    return found


def _default(node: Schema, required: bool) -> str:
    if required:
        return "required"
    if "default" not in node:
        return ""
    value = node["default"]
    if isinstance(value, dict) and value:
        return "(see below)"
    return f"`{json.dumps(value)}`"


def _nested(node: Schema, defs: Schema) -> Schema | None:
    """The object schema under a field (a section, or the items of a list of sections), if any."""
    target = _resolve(node, defs)
    if "properties" in target:
        return target
    optional = [option for option in node.get("anyOf", ()) if "$ref" in option]
    if len(optional) == 1:  # an optional section: `X | None`
        return _nested(optional[0], defs)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in _resolve(items, defs):
        return _resolve(items, defs)
    return None


def _table(path: str, model: Schema, defs: Schema) -> list[str]:
    """A table of one object's fields, then one table per nested object."""
    required = set(model.get("required", ()))
    rows = ["| field | type | default | constraints | meaning |", "|---|---|---|---|---|"]
    later: list[str] = []
    for name, node in model.get("properties", {}).items():
        field = f"{path}.{name}" if path else name
        description = node.get("description") or _resolve(node, defs).get("description", "")
        constraints = "; ".join(_constraints(node))
        rows.append(f"| `{field}` | {_cell(_type_of(node, defs))} | {_cell(_default(node, name in required))} | "
                    f"{_cell(constraints)} | {_cell(description)} |")
        nested = _nested(node, defs)
        if nested is not None:
            suffix = "[]" if node.get("type") == "array" else ""
            later += ["", f"#### `{field}{suffix}`", "", *_table(field + suffix, nested, defs)]
    return rows + later


def _union_members(node: Schema, defs: Schema) -> list[Schema]:
    for key in ("anyOf", "oneOf"):
        for option in node.get(key, ()):
            if "$ref" in option:
                members = [_resolve(member, defs) for member in node[key] if "$ref" in member]
                return members if len(members) > 1 else []  # one model or null: a section, not a choice
            members = _union_members(option, defs)
            if members:
                return members
    return []


def render() -> str:
    """The whole page."""
    schema = job_spec_json_schema()
    defs: Schema = schema.get("$defs", {})
    lines = ["# Job spec reference", "", _INTRO, ""]
    top = {name: node for name, node in schema["properties"].items() if _nested(node, defs) is None
           and not _union_members(node, defs)}
    lines += ["## Top level", "", schema.get("description", "").strip(), "",
              *_table("", {"properties": top, "required": schema.get("required", [])}, defs), ""]
    for name, node in schema["properties"].items():
        members = _union_members(node, defs)
        if members:
            lines += [f"## `{name}`", "", f"One of the following, chosen by `{name}.type`.", ""]
            for member in members:
                kind = member["properties"]["type"].get("const", member["properties"]["type"].get("default"))
                lines += [f"### `{name}.type: {kind}`", "", member.get("description", ""), "",
                          *_table(name, member, defs), ""]
            continue
        nested = _nested(node, defs)
        if nested is not None:
            lines += [f"## `{name}`", "", nested.get("description", ""), "", *_table(name, nested, defs), ""]
    tune = TuneSpec.model_json_schema(mode="validation")
    tune_defs: Schema = tune.get("$defs", {})
    lines += ["## `tune` (sweep specs only)", "",
              "A sweep spec is a job spec plus this section; run it with `orchestrator tune SPEC` "
              "(see [sweeps.md](sweeps.md)). " + tune.get("description", ""), "",
              *_table("tune", tune, tune_defs), ""]
    scheduler = tune["properties"].get("scheduler", {})
    for member in _union_members(scheduler, tune_defs):
        kind = member["properties"]["type"].get("const", member["properties"]["type"].get("default"))
        lines += [f"### `tune.scheduler.type: {kind}`", "", member.get("description", ""), "",
                  *_table("tune.scheduler", member, tune_defs), ""]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
