"""Validate objects against a CRD's ``openAPIV3Schema`` with ``jsonschema``, strictly.

A CRD schema is OpenAPI v3.0 with Kubernetes extensions, not JSON Schema, so it is translated
first: ``nullable: true`` admits null, ``x-kubernetes-int-or-string`` admits both, OpenAPI's
boolean ``exclusiveMinimum`` becomes JSON Schema's number form. The API server silently *prunes*
fields a structural schema does not declare; for a generator that is a bug that goes unnoticed, so
:func:`strict_schema` turns every declared object (one with ``properties`` and without
``x-kubernetes-preserve-unknown-fields``) into ``additionalProperties: false``: a misspelt or
misplaced field fails validation instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 (Kubernetes) schema as strict JSON Schema (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = strict_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in ("nullable", "format") or key.startswith("x-kubernetes-"):
            continue  # translated below, or not a JSON Schema keyword (formats: not checked here)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            continue  # OpenAPI 3.0's boolean form, translated below
        else:
            out[key] = value
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if schema.get(bound) is True and limit in schema:
            out[bound] = out.pop(limit)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf") or [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def crd_version_schema(crd: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one version of a CRD (default: the storage version)."""
    versions = crd["spec"]["versions"]
    chosen = next((v for v in versions if (v["name"] == version if version else v.get("storage"))), None)
    if chosen is None:
        raise KeyError(f"{crd['metadata']['name']} has no version {version!r}")
    schema: dict[str, Any] = chosen["schema"]["openAPIV3Schema"]
    return schema


def validator_for_crd(crd: Mapping[str, Any], version: str | None = None) -> jsonschema.protocols.Validator:
    """A strict jsonschema validator for objects of a CRD's version."""
    schema = strict_schema(crd_version_schema(crd, version))
    # The API server fills these; a manifest need not carry them, but when present they are free-form.
    props = schema.setdefault("properties", {})
    props["metadata"] = {"type": "object"}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def schema_errors(validator: jsonschema.protocols.Validator, obj: Any) -> list[str]:
    """Every violation as ``field.path: message``, sorted (empty: valid)."""
    errors = []
    for error in validator.iter_errors(obj):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{path}: {error.message}")
    return sorted(errors)
