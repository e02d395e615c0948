"""`orchestrator examples`: copy the shipped example specs, training functions and dashboards out."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.common import OUTPUT_OPTION, emit_json, handle_errors
from orchestrator.examples import EXAMPLE_FOLDERS, copy_examples


@click.command()
@click.argument("directory", metavar="[DIR]", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite example files that already exist in DIR.")
@OUTPUT_OPTION
@handle_errors
def examples(directory: Path, force: bool, output: str) -> None:
    """Copy the example job specs, the sweep example and the dashboards into DIR (default: here).

    DIR gets jobs/, examples/ and dashboards/ as in the source repository, so
    `orchestrator submit jobs/cnn.yaml` works from DIR. Existing files are never overwritten
    without --force (exit 2, nothing copied).
    """
    result = copy_examples(directory, force=force)
    if output == "json":
        emit_json({"directory": str(result.target), "files": [str(path) for path in result.written],
                   "overwritten": [str(path) for path in result.overwritten]})
        return
    folders = ", ".join(f"{name}/" for name in EXAMPLE_FOLDERS)
    click.echo(f"copied {len(result.written)} files into {result.target} ({folders})"
               + (f", {len(result.overwritten)} overwritten" if result.overwritten else ""))
    click.echo(f"next: cd {result.target} && orchestrator submit jobs/cnn.yaml")


COMMANDS: tuple[click.Command, ...] = (examples,)
