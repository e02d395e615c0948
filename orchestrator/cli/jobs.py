"""Job verbs: submit, resume, list, status, logs, cancel (and the hidden _driver)."""

from __future__ import annotations

import sys
import time

import click

from orchestrator.backends.base import SubmitOptions
from orchestrator.cli.common import (
    OUTPUT_OPTION,
    emit_json,
    exit_code_for_state,
    handle_errors,
    settings_of,
)
from orchestrator.cli.targets import backend_for, target_options
from orchestrator.cli.ui import LiveProgress, jobs_table, stdout_console, summary_table
from orchestrator.errors import UsageError
from orchestrator.spec import load_spec, with_default_storage
from orchestrator.spec.loader import dump_yaml
from orchestrator.storage import is_job_location
from orchestrator.store import JobRecord

METRICS_OPTIONS = (
    click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
                 help="Serve the job's Prometheus /metrics on this port (0: a free port, printed)."),
    click.option("--metrics-host", default="127.0.0.1", show_default=True,
                 help="Address /metrics binds to."),
    click.option("--metrics-linger", type=click.FloatRange(0, 3600), default=0.0, show_default=True,
                 help="Keep /metrics up this many seconds after the job ends (for a last scrape)."),
)

def _finish(record: JobRecord, output: str, quiet: bool) -> None:
    """Print the outcome and exit with the job's exit code."""
    if output == "json":
        emit_json(record.to_json())
    elif not quiet or record.state.value != "succeeded":
        stdout_console().print(summary_table(record))
    sys.exit(exit_code_for_state(record.state.value))


@click.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a spec field, e.g. --set training.epochs=3 (repeatable).")
@target_options
@click.option("--detach", "-d", is_flag=True, help="Print the job id and return; the job runs on.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and start nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No live progress.")
@click.option("--inject-failure", "inject", multiple=True, metavar="kind=K,rank=R,at_step=S",
              help="Fail on purpose (testing): kind sigkill|exception|hang, rank, at_step or at_epoch, "
                   "attempt. Repeatable.")
@METRICS_OPTIONS[0]
@METRICS_OPTIONS[1]
@METRICS_OPTIONS[2]
@click.option("--output", "-o", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True,
              help="text for people, json for scripts (one object, last line of stdout); yaml (with "
                   "--dry-run, backend kubernetes): the objects the operator would create, for kubectl apply -f -.")
@click.pass_context
@handle_errors
def submit(
    ctx: click.Context,
    spec_path: str,
    overrides: tuple[str, ...],
    backend: str | None,
    ray_address: str | None,
    kube_namespace: str | None,
    kube_context: str | None,
    detach: bool,
    dry_run: bool,
    quiet: bool,
    inject: tuple[str, ...],
    metrics_port: int,
    metrics_host: str,
    metrics_linger: float,
    output: str,
) -> None:
    """Validate SPEC and run the training job it describes."""
    spec = with_default_storage(load_spec(spec_path, overrides, inject), settings_of(ctx).storage)
    be = backend_for(ctx, backend, ray_address, kube_namespace, kube_context)
    options = SubmitOptions(detach=detach, spec_path=spec_path, metrics_port=metrics_port,
                            metrics_host=metrics_host, metrics_linger_s=metrics_linger)
    if output == "yaml" and not dry_run:
        raise UsageError("--output yaml prints the manifests of a dry run", fix="add --dry-run")
    if dry_run and output == "yaml":
        docs = be.dry_run_manifests(spec, options)
        header = (f"# What the operator creates for TrainingJob {spec.name} (owner references left out).\n"
                  "# The Secret's token is a placeholder: put a random one in before applying, e.g.\n"
                  "#   python -c 'import secrets; print(secrets.token_urlsafe(32))'\n")
        click.echo(header + "---\n".join(dump_yaml(d) for d in docs).rstrip())
        return
    if dry_run:
        plan = be.dry_run(spec, options)
        if output == "json":
            emit_json(plan)
        else:
            click.echo(dump_yaml(plan).rstrip())
        return
    ui = None if output == "json" and quiet else LiveProgress(quiet=quiet)
    try:
        record = be.submit(spec, options, ui)
    finally:
        if ui is not None:
            ui.stop()
    if detach:
        if output == "json":
            emit_json(record.to_json())
        else:
            click.echo(record.id)
            if not quiet:  # a cluster job's place is recorded here: its id is enough
                click.echo(f"  follow it: orchestrator logs {record.id} --follow", err=True)
                if record.result.get("dashboard_url"):
                    click.echo(f"  Ray dashboard: {record.result['dashboard_url']}", err=True)
        return
    _finish(record, output, quiet)


