"""`orchestrator tune --backend kubernetes --dry-run`: a sweep is one KubeRay RayJob (valid against
KubeRay's RayJob CRD) whose entrypoint runs the sweep on the mounted sweep spec."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.backends.k8s import SPEC_ENV
from orchestrator.cli import main
from orchestrator.sweep.loader import load_sweep_spec
from tests.conftest import REPO
from tests.k8s.podsecurity import restricted_violations

pytestmark = pytest.mark.k8s


def test_a_sweep_becomes_one_rayjob_that_runs_orchestrator_tune(rayjob_errors: Any) -> None:
    result = CliRunner().invoke(main, ["tune", str(REPO / "jobs" / "cnn-sweep.yaml"), "--backend", "kubernetes",
                                       "--dry-run", "-n", "ml", "-o", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    rayjob = plan["rayJob"]
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["namespace"] == "ml"
    assert rayjob_errors(rayjob) == []
    assert rayjob["spec"]["entrypoint"].startswith("python -m orchestrator.backends.k8s.driver tune --backend local")
    assert restricted_violations(rayjob) == []
    assert rayjob["metadata"]["labels"]["orchestrator.dev/kind"] == "sweep"
    assert "ownerReferences" not in rayjob["metadata"]
    # room for max_concurrent (2) trials of 1 worker x 0.5 CPU
    [group] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 2
    assert group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    # the head carries the sweep spec, which loads as the same sweep; no ConfigMap
    assert "configMap" not in plan
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [carried] = [e["value"] for e in head["containers"][0]["env"] if e["name"] == SPEC_ENV]
    mounted = yaml.safe_load(carried)
    # with the token Secret it names (placeholder token) and the job's NetworkPolicy
    assert plan["secret"]["metadata"]["name"] == rayjob["spec"]["rayClusterSpec"]["authOptions"]["secretName"]
    assert plan["networkPolicy"]["kind"] == "NetworkPolicy"
    original = load_sweep_spec(REPO / "jobs" / "cnn-sweep.yaml")
    assert mounted["tune"] == original.tune.model_dump(mode="json")
    assert mounted["training"] == original.job.training.model_dump(mode="json")


def test_kubernetes_without_dry_run_says_how_to_apply_the_manifest() -> None:
    result = CliRunner().invoke(main, ["tune", str(REPO / "jobs" / "cnn-sweep.yaml"), "--backend", "kubernetes"])
    assert result.exit_code == 2
    assert "--dry-run -o yaml" in result.output and "kubectl apply -f -" in result.output
    assert "the Secret, NetworkPolicy and RayJob" in result.output


def test_yaml_is_a_stream_kubectl_apply_takes_with_kueues_labels_when_a_local_queue_is_set(
        rayjob_errors: Any) -> None:
    import kubernetes_validate

    from orchestrator.backends.k8s import KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL
    from orchestrator.backends.k8s.manifests import TOKEN_PLACEHOLDER

    def strict_errors(obj: dict[str, Any]) -> str | None:
        try:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            return str(exc)
        return None

    sweep = str(REPO / "jobs" / "cnn-sweep.yaml")
    for queue in (None, "team-a"):
        extra = ["--set", f"kubernetes.local_queue={queue}", "--set", "resources.priority=high"] if queue else []
        result = CliRunner().invoke(main, ["tune", sweep, "-b", "kubernetes", "--dry-run", "-n", "ml", "-o", "yaml",
                                           *extra])
        assert result.exit_code == 0, result.output
        assert "token is a placeholder" in result.stdout
        docs = list(yaml.safe_load_all(result.stdout))
        assert [d["kind"] for d in docs] == ["Secret", "NetworkPolicy", "RayJob"]
        secret, policy, rayjob = docs
        assert strict_errors(secret) is None and strict_errors(policy) is None
        assert rayjob_errors(rayjob) == [] and restricted_violations(rayjob) == []
        for doc in docs:
            assert doc["metadata"]["namespace"] == "ml" and "ownerReferences" not in doc["metadata"]
        assert secret["stringData"] == {"auth_token": TOKEN_PLACEHOLDER}
        assert rayjob["spec"]["rayClusterSpec"]["authOptions"]["secretName"] == secret["metadata"]["name"]
        labels = rayjob["metadata"]["labels"]
        assert labels["orchestrator.dev/kind"] == "sweep"
        if queue is None:
            assert KUEUE_QUEUE_LABEL not in labels and "suspend" not in rayjob["spec"]
        else:
            assert (labels[KUEUE_QUEUE_LABEL], labels[KUEUE_PRIORITY_LABEL]) == ("team-a", "orchestrator-high")
            assert rayjob["spec"]["suspend"] is True


def test_yaml_on_another_backend_says_it_is_for_kubernetes(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["tune", str(REPO / "jobs" / "cnn-sweep.yaml"), "--dry-run", "-o", "yaml"])
    assert result.exit_code == 2 and "--output yaml is for --backend kubernetes" in result.output
