"""The example job specs, the sweep example, training functions and dashboards that ship with the package.

In a checkout they are the top-level ``jobs/``, ``examples/`` and ``dashboards/`` folders; a built
wheel carries copies of them as package data under ``orchestrator/_examples/`` (``setup.py`` copies
them at build time), so a ``pip install`` has something to submit. :func:`copy_examples` writes
them out with the same layout, which keeps the specs' relative paths (``../examples/...``) working.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import NotAvailableError, UsageError

#: The folders that ship, relative to the repository root (and to ``orchestrator/_examples``).
EXAMPLE_FOLDERS: tuple[str, ...] = ("jobs", "examples", "dashboards")
#: Where a wheel keeps them, inside the ``orchestrator`` package.
PACKAGED_DIR = "_examples"
_SKIPPED_PARTS = frozenset({"__pycache__", ".ipynb_checkpoints"})


def examples_root() -> Path:
    """The folder holding ``jobs/``, ``examples/`` and ``dashboards/``: packaged, else the checkout."""
    package = Path(__file__).resolve().parent
    for root in (package / PACKAGED_DIR, package.parent):
        if all((root / name).is_dir() for name in EXAMPLE_FOLDERS):
            return root
    raise NotAvailableError(
        f"the example files are missing: neither {package / PACKAGED_DIR} nor a source checkout holds "
        + ", ".join(f"{name}/" for name in EXAMPLE_FOLDERS),
        fix="reinstall the package (pip install --force-reinstall train-orchestrator)",
    )


def example_files(root: Path | None = None) -> list[Path]:
    """Every shipped file, relative to :func:`examples_root`, sorted."""
    root = examples_root() if root is None else root
    files = []
    for folder in EXAMPLE_FOLDERS:
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and not _SKIPPED_PARTS.intersection(relative.parts) and path.suffix != ".pyc":
                files.append(relative)
    return sorted(files)


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_examples` wrote (paths relative to ``target``) and which it overwrote."""

    target: Path
    written: tuple[Path, ...]
    overwritten: tuple[Path, ...]


def copy_examples(target: Path, *, force: bool = False) -> CopyResult:
    """Copy the shipped files into ``target`` (created if missing), keeping their layout.

    Refuses, before writing anything, when a file would be overwritten, unless ``force``.
    """
    root = examples_root()
    files = example_files(root)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory", fix="choose a directory")
    existing = tuple(relative for relative in files if (target / relative).exists())
    if existing and not force:
        shown = ", ".join(str(path) for path in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise UsageError(
            f"{len(existing)} of the example files already exist in {target}: {shown}{more}; nothing copied",
            fix="choose another directory, or pass --force to overwrite them",
        )
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, destination)
    return CopyResult(target=target, written=tuple(files), overwritten=existing)