@click.command()
@click.argument("job_id", metavar="JOB|LOCATION")
@target_options
@click.option("--epochs", type=click.IntRange(min=1), help="Train up to this many epochs in total.")
@click.option("--detach", "-d", is_flag=True, help="Return at once; the job runs on.")
@click.option("--quiet", "-q", is_flag=True, help="No live progress.")
@METRICS_OPTIONS[0]
@METRICS_OPTIONS[1]
@METRICS_OPTIONS[2]
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def resume(
    ctx: click.Context, job_id: str, backend: str | None, ray_address: str | None, kube_namespace: str | None,
    kube_context: str | None, epochs: int | None, detach: bool, quiet: bool,
    metrics_port: int, metrics_host: str, metrics_linger: float, output: str,
) -> None:
    """Continue JOB from its latest checkpoint (after a cancel, a crash, or to train longer).

    JOB may be a job's storage location (s3://bucket/prefix/JOB_ID): the job is added to this
    machine's job store under its own id and continues from the checkpoints in storage.

    For a sweep (`orchestrator tune`): continue its unfinished trials; finished ones are kept.
    """
    from orchestrator.cli.tune_cmds import is_sweep, resume_sweep

    if is_job_location(job_id):  # a job known only by its storage: take it into this store first
        from orchestrator.backends.local import LocalBackend
        from orchestrator.execution.outputs import JobOutputs

        job_id = LocalBackend(settings_of(ctx)).adopt(JobOutputs.at(job_id)).id
    be = backend_for(ctx, backend, ray_address, kube_namespace, kube_context, job_id)
    if is_sweep(be.status(job_id)):
        if detach or epochs is not None:
            raise UsageError(f"{'--detach' if detach else '--epochs'} does not apply to a sweep",
                             fix=f"orchestrator resume {job_id} (a sweep's epochs come from its spec; it runs "
                                 "in the foreground)")
        resume_sweep(ctx, job_id, quiet, output)
        return
    ui = None if output == "json" and quiet else LiveProgress(quiet=quiet)
    options = SubmitOptions(detach=detach, metrics_port=metrics_port, metrics_host=metrics_host,
                            metrics_linger_s=metrics_linger)
    try:
        record = be.resume(job_id, options, ui, epochs=epochs)
    finally:
        if ui is not None:
            ui.stop()
    if detach:
        emit_json(record.to_json()) if output == "json" else click.echo(record.id)
        return
    _finish(record, output, quiet)


