"""deploy/k8s: what real ``kubectl kustomize`` renders for the base, each overlay and monitoring/
installs; every built-in object passes ``kubernetes-validate --strict`` (the same pipeline as
docs/kubernetes.md); TrainingJobs validate against our generated CRD; the PodMonitors select pods
and ports that exist; the PrometheusRule is dashboards/prometheus/rules.yml; and the RBAC grants
the operator what it needs and no more (the evaluator in tests/k8s/rbac.py)."""

from __future__ import annotations

import re
import runpy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.backends.k8s import JOB_LABEL, POOLS_CONFIGMAP_LABEL
from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.backends.k8s.crd import CRD_PATH, render_crd_yaml, training_job_crd
from orchestrator.backends.k8s.manifests import RuntimeConfig, rayjob_manifest
from orchestrator.backends.k8s.placement import decide_once
from orchestrator.backends.k8s.pools import cluster_from_configmaps
from orchestrator.scheduler import NodePool, Place
from orchestrator.spec import validate_spec_data
from orchestrator.testing.validation import schema_errors, validator_for_crd
from tests.conftest import REPO
from tests.k8s.kubectl import kubectl, kustomize
from tests.k8s.rbac import Rbac, Rule, role_rules
from tests.k8s.test_kueue import check_workload_priority_class

pytestmark = pytest.mark.k8s

DEPLOY = REPO / "deploy" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
INSTALLS = ["base", "overlays/gpu", "overlays/tpu", "overlays/namespaced"]
KUSTOMIZATIONS = [*INSTALLS, "monitoring"]
#: Kinds that are not built in: checked by our own tests below, not by kubernetes-validate.
CUSTOM_KINDS = {"TrainingJob", "PodMonitor", "PrometheusRule"}


def _validator() -> str:
    return str(Path(kubectl()).parent / "kubernetes-validate")


def check(obj: dict[str, Any], where: str) -> None:
    """Validate one object by its kind; fail naming the file, the object and the problem."""
    label = f"{where}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    if obj["apiVersion"].startswith("orchestrator.dev/"):
        errors = schema_errors(validator_for_crd(training_job_crd()), obj)
        assert errors == [], f"{label}: {errors}"
        validate_spec_data(job_spec_from_training_job(obj))
    elif obj["kind"] == "PodMonitor":
        check_podmonitor(obj)
    elif obj["kind"] == "PrometheusRule":
        assert obj["spec"] == prometheus_rule()["spec"]
    elif obj["kind"] == "WorkloadPriorityClass":  # Kueue's (deploy/k8s/kueue)
        check_workload_priority_class(obj)
    else:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label}: {exc.message} at {'.'.join(map(str, exc.path))}")


def operator_pod() -> dict[str, Any]:
    [deployment] = [d for d in kustomize(DEPLOY / "base") if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]
    return pod


def head_pod() -> dict[str, Any]:
    """The head pod template of a RayJob the operator renders (KubeRay adds ray.io/node-type=head)."""
    job = {"apiVersion": "orchestrator.dev/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": "j", "namespace": "team-a", "uid": "0123456789"},
           "spec": {"name": "j", "model": {"type": "cnn"}}}
    pool = NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=2, accelerators_per_node=8,
                    cpus_per_node=64, memory_per_node="256Gi")
    rayjob = rayjob_manifest(job, validate_spec_data(job["spec"]), pool, RuntimeConfig())
    pod: dict[str, Any] = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    pod["metadata"]["labels"]["ray.io/node-type"] = "head"
    return pod


