"""Kueue admits, the operator does not gate twice: the RayJob of a Kueue job is created suspended
with Kueue's labels, the operator's book holds nothing for it, and only Kueue (here: the test)
unsuspends it. Plus our priorities as WorkloadPriorityClasses (deploy/k8s/kueue)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.backends.k8s import JOB_UID_LABEL, KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL, POOL_LABEL
from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.backends.k8s.kueue import (
    admission_pool,
    kueue_priority,
    local_queue,
    priority_class,
    workload_priority_classes,
)
from orchestrator.backends.k8s.manifests import RuntimeConfig, rayjob_manifest
from orchestrator.operator.controller import OperatorConfig, desired_from
from orchestrator.operator.reconcile import (
    ApplyNetworkPolicy,
    CreateRayJob,
    EnsureTokenSecret,
    Observed,
    WriteStatus,
    reconcile,
)
from orchestrator.scheduler import NodePool
from orchestrator.spec import validate_spec_data
from orchestrator.testing import builders as b
from tests.conftest import REPO
from tests.k8s.conftest import OPERATOR_AGENT, wait_for
from tests.k8s.test_operator import add_pools, events, phase_is, rayjobs, set_rayjob_status

pytestmark = pytest.mark.k8s

KUEUE_DIR = REPO / "deploy/k8s/kueue"
NOW = "2026-01-01T00:00:00Z"


def spec(name: str = "j", workers: int = 2, **extra: Any) -> dict[str, Any]:
    return b.spec_data(name, workers=workers, gpus=1, accelerator="nvidia-a100-40gb", **extra)


def tj(name: str = "j", namespace: str = "ns", labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    obj = b.training_job(name, namespace, spec(name, **extra), labels=labels)
    obj["metadata"].update(uid="uid-1", generation=1)
    return obj


#: Kueue's WorkloadPriorityClass (kueue.x-k8s.io/v1beta1), strict: an unknown field is an error.
WORKLOAD_PRIORITY_CLASS = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "value"],
    "properties": {
        "apiVersion": {"const": "kueue.x-k8s.io/v1beta1"}, "kind": {"const": "WorkloadPriorityClass"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "value": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
        "description": {"type": "string"},
    },
}


def check_workload_priority_class(obj: dict[str, Any]) -> None:
    import jsonschema

    errors = [e.message for e in jsonschema.Draft202012Validator(WORKLOAD_PRIORITY_CLASS).iter_errors(obj)]
    assert errors == [], f"WorkloadPriorityClass {obj.get('metadata', {}).get('name')}: {errors}"


# -- which jobs Kueue admits, and at what priority ---------------------------------------------------


def test_the_local_queue_comes_from_the_spec_then_the_label_then_the_operators_namespaces() -> None:
    named = tj(kubernetes={"local_queue": "team-a-gpu"}, labels={KUEUE_QUEUE_LABEL: "other"})
    assert local_queue(named, validate_spec_data(job_spec_from_training_job(named))) == "team-a-gpu"
    labelled = tj(labels={KUEUE_QUEUE_LABEL: "team-b"})
    assert local_queue(labelled, validate_spec_data(job_spec_from_training_job(labelled))) == "team-b"
    plain = tj()  # resources.queue: default
    parsed = validate_spec_data(job_spec_from_training_job(plain))
    assert local_queue(plain, parsed) is None
    assert local_queue(plain, parsed, namespaces=("ns",)) == "default"
    assert local_queue(plain, parsed, namespaces=("elsewhere",)) is None
    assert local_queue(plain, parsed, everywhere=True) == "default"
    assert desired_from(plain, OperatorConfig(kueue_namespaces=("ns",))).kueue_queue == "default"
    assert desired_from(plain, OperatorConfig()).kueue_queue is None


def test_a_local_queue_that_is_not_a_label_value_is_refused_naming_the_field() -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError) as info:
        validate_spec_data(spec(kubernetes={"local_queue": "Team A"}))
    assert [i.field_path for i in info.value.issues] == ["kubernetes.local_queue"]


def test_priorities_map_to_our_workload_priority_classes() -> None:
    assert [priority_class(p) for p in (None, "low", "normal", "high")] == [
        None, "orchestrator-low", "orchestrator-normal", "orchestrator-high"]
    # only shipped classes: another name maps through its value in the cluster's priority_classes
    known = {"low": 0, "normal": 100, "high": 1000, "urgent": 500, "scavenger": -10, "critical": 5000}
    assert [priority_class(p, known=known) for p in ("urgent", "scavenger", "critical", "nosuch")] == [
        "orchestrator-normal", "orchestrator-low", "orchestrator-high", None]
    assert priority_class("urgent") is None  # no value known: no label (Kueue's default), never orchestrator-urgent
    assert kueue_priority("urgent", known=known)[1] == (
        "priority urgent (500) has no WorkloadPriorityClass of its own: labelled orchestrator-normal, the highest "
        "shipped class not above it (shipped: orchestrator-low, orchestrator-normal, orchestrator-high)")
    assert kueue_priority("nosuch", known=known)[1] == (
        "priority nosuch is not a priority class the operator knows: no Kueue priority-class label, so Kueue's "
        "default priority (shipped WorkloadPriorityClasses: orchestrator-low, orchestrator-normal, orchestrator-high)")
    assert kueue_priority("high", known=known)[1] is None and kueue_priority(500)[1] is None
    # an integer: the highest level not above it (the lowest when below them all)
    assert [priority_class(p) for p in (-5, 0, 99, 100, 999, 1000, 10**6)] == [
        "orchestrator-low", "orchestrator-low", "orchestrator-low", "orchestrator-normal", "orchestrator-normal",
        "orchestrator-high", "orchestrator-high"]


def test_the_kueue_kustomization_ships_one_class_per_priority_level() -> None:
    shipped = [d for d in yaml.safe_load_all((KUEUE_DIR / "workloadpriorityclasses.yaml").read_text()) if d]
    assert shipped == workload_priority_classes()
    assert {(d["metadata"]["name"], d["value"]) for d in shipped} == {
        ("orchestrator-low", 0), ("orchestrator-normal", 100), ("orchestrator-high", 1000)}
    kustomization = yaml.safe_load((KUEUE_DIR / "kustomization.yaml").read_text())
    assert all(not str(r).startswith("..") for r in kustomization["resources"])  # self-contained
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl to render the kustomization with")
    rendered = subprocess.run([kubectl, "kustomize", str(KUEUE_DIR)], capture_output=True, text=True, check=True)
    by_name = sorted((d for d in yaml.safe_load_all(rendered.stdout) if d), key=lambda d: d["metadata"]["name"])
    assert by_name == sorted(shipped, key=lambda d: d["metadata"]["name"])


# -- reconcile: create suspended, hold nothing -------------------------------------------------------


def test_a_kueue_job_gets_its_rayjob_at_once_suspended_and_labelled_and_waits_for_admission() -> None:
    obj = tj(kubernetes={"local_queue": "team-a"})
    obj["spec"]["resources"]["priority"] = "high"
    desired = desired_from(obj, OperatorConfig())
    pool = NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=2, accelerators_per_node=8)
    actions = reconcile(desired, Observed(pool=pool, now=NOW), RuntimeConfig())
    [create] = [a for a in actions if isinstance(a, CreateRayJob)]
    assert [type(a) for a in actions][:3] == [EnsureTokenSecret, ApplyNetworkPolicy, CreateRayJob]
    labels = create.body["metadata"]["labels"]
    assert labels[KUEUE_QUEUE_LABEL] == "team-a" and labels[KUEUE_PRIORITY_LABEL] == "orchestrator-high"
    assert POOL_LABEL not in labels and labels[JOB_UID_LABEL] == "uid-1"
    assert create.body["spec"]["suspend"] is True
    [write] = [a for a in actions if isinstance(a, WriteStatus)]
    assert write.status.phase == "Pending" and write.status.placement is None
    assert write.status.message == "waiting for Kueue to admit it in LocalQueue team-a"
    scheduled = write.status.condition("Scheduled")
    assert scheduled is not None and (scheduled.status, scheduled.reason) == ("False", "AwaitingAdmission")


# -- the operator against the emulator -----------------------------------------------------------


def rayjob_writes(kube: Any, since: int) -> list[str]:
    """The operator's writes to existing RayJobs (patch, replace): it must make none."""
    return [f"{r.method} {r.name}" for r in kube.server.request_log[since:]
            if (r.headers or {}).get("User-Agent") == OPERATOR_AGENT and r.resource is not None
            and r.resource.plural == "rayjobs" and str(getattr(r.method, "value", r.method)).upper() in ("PATCH", "PUT")]