@click.command(name="list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@target_options
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def list_jobs(ctx: click.Context, limit: int, backend: str | None, ray_address: str | None,
              kube_namespace: str | None, kube_context: str | None, output: str) -> None:
    """List jobs, newest first."""
    records = backend_for(ctx, backend, ray_address, kube_namespace, kube_context).list(limit)
    if output == "json":
        emit_json({"jobs": [r.to_json() for r in records]})
    elif not records:
        click.echo("no jobs yet: orchestrator submit jobs/cnn.yaml")
    else:
        stdout_console().print(jobs_table(records))


@click.command()
@click.argument("job_id", metavar="JOB")
@target_options
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def status(ctx: click.Context, job_id: str, backend: str | None, ray_address: str | None,
           kube_namespace: str | None, kube_context: str | None, output: str) -> None:
    """Show a job's state, progress, metrics and attempts."""
    record = backend_for(ctx, backend, ray_address, kube_namespace, kube_context, job_id).status(job_id)
    from orchestrator.cli.tune_cmds import is_sweep, sweep_status

    if is_sweep(record):  # a sweep: its trials and leaderboard
        sweep_status(record, output)
        return
    if output == "json":
        emit_json(record.to_json())
        return
    console = stdout_console()
    console.print(summary_table(record))
    if record.result.get("storage"):
        console.print(f"storage: {record.result['storage']}")
    if record.result.get("cluster"):
        console.print(f"ran on: {record.result['cluster']}")
    if record.state.value in ("running", "pending", "cancelling") and record.progress:
        p = record.job_progress
        console.print(f"progress: epoch {p.epoch}/{p.epochs}, "
                      f"val_accuracy {p.metrics.get('val_accuracy', '-')}")
    for attempt in record.attempts:
        console.print(
            f"attempt {attempt['attempt']}: started {time.strftime('%H:%M:%S', time.localtime(attempt['started_at']))}"
            f", restored epoch {attempt.get('restored_epoch')}"
            + (f", nodes {' '.join(str(n)[:8] for n in attempt['nodes'])}" if attempt.get("nodes") else "")
            + (f", failure: {attempt['failure']}" if attempt.get("failure") else "")
        )


@click.command()
@click.argument("job_id", metavar="JOB|LOCATION")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@target_options
@click.pass_context
@handle_errors
def logs(ctx: click.Context, job_id: str, follow: bool, backend: str | None, ray_address: str | None,
         kube_namespace: str | None, kube_context: str | None) -> None:
    """Print a job's log (driver messages, epoch lines, worker output).

    JOB may be a job's storage location (s3://bucket/prefix/JOB_ID): the log its driver last copied there.
    """
    if is_job_location(job_id):
        from orchestrator.execution.outputs import JobOutputs

        for line in JobOutputs.at(job_id).log_lines():
            click.echo(line)
        return
    be = backend_for(ctx, backend, ray_address, kube_namespace, kube_context, job_id)
    for line in be.logs(job_id, follow=follow):
        click.echo(line)


@click.command()
@click.argument("job_id", metavar="JOB")
@target_options
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, job_id: str, backend: str | None, ray_address: str | None,
           kube_namespace: str | None, kube_context: str | None, output: str) -> None:
    """Stop a job gracefully: workers write a final checkpoint; the job can be resumed."""
    record = backend_for(ctx, backend, ray_address, kube_namespace, kube_context, job_id).cancel(job_id)
    if output == "json":
        emit_json(record.to_json())
    else:
        click.echo(f"{record.id}: {record.state.value}")


@click.command(name="_driver", hidden=True)
@click.argument("job_id")
@click.option("--metrics-port", type=int, default=0)
@click.option("--metrics-host", default="127.0.0.1")
@click.option("--no-metrics", is_flag=True)
@click.pass_context
@handle_errors
def driver_command(ctx: click.Context, job_id: str, metrics_port: int, metrics_host: str, no_metrics: bool) -> None:
    """Run a job's driver in this process (used by submit --detach)."""
    from orchestrator.execution.driver import Driver

    record = Driver(settings_of(ctx), job_id, metrics_port=None if no_metrics else metrics_port,
                    metrics_host=metrics_host).run()
    sys.exit(exit_code_for_state(record.state.value))


@click.command(name="_ray_job", hidden=True)
@click.pass_context
@handle_errors
def ray_job_command(ctx: click.Context) -> None:
    """Run a ray-backend job's driver on the cluster (the Ray job's entrypoint)."""
    from orchestrator.backends.ray_job import run_driver

    record = run_driver(settings_of(ctx))
    sys.exit(exit_code_for_state(record.state.value))


@click.command(name="_ray_queue_view", hidden=True)
@handle_errors
def ray_queue_view_command() -> None:
    """Print the cluster queue's rows (run on the cluster by `orchestrator queue --backend ray`)."""
    from orchestrator.backends.ray_job import print_queue_view

    print_queue_view()


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (submit, resume, list_jobs, status, logs, cancel, driver_command, ray_job_command, ray_queue_view_command)
