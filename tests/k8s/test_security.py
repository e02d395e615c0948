"""Locked-down Ray clusters: Pod Security "restricted" on every pod template the operator renders,
the per-job token Secret and NetworkPolicy (pure, validated by kubernetes-validate), the spec
carried in the RayJob, and ``submit --dry-run -o yaml`` as a stream ``kubectl apply -f -`` takes."""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.backends.k8s import JOB_LABEL, MANAGED_BY_LABEL, SPEC_ENV
from orchestrator.backends.k8s import driver as entry
from orchestrator.backends.k8s.manifests import (
    MAX_SPEC_ENV_BYTES,
    TOKEN_PLACEHOLDER,
    RuntimeConfig,
    kubernetes_issues,
    network_policy,
    rayjob_manifest,
    token_secret,
)
from orchestrator.errors import SpecError
from orchestrator.scheduler import NodePool
from orchestrator.spec import validate_spec_data
from orchestrator.testing import builders as b
from tests.k8s.podsecurity import RESTRICTED_VOLUMES, pod_specs, restricted_violations

pytestmark = pytest.mark.k8s

K8S_VERSION = kubernetes_validate.latest_version()
JOB = {"metadata": {"name": "train", "namespace": "ml", "uid": "u-1"}}
VOLUMES = {  # every volume kind a spec may name, plus the shared-memory emptyDir
    "volumes": [{"name": "data", "persistent_volume_claim": {"claim_name": "rwx"}},
                {"name": "key", "secret": {"secret_name": "gcs-key"}},
                {"name": "conf", "config_map": {"name": "cfg"}}],
    "volume_mounts": [{"name": "data", "mount_path": "/mnt/data"}, {"name": "key", "mount_path": "/var/key"},
                      {"name": "conf", "mount_path": "/etc/cfg"}],
    "shm_size": "1Gi", "service_account": "trainer", "env": [{"name": "A", "value": "b"}],
}
#: (id, spec overrides, pool): every job kind and accelerator the tests render.
SHAPES = [
    ("cpu", {"workers": 2, "cpus": 2}, NodePool(name="cpu", nodes=4, cpus_per_node=16)),
    ("gpu", {"workers": 3, "gpus": 2, "accelerator": "nvidia-h100-80gb", "memory": "16Gi"},
     NodePool(name="h100", accelerator="nvidia-h100-80gb", nodes=2, accelerators_per_node=8,
              taints=[{"key": "team", "value": "a", "effect": "NoSchedule"}])),
    ("gpu-volumes", {"workers": 1, "gpus": 1, "accelerator": "nvidia-a100-40gb", "kubernetes": VOLUMES,
                     "storage": "/mnt/data/jobs"},
     NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=1, accelerators_per_node=8)),
    ("tpu-multi-host", {"workers": 2, "gpus": 4, "accelerator": "tpu-v4-podslice", "topology": "2x2x2"},
     NodePool(name="v4", accelerator="tpu-v4-podslice", nodes=8, accelerators_per_node=4, topology="2x2x2")),
    ("tpu-single-host", {"workers": 1, "gpus": 8, "accelerator": "tpu-v5-lite-podslice", "topology": "2x4"},
     NodePool(name="v5e", accelerator="tpu-v5-lite-podslice", nodes=2, accelerators_per_node=8, topology="2x4")),
]


def as_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ml"}, "spec": spec}


