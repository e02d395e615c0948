"""Choosing a framework: clear errors when one is missing, and `orchestrator compare`'s bad input."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import NotAvailableError
from orchestrator.execution.driver import check_framework_available
from orchestrator.spec.models import JobSpec

REPO = Path(__file__).resolve().parents[2]


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_a_tensorflow_job_without_the_tensorflow_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "tf_keras")
    with pytest.raises(NotAvailableError) as err:
        check_framework_available(JobSpec(name="tf", framework="tensorflow", model={"type": "cnn"}))
    text = err.value.render() if hasattr(err.value, "render") else str(err.value)
    assert "tf_keras" in text and "train-orchestrator[tensorflow]" in text


def test_a_torch_job_without_torch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "torch")
    with pytest.raises(NotAvailableError) as err:
        check_framework_available(JobSpec(name="pt", model={"type": "cnn"}))
    assert "train-orchestrator[torch]" in (err.value.render() if hasattr(err.value, "render") else str(err.value))


def test_both_frameworks_are_available_here() -> None:
    for framework in ("torch", "tensorflow"):
        check_framework_available(JobSpec(name="ok", framework=framework, model={"type": "cnn"}))


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "compare", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_compare_refuses_an_unknown_framework_before_running_anything() -> None:
    proc = compare("jobs/cnn.yaml", "--frameworks", "torch,jax")
    assert proc.returncode == 2 and "unknown framework jax" in proc.stderr and "--frameworks torch,tensorflow" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_refuses_a_bad_override_with_its_field_path() -> None:
    proc = compare("jobs/cnn.yaml", "--set", "training.epochs=zero")
    assert proc.returncode == 2 and "training.epochs" in proc.stderr and "Traceback" not in proc.stderr


def test_compare_checks_every_runs_checkpoint_dir_before_the_first_run(tmp_path: Path) -> None:
    """Each framework checkpoints into <checkpoint.dir>/<framework>; one owned by another job
    (the tensorflow run's here) stops compare before the torch run trains anything."""
    owned = tmp_path / "ckpts" / "tensorflow"
    owned.mkdir(parents=True)
    (owned / ".orchestrator-job").write_text("older-job-123456\n")
    env = {**os.environ, "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "compare", "jobs/cnn.yaml",
                           "--set", f"checkpoint.dir={tmp_path / 'ckpts'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"checkpoint.dir {owned} belongs to job older-job-123456" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "home").exists() and not (tmp_path / "ckpts" / "torch").exists()  # nothing ran
