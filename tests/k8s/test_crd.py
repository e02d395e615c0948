"""The generated TrainingJob CRD: structural, in step with the models, and as strict as they are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from click.testing import CliRunner

from orchestrator.backends.k8s.crd import render_crd_yaml, spec_schema, structural, training_job_crd
from orchestrator.cli import main
from orchestrator.spec import load_spec
from orchestrator.testing.validation import schema_errors, validator_for_crd
from tests.conftest import REPO

pytestmark = pytest.mark.k8s

#: JSONSchemaProps fields the generator may write (apiextensions.k8s.io/v1).
ALLOWED = {"type", "description", "properties", "items", "additionalProperties", "required", "enum",
           "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
           "maxItems", "maxProperties", "pattern", "nullable", "format", "x-kubernetes-preserve-unknown-fields",
           "x-kubernetes-int-or-string", "default", "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural() -> None:
    schema = training_job_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in nodes(schema):
        assert set(node) <= ALLOWED, f"{path}: {set(node) - ALLOWED}"
        assert "type" in node or node.get("x-kubernetes-int-or-string") \
            or node.get("x-kubernetes-preserve-unknown-fields") or path == "", f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_the_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(training_job_crd(), kubernetes_validate.latest_version(), strict=True)


def test_types_nullables_and_free_form_fields_follow_the_models() -> None:
    spec = spec_schema()["properties"]
    resources = spec["resources"]["properties"]
    assert resources["workers"] == {"description": "Number of training workers.", "default": 2, "maximum": 4096,
                                    "minimum": 1, "type": "integer"}
    assert resources["memory"]["x-kubernetes-int-or-string"] and resources["memory"]["nullable"]
    assert resources["accelerator"]["type"] == "string" and resources["accelerator"]["nullable"]
    assert spec["params"] == {"x-kubernetes-preserve-unknown-fields": True, "type": "object",
                              "description": "Free-form values passed to a user entrypoint."}
    assert spec["model"]["type"] == "object" and spec["model"]["nullable"] is True
    assert spec["model"]["properties"]["type"]["enum"] == ["cnn", "gan", "rnn", "sequential"]
    # rnn's `layers` (a count) and sequential's (a list): kept as given, checked by the spec models
    assert spec["model"]["properties"]["layers"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["data"]["properties"]["validationFraction"]["exclusiveMinimum"] is True
    assert spec["suspend"]["type"] == "boolean"
    assert spec_schema()["required"] == ["name"]


def test_a_union_of_models_becomes_one_object_with_every_field() -> None:
    a = {"type": "object", "properties": {"type": {"const": "a"}, "x": {"type": "integer"}}, "required": ["type", "x"]}
    c = {"type": "object", "properties": {"type": {"const": "c"}, "y": {"type": "string"}}, "required": ["type"]}
    merged = structural({"anyOf": [{"oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/C"}]}, {"type": "null"}]},
                        {"A": a, "C": c})
    assert merged["properties"]["type"]["enum"] == ["a", "c"]
    assert set(merged["properties"]) == {"type", "x", "y"} and merged["required"] == ["type"]
    assert merged["nullable"] is True


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_a_valid_trainingjob(path: Path, example_jobs: Path) -> None:
    from orchestrator.backends.k8s.manifests import training_job_manifest

    path = example_jobs / "jobs" / path.name  # beside the data the data-set examples read

    if "\ntune:" in path.read_text():  # a sweep spec: its job part (each trial's job) is a TrainingJob's spec
        from orchestrator.sweep.loader import load_sweep_spec

        spec = load_sweep_spec(path).job
    else:
        spec = load_spec(path)
    obj = training_job_manifest(spec, "default")
    assert schema_errors(validator_for_crd(training_job_crd()), obj) == []


@pytest.mark.parametrize(("field", "value", "where"), [
    ("workers", 0, "spec.resources.workers: 0 is less than the minimum of 1"),
    ("queue", "Bad Queue", "spec.resources.queue: 'Bad Queue' does not match"),
    ("gpusPerWorker", "two", "spec.resources.gpusPerWorker: 'two' is not of type 'number'"),
    ("gpus_per_worker", 1, "spec.resources: Additional properties are not allowed ('gpus_per_worker' was"),
    ("colour", "red", "spec.resources: Additional properties are not allowed ('colour' was unexpected)"),
])
def test_the_schema_rejects_bad_values_naming_the_field(field: str, value: Any, where: str) -> None:
    obj = {"apiVersion": "orchestrator.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"},
           "spec": {"name": "x", "model": {"type": "cnn"}, "resources": {field: value}}}
    errors = schema_errors(validator_for_crd(training_job_crd()), obj)
    assert any(e.startswith(where) for e in errors), errors


def test_crd_check_passes_on_the_committed_file_and_fails_on_a_stale_one(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["crd", "--check", "--path", str(REPO / "deploy/k8s/base/crd.yaml")])
    assert ok.exit_code == 0, ok.output
    stale = tmp_path / "crd.yaml"
    stale.write_text(render_crd_yaml().replace("maximum: 4096", "maximum: 4095"), encoding="utf-8")
    bad = runner.invoke(main, ["crd", "--check", "--path", str(stale)])
    assert bad.exit_code == 2 and "out of date" in bad.output
    written = runner.invoke(main, ["crd", "--write", "--path", str(stale)])
    assert written.exit_code == 0 and stale.read_text(encoding="utf-8") == render_crd_yaml()


def test_one_field_name_with_two_kinds_of_value_is_kept_as_given() -> None:
    a = {"type": "object", "properties": {"type": {"const": "a"}, "n": {"type": "integer", "description": "count"}}}
    b = {"type": "object", "properties": {"type": {"const": "b"}, "n": {"type": "array", "items": {"type": "string"},
                                                                         "description": "list"}}}
    merged = structural({"oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]}, {"A": a, "B": b})
    assert merged["properties"]["n"] == {"x-kubernetes-preserve-unknown-fields": True, "description": "count Or: list"}
