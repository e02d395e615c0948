"""`orchestrator schema` and `orchestrator validate`."""

from __future__ import annotations

import json

import click

from orchestrator.cli.common import OUTPUT_OPTION, emit_json, handle_errors
from orchestrator.spec import job_spec_json_schema, load_spec
from orchestrator.spec.loader import dump_yaml


@click.command()
def schema() -> None:
    """Print the JSON Schema of a job spec."""
    click.echo(json.dumps(job_spec_json_schema(), indent=2))


@click.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a field, e.g. --set training.epochs=3 (repeatable).")
@OUTPUT_OPTION
@handle_errors
def validate(spec_path: str, overrides: tuple[str, ...], output: str) -> None:
    """Check a job spec and print it with every default filled in."""
    spec = load_spec(spec_path, overrides)
    if output == "json":
        emit_json({"valid": True, "spec": spec.model_dump(mode="json")})
    else:

        click.echo(f"{spec_path}: valid")
        click.echo(dump_yaml(spec.model_dump(mode="json")).rstrip())


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (schema, validate)
