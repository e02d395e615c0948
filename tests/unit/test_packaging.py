"""Packaging: the wheel carries the example specs and dashboards, and `orchestrator examples` copies them out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import EXIT_USER_ERROR
from orchestrator.examples import EXAMPLE_FOLDERS, PACKAGED_DIR, example_files
from tests.conftest import REPO

#: What a wheel is built from (everything else in the checkout is not part of the distribution).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "orchestrator", *EXAMPLE_FOLDERS)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the build writes build/ and *.egg-info beside it)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_ships_every_example_spec_and_dashboard(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    packaged = {name.removeprefix(f"orchestrator/{PACKAGED_DIR}/") for name in names
                if name.startswith(f"orchestrator/{PACKAGED_DIR}/")}
    assert packaged == {str(path) for path in example_files(REPO)}
    assert {"jobs/cnn.yaml", "jobs/cnn-sweep.yaml", "dashboards/grafana/job-detail.json",
            "dashboards/prometheus/rules.yml", "examples/custom_train.py"} <= packaged
    assert metadata["Name"] == "train-orchestrator"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "orchestrator/cli/examples_cmds.py" in names


def test_the_installed_wheel_copies_its_packaged_examples(wheel: Path, tmp_path: Path) -> None:
    """Unpacked (as pip installs it), the package finds its examples in the package, not a checkout."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", "import orchestrator.examples as e; print(e.examples_root());"
         "from orchestrator.cli import main; main(['examples', " + repr(str(out)) + "])"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(site / "orchestrator" / PACKAGED_DIR)
    assert (out / "jobs" / "cnn.yaml").read_bytes() == (REPO / "jobs" / "cnn.yaml").read_bytes()


def test_examples_copies_specs_that_validate_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    target = tmp_path / "mine"
    runner = CliRunner()
    result = runner.invoke(main, ["examples", str(target)])
    assert result.exit_code == 0, result.output
    copied = sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file())
    assert copied == example_files(REPO)
    assert f"copied {len(copied)} files into {target}" in result.output

    monkeypatch.chdir(target)  # specs name their entrypoints relative to themselves; jobs/ as in the repo
    from orchestrator.runtime.datagen import EXAMPLE_DATA

    for rel, (kind, shards) in EXAMPLE_DATA.items():  # the documented commands write the data examples' files
        made = runner.invoke(main, ["data", "generate", kind, rel, "--shards", str(shards)])
        assert made.exit_code == 0, made.output
    specs = sorted(Path("jobs").glob("*.yaml"))
    assert len(specs) == len(list((REPO / "jobs").glob("*.yaml"))) >= 10
    for spec in specs:
        # A sweep spec is checked by `tune --dry-run` (which validates it and starts nothing).
        args = ["tune", str(spec), "--dry-run"] if spec.name.endswith("-sweep.yaml") else ["validate", str(spec)]
        checked = runner.invoke(main, args)
        assert checked.exit_code == 0, (spec, checked.output)

    (target / "jobs" / "cnn.yaml").write_text("name: mine\nmodel: {type: cnn}\n")
    refused = runner.invoke(main, ["examples", str(target)])
    assert refused.exit_code == EXIT_USER_ERROR
    assert f"{len(copied)} of the example files already exist in {target}" in refused.output
    assert "nothing copied" in refused.output and "--force" in refused.output
    assert (target / "jobs" / "cnn.yaml").read_text() == "name: mine\nmodel: {type: cnn}\n"

    forced = runner.invoke(main, ["examples", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert f"{len(copied)} overwritten" in forced.output
    assert (target / "jobs" / "cnn.yaml").read_bytes() == (REPO / "jobs" / "cnn.yaml").read_bytes()