def check_podmonitor(monitor: dict[str, Any]) -> None:
    """A PodMonitor selects the pods it is for (the operator's, or job heads) and scrapes a port
    they declare."""
    pod = head_pod() if monitor["metadata"]["name"] == "orchestrator-jobs" else operator_pod()
    selector = monitor["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert selector.get("matchLabels", {}).items() <= labels.items()
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "Exists" and expression["key"] in labels
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
    assert monitor["metadata"]["namespace"] == "orchestrator-system"


def prometheus_rule() -> dict[str, Any]:
    generator = runpy.run_path(str(DEPLOY / "monitoring" / "generate_prometheusrule.py"))
    rule: dict[str, Any] = generator["prometheus_rule"](
        (REPO / "dashboards" / "prometheus" / "rules.yml").read_text(encoding="utf-8"))
    return rule


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        check(doc, str(path.relative_to(REPO)))


@pytest.mark.parametrize("where", KUSTOMIZATIONS)
def test_kubectl_renders_each_kustomization_and_every_builtin_object_validates_strictly(where: str) -> None:
    """`kubectl kustomize deploy/k8s/WHERE | kubernetes-validate --strict -`, as docs/kubernetes.md."""
    rendered = subprocess.run([kubectl(), "kustomize", str(DEPLOY / where)], capture_output=True, text=True,
                              check=False)
    assert rendered.returncode == 0, rendered.stderr
    validated = subprocess.run([_validator(), "--strict", "-k", K8S_VERSION, "-"], input=rendered.stdout,
                               capture_output=True, text=True, check=False)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    passed = set(re.findall(r"passed for resource (\S+) against", validated.stdout + validated.stderr))
    builtin = {f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects if o["kind"] not in CUSTOM_KINDS}
    assert builtin <= passed, f"not validated: {builtin - passed}"
    assert builtin or where == "monitoring"  # monitoring/ holds only Prometheus Operator kinds
    for obj in objects:
        check(obj, f"kubectl kustomize deploy/k8s/{where}")
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "orchestrator" for o in objects)
    kinds = {o["kind"] for o in objects}
    if where in INSTALLS:
        assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role", "RoleBinding",
                "Deployment"} <= kinds
    if where in ("overlays/gpu", "overlays/tpu"):
        pools = [o for o in objects if o["kind"] == "ConfigMap"
                 and o["metadata"]["labels"].get(POOLS_CONFIGMAP_LABEL) == "true"]
        assert {p["metadata"]["namespace"] for p in pools} == {"orchestrator-system"}
        cluster = cluster_from_configmaps(pools)
        assert cluster is not None and cluster.pools
        assert all(p.is_tpu == where.endswith("tpu") for p in cluster.pools)
    if where == "monitoring":
        assert sorted(o["kind"] for o in objects) == ["PodMonitor", "PodMonitor", "PrometheusRule"]


def test_the_committed_crd_is_generated_from_the_models() -> None:
    assert CRD_PATH == Path("deploy/k8s/base/crd.yaml")
    assert (REPO / CRD_PATH).read_text(encoding="utf-8") == render_crd_yaml(), (
        "deploy/k8s/base/crd.yaml drifted from the job spec models: run `orchestrator crd --write`")


def test_the_prometheusrule_is_rules_yml() -> None:
    generator = runpy.run_path(str(DEPLOY / "monitoring" / "generate_prometheusrule.py"))
    assert (DEPLOY / "monitoring" / "prometheusrule.yaml").read_text(encoding="utf-8") == generator["render"](), (
        "deploy/k8s/monitoring/prometheusrule.yaml differs from dashboards/prometheus/rules.yml: run "
        "`python deploy/k8s/monitoring/generate_prometheusrule.py`")
    [failed] = [r for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]
                if r.get("alert") == "OrchestratorJobFailed"]
    assert "orchestrator_job_end_timestamp_seconds" in failed["expr"]  # bounded in time: resolves on its own


def test_job_heads_carry_the_label_and_port_the_jobs_podmonitor_scrapes() -> None:
    pod = head_pod()
    assert pod["metadata"]["labels"][JOB_LABEL] == "j"
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["job-metrics"] == RuntimeConfig().metrics_port


