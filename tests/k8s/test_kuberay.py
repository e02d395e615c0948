"""The operator refuses to start on a KubeRay that would drop ``authOptions.secretName`` (KubeRay
< 1.6.0): the check of the installed RayJob CRD, against KubeRay's own CRD from ../shared and
through the CLI and an elected replica against the emulator (review item 3)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.k8s.kuberay import KUBERAY_MIN_VERSION, rayjob_crd_error
from orchestrator.testing.kube import KubeEmulator, rayjob_crd_stub

pytestmark = pytest.mark.k8s


def auth_options(crd: dict[str, Any]) -> dict[str, Any]:
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    props: dict[str, Any] = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return props["rayClusterSpec"]["properties"]["authOptions"]["properties"]  # type: ignore[no-any-return]


def test_kuberays_rayjob_crd_passes_and_the_same_crd_without_secret_name_is_refused(
        rayjob_crd: dict[str, Any]) -> None:
    assert "secretName" in auth_options(rayjob_crd)  # ../shared's KubeRay CRD is 1.6-era
    assert rayjob_crd_error(rayjob_crd) is None
    old = copy.deepcopy(rayjob_crd)
    del auth_options(old)["secretName"]  # what KubeRay 1.5.x installs: authOptions.mode only
    error = rayjob_crd_error(old)
    assert error is not None
    assert error.message.startswith(f"the installed KubeRay is older than {KUBERAY_MIN_VERSION}: its RayJob CRD "
                                    "rayjobs.ray.io has no spec.rayClusterSpec.authOptions.secretName")
    assert error.fix is not None and error.fix.startswith(f"upgrade KubeRay to {KUBERAY_MIN_VERSION} or newer")
    missing = rayjob_crd_error(None)
    assert missing is not None and missing.message == "KubeRay's RayJob CRD rayjobs.ray.io is not installed"
    assert rayjob_crd_error(rayjob_crd_stub()) is None  # the emulator's stand-in agrees with the real one
    assert rayjob_crd_error(rayjob_crd_stub(secret_name=False)) is not None


@pytest.mark.parametrize(("crds", "said", "fix"), [
    ([rayjob_crd_stub(secret_name=False)], "error: the installed KubeRay is older than 1.6.0",
     "fix: upgrade KubeRay to 1.6.0 or newer"),
    ([], "error: KubeRay's RayJob CRD rayjobs.ray.io is not installed", "fix: install KubeRay 1.6.0 or newer first"),
], ids=["kuberay-1.5", "no-kuberay"])
def test_the_operator_command_refuses_to_start_and_says_why_and_the_fix(
        crds: list[dict[str, Any]], said: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes
    from click.testing import CliRunner

    from orchestrator.cli import main

    with KubeEmulator(crds=crds) as kube:
        config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-a")
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        result = CliRunner().invoke(main, ["operator", "--context", "emulator", "-n", "team-a",
                                           "--health-port", "0", "--metrics-port", "0"])
        watched = [r for r in kube.server.request_log if r.resource is not None and r.resource.group == "orchestrator.dev"]
    assert result.exit_code == 2, result.output
    assert said in result.output
    assert fix in result.output
    assert watched == []  # it stopped before kopf touched any TrainingJob


def test_an_elected_replica_checks_before_it_stands_by() -> None:
    from orchestrator.backends.k8s.client import KubeApi
    from orchestrator.operator.controller import Controller, OperatorConfig
    from orchestrator.operator.handlers import OperatorThread
    from orchestrator.operator.leader import ElectionConfig

    with KubeEmulator(crds=[rayjob_crd_stub(secret_name=False)]) as kube:
        api = KubeApi(kube.api_client())
        controller = Controller(api, OperatorConfig(namespaces=("team-a",), metrics_port=None, liveness_endpoint=None))
        thread = OperatorThread(controller, api, ElectionConfig(namespace="team-a", name="orchestrator-operator",
                                                                identity="a"))
        with pytest.raises(RuntimeError, match="older than 1.6.0"):
            thread.start()
        assert api.get_lease("team-a", "orchestrator-operator") is None  # it never competed for the Lease
