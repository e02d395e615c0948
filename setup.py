"""Build hook: the wheel carries the top-level jobs/, examples/ and dashboards/ as package data.

They stay where they are in the repository (`make run`, the tests and the docs use those paths);
at build time they are copied into `orchestrator/_examples/` inside the wheel, where
`orchestrator examples` finds them (`orchestrator/examples.py`). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXAMPLE_FOLDERS = ("jobs", "examples", "dashboards")  # the same as orchestrator.examples.EXAMPLE_FOLDERS


class BuildWithExamples(build_py):
    """build_py, then copy the example folders into the built package."""

    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "orchestrator" / "_examples"
        for folder in EXAMPLE_FOLDERS:
            if (root / folder).is_dir():
                shutil.copytree(root / folder, target / folder, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithExamples})
