"""Fixtures for the Kubernetes tests: one API emulator per session, an operator per test (or
module), KubeRay's RayJob schema from ../shared, and polling helpers (never fixed sleeps)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import REPO, SHARED

pytest.importorskip("kmock", reason="the Kubernetes tests need kmock (pip install 'train-orchestrator[test]')")
pytest.importorskip("kopf", reason="the Kubernetes tests need kopf (pip install 'train-orchestrator[test]')")

KUBERAY_SCHEMAS = SHARED / "k8s-schemas"
T = TypeVar("T")
_names = itertools.count(1)
#: An upper bound for waits on this (very slow, shared) machine; a passing test never waits it out.
WAIT_S = 300.0
OPERATOR_AGENT = "orchestrator-operator-under-test"


def wait_for(probe: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    pause = 0.05
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        # back off: the operator and the emulator share this process (and its GIL) with the probe
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="session")
def kube() -> Iterator[Any]:
    from orchestrator.backends.k8s.crd import training_job_crd
    from orchestrator.testing.kube import KubeEmulator

    with KubeEmulator() as emulator:
        emulator.register_crd(training_job_crd())
        yield emulator


@pytest.fixture(scope="session")
def api(kube: Any) -> Any:
    from orchestrator.backends.k8s.client import KubeApi

    return KubeApi(kube.api_client())


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test (the emulator is shared by the session)."""
    return f"ns{next(_names)}"


@pytest.fixture(scope="session")
def rayjob_crd() -> dict[str, Any]:
    path = KUBERAY_SCHEMAS / "ray.io_rayjobs.yaml"
    if not path.is_file():
        pytest.skip(f"KubeRay's RayJob CRD not found at {path} (the shared/ folder beside the repository)")
    # 1.4 MB of YAML: libyaml's loader when present (the pure-Python one takes a minute here)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
    return crd


@pytest.fixture(scope="session")
def rayjob_errors(rayjob_crd: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """Violations of KubeRay's RayJob v1 schema (strict: an unknown field is one)."""
    from orchestrator.testing.validation import schema_errors, validator_for_crd

    validator = validator_for_crd(rayjob_crd, "v1")
    return lambda obj: schema_errors(validator, obj)


@pytest.fixture
def start_operator(kube: Any) -> Iterator[Callable[..., Any]]:
    """Start operators (in threads) watching one namespace; all are stopped at the end."""
    from orchestrator.backends.k8s.client import KubeApi
    from orchestrator.operator.controller import Controller, OperatorConfig
    from orchestrator.operator.handlers import OperatorThread

    started: list[Any] = []

    def start(namespace: str, **config: Any) -> Any:
        client = kube.api_client()
        client.user_agent = OPERATOR_AGENT  # tells its requests from the test's (RBAC test)
        op_api = KubeApi(client)
        settings = {"namespaces": (namespace,), "pools_namespace": namespace, "metrics_port": None,
                    "liveness_endpoint": None, "retry_interval_s": 3600.0, **config}
        election = settings.pop("election", None)  # an ElectionConfig: run as one of several replicas
        controller = Controller(op_api, OperatorConfig(**settings))
        thread = OperatorThread(controller, op_api, election).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def cli(kube: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str) -> Any:
    """Run `orchestrator ARGS --backend kubernetes -n NS --context emulator`; returns (exit code, stdout)."""
    import kubernetes
    from click.testing import CliRunner

    from orchestrator.cli import main

    config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
    # the client reads $KUBECONFIG when it is first imported; point its default at ours
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--backend", "kubernetes", "-n", namespace, "--context", "emulator"])
        return result.exit_code, result.output

    return run


__all__ = ["REPO", "WAIT_S", "wait_for"]