def strict_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("overrides", "pool"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_every_pod_template_passes_restricted_and_is_a_valid_pod(overrides: dict[str, Any], pool: NodePool,
                                                                 rayjob_errors: Any) -> None:
    rj = rayjob_manifest(JOB, validate_spec_data(b.spec_data("train", **overrides)), pool, RuntimeConfig())
    assert rayjob_errors(rj) == []
    assert restricted_violations(rj) == []
    paths = [path for path, _ in pod_specs(rj)]
    assert paths == [".spec.rayClusterSpec.headGroupSpec.template.spec",
                     ".spec.rayClusterSpec.workerGroupSpecs[0].template.spec", ".spec.submitterPodTemplate.spec"]
    for _, pod in pod_specs(rj):
        assert strict_errors(as_pod(pod)) is None
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                          "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
        [container] = pod["containers"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "runAsNonRoot": True}


def test_the_checker_names_each_field_restricted_refuses() -> None:
    """The helper itself: an unrestricted pod is caught on every field (no false 'all clear')."""
    bad = {"hostNetwork": True, "securityContext": {"runAsUser": 0},
           "volumes": [{"name": "host", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}}],
           "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                           "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = "\n".join(restricted_violations({"spec": {"template": {"spec": bad}}}))
    for words in ("hostNetwork is true", "automountServiceAccountToken is not false", "hostPath",
                  "runAsUser is 0", "is privileged", "allowPrivilegeEscalation is not false", "drop lacks ALL",
                  "adds capabilities", "runAsNonRoot is not true", "seccompProfile.type is None", "hostPort 80"):
        assert words in found, words
    assert "ok" not in found.split("volumes[")[-1].split("]")[0]  # emptyDir is allowed
    assert restricted_violations({"kind": "RayJob", "spec": {"entrypoint": "x"}})[0] == "no pod template found"
    assert RESTRICTED_VOLUMES >= {"persistentVolumeClaim", "secret", "configMap", "emptyDir"}


@pytest.mark.parametrize("key", ["host_path", "hostPath"])
def test_a_hostpath_volume_is_refused_at_validate_with_the_fix(key: str) -> None:
    data = b.spec_data("t", kubernetes={"volumes": [{"name": "data", key: {"path": "/data"}}],
                                        "volume_mounts": [{"name": "data", "mount_path": "/data"}]})
    with pytest.raises(SpecError) as caught:
        validate_spec_data(data)
    [issue] = caught.value.issues
    assert issue.field_path == f"kubernetes.volumes[0].{key}"
    assert "hostPath volumes are refused" in issue.message and "restricted" in issue.message
    assert issue.fix is not None and "persistent_volume_claim" in issue.fix


def test_the_token_secret_and_network_policy_are_valid_owned_and_admit_only_the_job_and_operators() -> None:
    config = RuntimeConfig(kuberay_namespace="ray-system")
    secret = token_secret(JOB, "t0ken")
    assert strict_errors(secret) is None
    assert secret["metadata"]["name"] == "train-ray-token" and secret["stringData"] == {"auth_token": "t0ken"}
    assert "stringData" not in token_secret(JOB) and "data" not in token_secret(JOB)
    policy = network_policy(JOB, config)
    assert strict_errors(policy) is None
    for obj in (secret, policy):
        [ref] = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("TrainingJob", "u-1", True)
        assert obj["metadata"]["labels"][JOB_LABEL] == "train"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {JOB_LABEL: "train", MANAGED_BY_LABEL: "orchestrator"}}
    assert spec["policyTypes"] == ["Ingress"]
    own, operators, metrics = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {JOB_LABEL: "train", MANAGED_BY_LABEL: "orchestrator"}}}]}
    assert operators["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "orchestrator-system"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator-operator"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    assert sorted(p["port"] for p in operators["ports"]) == [6379, 8265, 10001]
    assert metrics == {"from": [{"namespaceSelector": {}}],
                       "ports": [{"protocol": "TCP", "port": 9400}, {"protocol": "TCP", "port": 8080}]}


def test_kuberay_is_admitted_from_its_own_namespace_only_by_default_and_in_deploy() -> None:
    """No "any namespace" default for KubeRay's peer: a pod label alone is spoofable by anyone who
    may create pods somewhere (review item 4)."""
    from orchestrator.cli.k8s_cmds import operator
    from tests.k8s.kubectl import kustomize
    from tests.k8s.test_deploy import DEPLOY

    _, operators, _ = network_policy(JOB, RuntimeConfig())["spec"]["ingress"]
    kuberay = [p for p in operators["from"] if p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "kuberay-operator"]
    assert kuberay == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    [option] = [p for p in operator.params if p.name == "kuberay_namespace"]
    assert option.default == "kuberay-system"
    [deployment] = [o for o in kustomize(DEPLOY / "base") if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--kuberay-namespace") + 1] == "kuberay-system"


def test_an_empty_kuberay_namespace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    result = CliRunner().invoke(main, ["operator", "--kuberay-namespace", ""])
    assert result.exit_code == 2, result.output
    assert "--kuberay-namespace" in result.output and "any namespace" in result.output


def test_the_head_carries_the_spec_and_a_spec_too_big_for_it_is_refused_with_a_fix() -> None:
    spec = validate_spec_data(b.spec_data("train"))
    rj = rayjob_manifest(JOB, spec, NodePool(name="cpu", nodes=1, cpus_per_node=8), RuntimeConfig())
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    [carried] = [e["value"] for e in head["env"] if e["name"] == SPEC_ENV]
    assert validate_spec_data(yaml.safe_load(carried)) == spec
    big = validate_spec_data(b.spec_data("train", kubernetes={"env": [
        {"name": f"V{i}", "value": "x" * 1000} for i in range(MAX_SPEC_ENV_BYTES // 1000 + 1)]}))
    [issue] = kubernetes_issues(big)
    assert "environment variable, which holds at most" in issue.message and issue.fix


def test_the_driver_entrypoint_writes_the_carried_spec_and_runs_orchestrator_on_it(tmp_path: Path) -> None:
    path = entry.spec_file({SPEC_ENV: "name: t\n"}, str(tmp_path))
    assert Path(path).read_text(encoding="utf-8") == "name: t\n"
    assert os.stat(path).st_mode & 0o077 == 0  # the spec may name Secrets: private to the user
    assert entry.command(["submit", "--backend", "local"], path) == [
        sys.executable, "-m", "orchestrator", "submit", path, "--backend", "local"]
    with pytest.raises(SystemExit, match="ORCHESTRATOR_SPEC_YAML is not set"):
        entry.spec_file({}, str(tmp_path))


def test_dry_run_yaml_is_a_stream_kubectl_apply_takes(cli: Any, api: Any, tmp_path: Path, namespace: str,
                                                      rayjob_errors: Any) -> None:
    import kubernetes

    try:  # the pools the dry run reads (as test_cli.py makes them; either may come first)
        kubernetes.client.CoreV1Api(api.api_client).create_namespaced_config_map("orchestrator-system", b.pool_configmap(
            "pools", "orchestrator-system", [b.gpu_pool("l4", accelerator="nvidia-l4", nodes=4, per_node=2)]))
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409
    path = tmp_path / "dry.yaml"
    path.write_text(yaml.safe_dump(b.spec_data("dry", workers=2, gpus=1, accelerator="nvidia-l4")), encoding="utf-8")
    code, out = cli("submit", str(path), "--dry-run", "-o", "yaml")
    assert code == 0, out
    assert "token is a placeholder" in out
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Secret", "NetworkPolicy", "RayJob"]
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["namespace"] == namespace
        assert "ownerReferences" not in doc["metadata"]  # no TrainingJob owns what is applied by hand
    secret, policy, rayjob = docs
    assert strict_errors(secret) is None and strict_errors(policy) is None
    assert rayjob_errors(rayjob) == [] and restricted_violations(rayjob) == []
    assert secret["stringData"] == {"auth_token": TOKEN_PLACEHOLDER}
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"]["secretName"] == secret["metadata"]["name"]
    assert api.get_training_job(namespace, "dry") is None and api.list_secrets(namespace, "") == []

    # the JSON plan names the same three objects
    code, out = cli("submit", str(path), "--dry-run", "-o", "json")
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["secret"]["stringData"]["auth_token"] == TOKEN_PLACEHOLDER
    assert plan["networkPolicy"]["spec"] == policy["spec"]
    # the operator would add the owner references; the rest is the same
    without_refs = copy.deepcopy(plan["rayJob"])
    without_refs["metadata"].pop("ownerReferences")
    assert without_refs == rayjob

    code, out = cli("submit", str(path), "-o", "yaml")
    assert code == 2 and "--output yaml prints the manifests of a dry run" in out and "--dry-run" in out
    h100 = tmp_path / "h100.yaml"
    h100.write_text(yaml.safe_dump(b.spec_data("big", workers=1, gpus=1, accelerator="nvidia-h100-80gb")),
                    encoding="utf-8")
    code, out = cli("submit", str(h100), "--dry-run", "-o", "yaml")
    assert code != 0 and "no pool can run big" in out and "no pool has nvidia-h100-80gb" in out


def test_dry_run_yaml_on_another_backend_says_it_is_for_kubernetes(tmp_path: Path, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(b.spec_data("t")), encoding="utf-8")
    result = CliRunner().invoke(main, ["submit", str(path), "--dry-run", "-o", "yaml"])
    assert result.exit_code == 2, result.output
    assert "--output yaml is for --backend kubernetes" in result.output


def test_the_emulator_stores_a_secrets_string_data_as_base64_data(api: Any, namespace: str) -> None:
    created = api.create_secret(token_secret({"metadata": {"name": "s", "namespace": namespace, "uid": "u"}}, "abc"))
    assert created is not None and "stringData" not in created
    assert base64.b64decode(created["data"]["auth_token"]) == b"abc"
    assert api.create_secret(token_secret({"metadata": {"name": "s", "namespace": namespace, "uid": "u"}}, "x")) is None