def test_kueue_admits_the_job_the_operator_holds_no_placement_and_a_plain_namespace_is_unchanged(
        kube: Any, api: Any, start_operator: Any, rayjob_errors: Any) -> None:
    from tests.k8s.conftest import _names

    queued, plain = f"ns{next(_names)}", f"ns{next(_names)}"
    before = len(kube.server.request_log)
    add_pools(api, plain, b.gpu_pool("a100", nodes=1, per_node=8))
    operator = start_operator(plain, namespaces=(queued, plain), kueue_namespaces=(queued,))
    book = operator.controller.book
    data = spec("big", workers=8)  # the whole pool: if our book held it, "other" below would wait
    data["resources"]["priority"] = "low"
    api.create_training_job(b.training_job("big", queued, data))

    [rj] = wait_for(lambda: rayjobs(api, queued), "the suspended RayJob")
    assert rayjob_errors(rj) == []
    assert rj["spec"]["suspend"] is True
    assert rj["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "default"
    assert rj["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "orchestrator-low"
    assert POOL_LABEL not in rj["metadata"]["labels"]
    st = wait_for(phase_is(api, queued, "big", "Pending"), "phase Pending")
    assert st["message"] == "waiting for Kueue to admit it in LocalQueue default"
    assert book.placed(f"{queued}/big") is None and book.waiting() == []
    assert any(e[1] == "AwaitingAdmission" and "LocalQueue default" in e[2]
               for e in wait_for(lambda: events(api, queued, "big"), "the AwaitingAdmission event"))

    # a job of the plain namespace keeps today's behaviour: placed by our book, not suspended
    api.create_training_job(b.training_job("other", plain, spec("other", workers=8)))
    [other] = wait_for(lambda: rayjobs(api, plain), "the plain namespace's RayJob")
    assert "suspend" not in other["spec"] and KUEUE_QUEUE_LABEL not in other["metadata"]["labels"]
    assert other["metadata"]["labels"][POOL_LABEL] == "a100"
    assert wait_for(phase_is(api, plain, "other", "Starting"), "other starting")["placement"]["pool"] == "a100"
    assert book.placed(f"{plain}/other") == "a100"

    # Kueue (the test) admits it: unsuspends, KubeRay runs it; the status follows
    api.custom.patch_namespaced_custom_object("ray.io", "v1", queued, "rayjobs", "big", {"spec": {"suspend": False}})
    set_rayjob_status(api, queued, "big", jobDeploymentStatus="Running", jobStatus="RUNNING")
    st = wait_for(phase_is(api, queued, "big", "Running"), "phase Running once admitted")
    scheduled = next(c for c in st["conditions"] if c["type"] == "Scheduled")
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == (
        "True", "Admitted", "admitted by Kueue (LocalQueue default)")
    assert book.placed(f"{queued}/big") is None
    # Kueue preempts it (suspends it again): it waits again, still nothing held by us
    api.custom.patch_namespaced_custom_object("ray.io", "v1", queued, "rayjobs", "big", {"spec": {"suspend": True}})
    set_rayjob_status(api, queued, "big", jobDeploymentStatus="Suspended", jobStatus="")
    st = wait_for(phase_is(api, queued, "big", "Pending"), "Pending again after Kueue suspends it")
    assert "waiting for Kueue to admit it in LocalQueue default" in st["message"]
    # our scheduler still says what it sees: a job no pool of ours could ever hold
    api.create_training_job(b.training_job("huge", queued, spec("huge", workers=32)))
    st = wait_for(phase_is(api, queued, "huge", "Pending"), "the huge job waiting for Kueue")
    assert st["message"] == ("waiting for Kueue to admit it in LocalQueue default; the operator's node pools could "
                             "never hold it: needs 32 nvidia-a100-40gb as one gang; pool a100 has 8 in total")
    assert rayjob_writes(kube, before) == []  # the operator unsuspended (or patched) no RayJob itself
    assert sorted(r["metadata"]["name"] for r in rayjobs(api, queued)) == ["big", "huge"]


# -- the dry run agrees with the operator ------------------------------------------------------------


def test_the_dry_run_of_a_kueue_job_uses_the_admission_pool_even_for_an_accelerator_no_pool_has(
        cli: Any, api: Any, tmp_path: Path, namespace: str, rayjob_errors: Any) -> None:
    import kubernetes

    try:  # the pools the dry run reads: l4 only (as test_cli.py makes them; either may come first)
        kubernetes.client.CoreV1Api(api.api_client).create_namespaced_config_map("orchestrator-system", b.pool_configmap(
            "pools", "orchestrator-system", [b.gpu_pool("l4", accelerator="nvidia-l4", nodes=4, per_node=2)]))
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409
    path = tmp_path / "h100.yaml"
    path.write_text(yaml.safe_dump(b.spec_data("big", workers=1, gpus=1, accelerator="nvidia-h100-80gb",
                                               kubernetes={"local_queue": "team-a"})), encoding="utf-8")
    code, out = cli("submit", str(path), "--dry-run", "-o", "yaml")
    assert code == 0, out
    secret, policy, rayjob = yaml.safe_load_all(out)
    assert rayjob_errors(rayjob) == []
    assert rayjob["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a" and rayjob["spec"]["suspend"] is True
    assert POOL_LABEL not in rayjob["metadata"]["labels"]
    # the operator's RayJob for the same job: the admission pool with no pools known of its accelerator
    desired = desired_from(b.training_job("big", namespace, b.spec_data(
        "big", workers=1, gpus=1, accelerator="nvidia-h100-80gb", kubernetes={"local_queue": "team-a"})),
        OperatorConfig())
    assert desired.spec is not None
    expected = rayjob_manifest({"metadata": {"name": "big", "namespace": namespace, "uid": ""}}, desired.spec,
                               admission_pool(desired.spec, None), RuntimeConfig(), "team-a")
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] == expected["spec"]["rayClusterSpec"][
        "workerGroupSpecs"]
    code, out = cli("submit", str(path), "--dry-run", "-o", "json")
    placement = json.loads(out.strip().splitlines()[-1])["placement"]
    assert (placement["kueue"], placement["accelerator"]) == ("team-a", "nvidia-h100-80gb")
    assert placement["from"] == f"Kueue LocalQueue team-a admits it; workers shaped as assumed pool {placement['pool']}"
    # an accelerator the pools have: the workers take that pool's shape
    path.write_text(yaml.safe_dump(b.spec_data("small", workers=1, gpus=1, accelerator="nvidia-l4",
                                               kubernetes={"local_queue": "team-a"})), encoding="utf-8")
    code, out = cli("submit", str(path), "--dry-run", "-o", "json")
    placement = json.loads(out.strip().splitlines()[-1])["placement"]
    assert (placement["pool"], placement["from"]) == (
        "l4", "Kueue LocalQueue team-a admits it; workers shaped as pool l4 (node-pool ConfigMaps in namespace "
              "orchestrator-system)")


def test_a_custom_priority_name_gets_a_shipped_class_and_the_status_says_so(api: Any, start_operator: Any,
                                                                            namespace: str) -> None:
    from tests.k8s.test_operator import core

    core(api).create_namespaced_config_map(namespace, b.pool_configmap(
        "pools", namespace, [b.gpu_pool("a100", nodes=1, per_node=8)],
        priority_classes={"low": 0, "normal": 100, "high": 1000, "urgent": 500}))
    start_operator(namespace)
    data = spec("rush", kubernetes={"local_queue": "team-a"})
    data["resources"]["priority"] = "urgent"
    api.create_training_job(b.training_job("rush", namespace, data))
    [rj] = wait_for(lambda: rayjobs(api, namespace), "the suspended RayJob")
    assert rj["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "orchestrator-normal"
    st = wait_for(phase_is(api, namespace, "rush", "Pending"), "phase Pending")
    note = ("priority urgent (500) has no WorkloadPriorityClass of its own: labelled orchestrator-normal, the "
            "highest shipped class not above it (shipped: orchestrator-low, orchestrator-normal, orchestrator-high)")
    assert st["message"] == f"waiting for Kueue to admit it in LocalQueue team-a; {note}"
    scheduled = next(c for c in st["conditions"] if c["type"] == "Scheduled")
    assert (scheduled["reason"], scheduled["message"]) == ("AwaitingAdmission", st["message"])
