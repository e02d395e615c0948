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
    assert "--dry-run" in result.output and "kubectl apply" in result.output
