"""The `orchestrator` command line.

Every verb turns OrchestratorError into a clear message on stderr and its exit code (2 for bad
input); `--output json` prints exactly one JSON object as the last line of stdout. Nothing here
imports torch, tensorflow or Ray at module level: `orchestrator --help` stays fast.

Each verb module lists its commands in ``COMMANDS``; :data:`VERB_MODULES` below is the one place
that adds them to the group.
"""

from __future__ import annotations

import click

from orchestrator import __version__
from orchestrator.cli import (
    cluster_cmds,
    data_cmds,
    examples_cmds,
    jobs,
    k8s_cmds,
    model_cmds,
    obs_cmds,
    sched_cmds,
    spec_cmds,
    tune_cmds,
)
from orchestrator.errors import EXIT_USER_ERROR
from orchestrator.settings import Settings


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


#: The modules whose ``COMMANDS`` make up the command line.
VERB_MODULES = (jobs, cluster_cmds, spec_cmds, model_cmds, tune_cmds, sched_cmds, obs_cmds, k8s_cmds, examples_cmds, data_cmds)
for _module in VERB_MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)

__all__ = ["EXIT_USER_ERROR", "VERB_MODULES", "main"]
