"""The public API for user training functions: what it exports, that it stays light, that the examples use it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import api
from orchestrator.runtime import session as session_mod

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["orchestrator.api", "orchestrator.api.torch", "orchestrator.api.tensorflow"])
def test_every_exported_name_exists_and_is_documented(module: str) -> None:
    if module.endswith("tensorflow"):
        pytest.importorskip("tf_keras")
    mod = importlib.import_module(module)
    assert mod.__doc__ and mod.__all__ == sorted(mod.__all__)
    for name in mod.__all__:
        assert (getattr(mod, name).__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_the_api_loads_neither_torch_nor_tensorflow() -> None:
    code = "import sys, orchestrator.api; print(sorted({'torch', 'tensorflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("example", ["custom_train.py", "custom_train_tf.py"])
def test_the_examples_import_only_the_public_api(example: str) -> None:
    tree = ast.parse((REPO / "examples" / example).read_text())
    ours = [node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orchestrator")]
    assert ours and all(m == "orchestrator" or m.startswith("orchestrator.api") for m in ours), ours
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "api" in names


def test_rank_and_world_size_are_the_sessions() -> None:
    session_mod.set_session(SimpleNamespace(rank=2, world_size=4))  # type: ignore[arg-type]
    try:
        assert (api.rank(), api.world_size()) == (2, 4)
    finally:
        session_mod.set_session(None)
    with pytest.raises(RuntimeError, match="no orchestrator training session"):
        api.world_size()
