"""deploy/k8s: every manifest validates, and so does the rendered kustomize output of the base and
of each overlay. Built-in kinds: ``kubernetes-validate`` (strict); TrainingJobs: our generated CRD;
the PodMonitor: against the operator Deployment it must scrape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.backends.k8s import POOLS_CONFIGMAP_LABEL
from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.backends.k8s.crd import render_crd_yaml, training_job_crd
from orchestrator.backends.k8s.placement import decide_once
from orchestrator.backends.k8s.pools import cluster_from_configmaps
from orchestrator.scheduler import Place
from orchestrator.spec import validate_spec_data
from orchestrator.testing.validation import schema_errors, validator_for_crd
from tests.conftest import REPO
from tests.k8s.kustomize import render

pytestmark = pytest.mark.k8s

DEPLOY = REPO / "deploy" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
KUSTOMIZATIONS = ["", "overlays/gpu", "overlays/tpu", "monitoring"]


def check(obj: dict[str, Any], where: str) -> None:
    """Validate one object by its kind; fail naming the file, the object and the problem."""
    label = f"{where}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    if obj["apiVersion"].startswith("orchestrator.dev/"):
        errors = schema_errors(validator_for_crd(training_job_crd()), obj)
        assert errors == [], f"{label}: {errors}"
        validate_spec_data(job_spec_from_training_job(obj))
    elif obj["kind"] == "PodMonitor":
        check_podmonitor(obj)
    else:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label}: {exc.message} at {'.'.join(map(str, exc.path))}")


def check_podmonitor(monitor: dict[str, Any]) -> None:
    """The PodMonitor selects the operator's pods and scrapes a port they declare."""
    [deployment] = [d for d in yaml.safe_load_all((DEPLOY / "operator.yaml").read_text()) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        check(doc, str(path.relative_to(REPO)))


@pytest.mark.parametrize("where", KUSTOMIZATIONS, ids=lambda w: w or "base")
def test_rendered_kustomizations_validate(where: str) -> None:
    objects = render(DEPLOY / where)
    assert objects
    for obj in objects:
        check(obj, f"kustomize {where or 'deploy/k8s'}")
    kinds = {o["kind"] for o in objects}
    if where in ("", "overlays/gpu", "overlays/tpu"):
        assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                "Deployment"} <= kinds
        assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "orchestrator" for o in objects)
    if where.startswith("overlays/"):
        pools = [o for o in objects if o["kind"] == "ConfigMap"
                 and o["metadata"]["labels"].get(POOLS_CONFIGMAP_LABEL) == "true"]
        cluster = cluster_from_configmaps(pools)
        assert cluster is not None and cluster.pools
        kind = where.rsplit("/", 1)[1]
        assert all(p.is_tpu == (kind == "tpu") for p in cluster.pools)


def test_the_committed_crd_is_generated_from_the_models() -> None:
    assert (DEPLOY / "crd.yaml").read_text(encoding="utf-8") == render_crd_yaml(), (
        "deploy/k8s/crd.yaml drifted from the job spec models: run `orchestrator crd --write`")


@pytest.mark.parametrize(("example", "overlay", "pool"), [
    ("trainingjob-gpu.yaml", "overlays/gpu", "a100"), ("trainingjob-tpu.yaml", "overlays/tpu", "v5p-2x2x4"),
])
def test_example_trainingjobs_fit_the_example_pools(example: str, overlay: str, pool: str) -> None:
    [job] = yaml.safe_load_all((DEPLOY / "examples" / example).read_text(encoding="utf-8"))
    pools = [o for o in render(DEPLOY / overlay) if o["kind"] == "ConfigMap"]
    cluster = cluster_from_configmaps(pools)
    assert cluster is not None
    decision = decide_once(cluster, validate_spec_data(job_spec_from_training_job(job)))
    assert isinstance(decision, Place) and decision.placement.pool == pool


def test_the_operator_deployment_is_probed_bounded_and_unprivileged() -> None:
    [deployment] = [o for o in render(DEPLOY) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][0] == "operator"
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
