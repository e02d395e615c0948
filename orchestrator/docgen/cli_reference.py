"""docs/cli.md: every verb, its arguments and options, generated from the click commands."""

from __future__ import annotations

import inspect

import click

_INTRO = """\
Every `orchestrator` verb with its arguments and options, generated from the click commands in
`orchestrator/cli/` by `python -m orchestrator.docgen`; a test fails when this file is out of
date. `orchestrator VERB --help` prints the same. Exit codes, `--output json` and the error format
are described in [usage.md](usage.md).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _command_section(ctx: click.Context, path: str, level: int) -> list[str]:
    command = ctx.command
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"{'#' * level} `{path}`", "", "```", f"{path} {usage}".rstrip(), "```", ""]
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        # click's \b marks a paragraph it prints as written: a code block here.
        if paragraph.startswith("\b\n"):
            lines += ["```", paragraph.removeprefix("\b\n"), "```", ""]
        elif paragraph.strip():
            lines += [paragraph.strip(), ""]
    records = [record for param in command.get_params(ctx)
               if isinstance(param, click.Option) and "--help" not in param.opts
               and (record := param.get_help_record(ctx)) is not None]
    if records:
        lines += ["| option | meaning |", "|---|---|"]
        lines += [f"| `{_cell(flags)}` | {_cell(text)} |" for flags, text in records]
        lines.append("")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _command_section(click.Context(sub, info_name=name, parent=ctx), f"{path} {name}", level + 1)
    return lines


def render() -> str:
    """The whole page."""
    from orchestrator.cli import main

    root = click.Context(main, info_name="orchestrator")
    lines = ["# Command-line reference", "", _INTRO, "", "| verb | what it does |", "|---|---|"]
    names = [name for name in main.list_commands(root) if not (cmd := main.get_command(root, name)) or not cmd.hidden]
    for name in names:
        command = main.get_command(root, name)
        assert command is not None
        lines.append(f"| [`{name}`](#orchestrator-{name}) | {_cell(command.get_short_help_str(limit=200))} |")
    lines.append("")
    for name in names:
        command = main.get_command(root, name)
        assert command is not None
        lines += _command_section(click.Context(command, info_name=name, parent=root), f"orchestrator {name}", 2)
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
