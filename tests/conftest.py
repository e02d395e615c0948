"""Shared fixtures: an isolated ORCHESTRATOR_HOME per test, paths to the repo and shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh job store for one test (ORCHESTRATOR_HOME)."""
    path = tmp_path / "orchestrator-home"
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(path))
    return path
