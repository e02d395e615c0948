"""What every verb shares: the --output option, JSON output, error handling, settings, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME_ERROR,
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
