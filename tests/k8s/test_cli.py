"""The CLI with ``--backend kubernetes`` against the API emulator (a kubeconfig points at it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from orchestrator.backends.k8s import RAY_GROUP, RAY_PLURAL, RAY_VERSION
from orchestrator.testing import builders as b
from tests.conftest import REPO

pytestmark = pytest.mark.k8s


def spec_file(tmp_path: Path, name: str, **kw: Any) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(b.spec_data(name, **kw)), encoding="utf-8")
    return str(path)


def test_dry_run_prints_the_trainingjob_and_the_rayjob_it_becomes(cli: Any, api: Any, tmp_path: Path,
                                                                  namespace: str, rayjob_errors: Any) -> None:
    core = kubernetes.client.CoreV1Api(api.api_client)
    try:
        core.create_namespaced_config_map("orchestrator-system", b.pool_configmap(
            "pools", "orchestrator-system", [b.gpu_pool("l4", accelerator="nvidia-l4", nodes=4, per_node=2)]))
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409  # made by an earlier run of this test in the session
    code, out = cli("submit", spec_file(tmp_path, "dry", workers=4, gpus=1, accelerator="nvidia-l4"), "--dry-run")
    assert code == 0, out
    plan = yaml.safe_load(out)
    assert plan["trainingJob"]["kind"] == "TrainingJob"
    assert plan["trainingJob"]["metadata"] == {"name": "dry", "namespace": namespace}
    assert plan["trainingJob"]["spec"]["resources"]["workers"] == 4
    assert plan["placement"]["pool"] == "l4" and plan["placement"]["nodes"] == 2
    rj = plan["rayJob"]
    assert rj["kind"] == "RayJob" and rayjob_errors(rj) == []
    pod = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert api.get_training_job(namespace, "dry") is None  # a dry run creates nothing

    code, out = cli("submit", spec_file(tmp_path, "nofit", workers=1, gpus=1, accelerator="nvidia-h100-80gb"),
                    "--dry-run", "-o", "json")
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["rayJob"] is None and plan["placement"]["waits"] == ["no pool has nvidia-h100-80gb"]


def test_submit_status_list_cancel_and_logs(cli: Any, api: Any, kube: Any, tmp_path: Path, namespace: str) -> None:
    code, out = cli("submit", spec_file(tmp_path, "cli-job", workers=2), "-o", "json")
    assert code == 0, out
    record = json.loads(out.strip().splitlines()[-1])
    assert (record["job_id"], record["state"], record["backend"], record["namespace"]) == (
        "cli-job", "pending", "kubernetes", namespace)
    assert api.get_training_job(namespace, "cli-job")["spec"]["training"]["epochs"] == 1

    code, out = cli("submit", spec_file(tmp_path, "cli-job", workers=2))
    assert code == 2 and "already exists" in out

    # the operator's part, written by hand: placed and running
    api.patch_training_job_status(namespace, "cli-job", {
        "phase": "Running", "message": "RayJob cli-job: Running", "attempts": 1,
        "placement": {"pool": "cpu", "accelerator": "cpu", "nodes": 1, "workers": 2},
        "rayJob": {"name": "cli-job", "jobStatus": "RUNNING", "deploymentStatus": "Running"},
        "startTime": "2026-01-01T00:00:00Z"})
    code, out = cli("status", "cli-job", "-o", "json")
    record = json.loads(out.strip().splitlines()[-1])
    assert (record["state"], record["pool"], record["ray_job"], record["message"]) == (
        "running", "cpu", "cli-job", "RayJob cli-job: Running")

    code, out = cli("list", "-o", "json")
    assert [j["job_id"] for j in json.loads(out.strip().splitlines()[-1])["jobs"]] == ["cli-job"]

    # logs: the RayJob's submitter pod (a Kubernetes Job's pod, labelled job-name=<rayjob>)
    core = kubernetes.client.CoreV1Api(api.api_client)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "cli-job-abcde", "labels": {"job-name": "cli-job"}},
                                           "spec": {"containers": [{"name": "ray-job-submitter", "image": "x"}]}})
    kube.set_pod_log(namespace, "cli-job-abcde", "epoch 1/1 val_accuracy 0.91\njob succeeded\n")
    code, out = cli("logs", "cli-job")
    assert code == 0 and out.splitlines() == ["epoch 1/1 val_accuracy 0.91", "job succeeded"]

    code, out = cli("cancel", "cli-job")
    assert code == 0 and out.strip() == "cli-job: cancelling", out  # failed once under load: say why
    assert api.get_training_job(namespace, "cli-job")["spec"]["suspend"] is True

    code, out = cli("status", "no-such-job")
    assert code == 2 and "no TrainingJob 'no-such-job'" in out


def test_logs_before_the_driver_exists_say_so(cli: Any, tmp_path: Path) -> None:
    cli("submit", spec_file(tmp_path, "early"), "-o", "json")
    code, out = cli("logs", "early")
    assert code == 1 and "no driver pod for early yet (phase Pending)" in out


def test_help_and_spec_validation_do_not_import_kubernetes_or_kopf() -> None:
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from orchestrator.cli import main\n"
            "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
            "assert CliRunner().invoke(main, ['validate', 'jobs/cnn.yaml']).exit_code == 0\n"
            "print(sorted(m for m in ('kubernetes', 'kopf', 'kmock') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_rayjob_status_fields_used_by_the_tests_exist_in_kuberays_schema(rayjob_crd: dict[str, Any]) -> None:
    [v1] = [v for v in rayjob_crd["spec"]["versions"] if v["name"] == RAY_VERSION]
    status = v1["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"jobStatus", "jobDeploymentStatus", "dashboardURL", "failed", "startTime", "endTime", "message"} <= set(status)
    assert rayjob_crd["spec"]["group"] == RAY_GROUP and rayjob_crd["spec"]["names"]["plural"] == RAY_PLURAL
