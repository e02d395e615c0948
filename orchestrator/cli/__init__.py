"""The `orchestrator` command line.

Every verb turns OrchestratorError into a clear message on stderr and its exit code (2 for bad
input); `--output json` prints exactly one JSON object as the last line of stdout. Nothing here
imports torch, tensorflow or Ray at module level: `orchestrator --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator import __version__
from orchestrator.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME_ERROR,
    EXIT_USER_ERROR,
    ErrorReport,
    OrchestratorError,
)
from orchestrator.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_OPTION = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text for people, json for scripts (one object, last line of stdout).",
)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def handle_errors(func: F) -> F:
    """Map OrchestratorError to a message and exit code; never show a traceback for them."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = kwargs.get("output", "text")
        try:
            return func(*args, **kwargs)
        except OrchestratorError as exc:
            if output == "json":
                emit_json({"state": "error", "error": ErrorReport.from_error(exc).__dict__})
            click.echo(f"error: {exc.render()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: say so briefly, details on request
            if os.environ.get("ORCHESTRATOR_DEBUG"):
                traceback.print_exc()
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "  this is a bug in orchestrator; rerun with ORCHESTRATOR_DEBUG=1 for details",
                err=True,
            )
            sys.exit(EXIT_RUNTIME_ERROR)

    return wrapper  # type: ignore[return-value]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in super().list_commands(ctx) if not name.startswith("_")]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Train models from one YAML job spec: locally, on a Ray cluster, or on Kubernetes.

    \b
    Quick start:
      orchestrator submit jobs/cnn.yaml          train on this machine (embedded Ray)
      orchestrator tune jobs/cnn-sweep.yaml      a hyperparameter sweep (Ray Tune, ASHA)
      orchestrator list                          jobs and their states
      orchestrator logs JOB --follow             the job's log
    """
    ctx.obj = Settings.from_env()


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()
    return settings


def exit_code_for_state(state: str) -> int:
    if state == "succeeded":
        return 0
    if state in ("cancelled", "interrupted"):
        return EXIT_INTERRUPTED
    if state in ("pending", "running", "cancelling"):
        return 0
    return EXIT_RUNTIME_ERROR


from orchestrator.cli import examples_cmds as _examples_cmds  # noqa: E402,F401
from orchestrator.cli import jobs as _jobs  # noqa: E402,F401  (registers the job verbs)
from orchestrator.cli import k8s_cmds as _k8s_cmds  # noqa: E402,F401
from orchestrator.cli import model_cmds as _model_cmds  # noqa: E402,F401
from orchestrator.cli import obs_cmds as _obs_cmds  # noqa: E402,F401
from orchestrator.cli import sched_cmds as _sched_cmds  # noqa: E402,F401
from orchestrator.cli import spec_cmds as _spec_cmds  # noqa: E402,F401
from orchestrator.cli import tune_cmds as _tune_cmds  # noqa: E402,F401

__all__ = ["EXIT_USER_ERROR", "main"]