@pytest.mark.parametrize(("example", "overlay", "pool"), [
    ("trainingjob-gpu.yaml", "overlays/gpu", "a100"), ("trainingjob-tpu.yaml", "overlays/tpu", "v5p-2x2x4"),
])
def test_example_trainingjobs_fit_the_example_pools(example: str, overlay: str, pool: str) -> None:
    [job] = yaml.safe_load_all((DEPLOY / "examples" / example).read_text(encoding="utf-8"))
    pools = [o for o in kustomize(DEPLOY / overlay) if o["kind"] == "ConfigMap"]
    cluster = cluster_from_configmaps(pools)
    assert cluster is not None
    decision = decide_once(cluster, validate_spec_data(job_spec_from_training_job(job)))
    assert isinstance(decision, Place) and decision.placement.pool == pool


def test_the_operator_deployment_is_probed_bounded_and_unprivileged() -> None:
    [deployment] = [o for o in kustomize(DEPLOY / "base") if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][0] == "operator"
    assert "--pools-namespace orchestrator-system" in " ".join(container["args"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--metrics-port {ports['metrics']}" in " ".join(container["args"])
    assert f"--health-port {ports['health']}" in " ".join(container["args"])
    assert pod["serviceAccountName"] == "orchestrator-operator"


# -- RBAC ------------------------------------------------------------------------------------

JOB_NS, OPERATOR_NS = "team-a", "orchestrator-system"
#: What the operator needs in a job namespace (docs/kubernetes.md, "What the operator may do").
JOB_NEEDS: set[Rule] = {
    *(("orchestrator.dev", r, v) for r in ("trainingjobs", "trainingjobs/status")
      for v in ("get", "list", "watch", "patch", "update")),
    ("orchestrator.dev", "trainingjobs/finalizers", "update"),
    *(("ray.io", "rayjobs", v) for v in ("get", "list", "watch", "create", "delete", "patch")),
    *(("", "secrets", v) for v in ("get", "create", "delete")),  # no list: Secrets cannot be enumerated
    *(("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "delete", "patch")),
    ("", "events", "create"),
}
#: ... in its own namespace only.
OWN_NEEDS: set[Rule] = {
    *(("", "configmaps", v) for v in ("get", "list", "watch")),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "create", "update", "patch")),
}
NODES: set[Rule] = {("", "nodes", v) for v in ("get", "list", "watch")}
#: KubeRay's RayJob CRD, that one object, read at start-up (resourceNames).
KUBERAY_CRD: set[Rule] = {("apiextensions.k8s.io", "customresourcedefinitions", "get", "rayjobs.ray.io")}
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def test_the_cluster_wide_install_grants_the_operator_what_it_needs_and_no_configmap_writes() -> None:
    rbac = Rbac(kustomize(DEPLOY / "base"))
    grants = rbac.grants()
    assert grants[None] == JOB_NEEDS | NODES | KUBERAY_CRD  # cluster-wide: job resources, nodes, KubeRay's CRD
    assert grants[OPERATOR_NS] == OWN_NEEDS  # its own namespace: pools and its Lease
    assert set(grants) == {None, OPERATOR_NS}
    for rule in JOB_NEEDS:
        assert rbac.allows(rule, JOB_NS), rule
    for rule in OWN_NEEDS:
        assert rbac.allows(rule, OPERATOR_NS), rule
    for ns in ("kube-system", JOB_NS, OPERATOR_NS, None):
        for verb in WRITES:
            assert not rbac.allows(("", "configmaps", verb), ns), (verb, ns)
    for verb in ("get", "list", "watch"):
        assert not rbac.allows(("", "configmaps", verb), "kube-system")
        assert not rbac.allows(("", "configmaps", verb), JOB_NS)
    assert not rbac.allows(("coordination.k8s.io", "leases", "update"), "kube-system")
    # the one CRD, read only: no other CRD, no list (which would show every CRD), no write
    assert rbac.allows(("apiextensions.k8s.io", "customresourcedefinitions", "get", "rayjobs.ray.io"), None)
    for rule in [("apiextensions.k8s.io", "customresourcedefinitions", "get", "trainingjobs.orchestrator.dev"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "update", "rayjobs.ray.io")]:
        assert not rbac.allows(rule, None), rule


def test_the_namespaced_install_grants_nothing_cluster_wide_but_reading_kuberays_crd() -> None:
    objects = kustomize(DEPLOY / "overlays/namespaced")
    rbac = Rbac(objects)
    grants = rbac.grants()
    assert grants[None] == KUBERAY_CRD  # the one cluster-wide grant: get on one CRD object
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"] == [
        "orchestrator-operator-kuberay-crd"]
    assert grants == {None: KUBERAY_CRD, "team-a": JOB_NEEDS, "team-b": JOB_NEEDS, OPERATOR_NS: OWN_NEEDS}
    assert not any(rbac.allows(rule, "kube-system") for rule in JOB_NEEDS | OWN_NEEDS)
    assert not any(rbac.allows(rule, None) for rule in NODES)
    # the operator watches exactly the namespaces it is bound in
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    watched = {a.split("=", 1)[1] for a in args if a.startswith("--namespace=")}
    bound = {o["metadata"]["namespace"] for o in objects if o["kind"] == "RoleBinding"
             and o["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "orchestrator-operator"}}
    assert watched == bound == {"team-a", "team-b"}


def test_the_operator_cli_takes_the_namespaces_the_namespaced_install_passes() -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    result = CliRunner().invoke(main, ["operator", "--help"])
    assert result.exit_code == 0
    assert "--namespace" in result.output and "--pools-namespace" in result.output


def test_user_roles_aggregate_into_view_and_edit() -> None:
    roles = {o["metadata"]["name"]: o for o in kustomize(DEPLOY / "base") if o["kind"] == "ClusterRole"}
    view, edit = roles["orchestrator-view"], roles["orchestrator-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert {verb for (_, _, verb) in role_rules(view)} == {"get", "list", "watch"}
    assert {("orchestrator.dev", "trainingjobs", v) for v in ("create", "patch", "delete")} <= role_rules(edit)
    # the operator's own roles aggregate into nothing
    for name in ("orchestrator-operator", "orchestrator-operator-nodes"):
        assert not any(k.startswith("rbac.authorization.k8s.io/aggregate") for k in roles[name]["metadata"]["labels"])


def test_the_dockerfile_runs_the_cli_as_a_user_with_the_pinned_torch() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    pinned = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}" in text
    assert 'ENTRYPOINT ["orchestrator"]' in text and 'CMD ["operator"]' in text
    assert re.search(r"^USER 1000", text, re.M)
    assert "wget" in text  # KubeRay's probes call it in Ray pods
    extras = re.search(r"^ARG EXTRAS=(\S+)$", text, re.M)
    assert extras and set(extras.group(1).split(",")) == {"kubernetes", "tensorflow"}  # both frameworks run


def test_the_dockerfile_installs_the_dependencies_before_it_copies_the_code() -> None:
    """A code change must not reinstall torch and TensorFlow: their layers come before the code's."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    steps = [line for line in text.splitlines() if re.match(r"^(RUN|COPY) ", line)]

    def first(pattern: str) -> int:
        return next(i for i, step in enumerate(steps) if re.search(pattern, step))

    torch, deps, code = first(r"^RUN .*torch=="), first(r"^RUN .*pip install -c constraints.txt -r "), first(
        r"^COPY orchestrator ")
    assert torch < deps < code
    assert not any(re.match(r"^COPY (\.|orchestrator|setup\.py)\b", step) for step in steps[:deps])
    assert re.search(r"pip install --no-deps \.", steps[first(r"^RUN .*pip install --no-deps")])
    assert first(r"^RUN .*pip install --no-deps") > code


def test_the_two_operator_replicas_prefer_different_nodes_and_a_pdb_keeps_one_up() -> None:
    """Leader election is only worth a standby on another node (review item 11)."""
    objects = kustomize(DEPLOY / "base")
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    [pdb] = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
