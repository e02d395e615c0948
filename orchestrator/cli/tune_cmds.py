"""The `tune` verb: hyperparameter sweeps on Ray Tune (``orchestrator tune jobs/cnn-sweep.yaml``).

`status` and `resume` of a sweep go through :func:`sweep_status` and :func:`resume_sweep`, which
the job verbs call when the id names a sweep.
"""

from __future__ import annotations

import sys

import click

from orchestrator.cli.common import emit_json, exit_code_for_state, handle_errors, settings_of
from orchestrator.cli.ui import stdout_console
from orchestrator.errors import UsageError
from orchestrator.settings import Settings
from orchestrator.spec.loader import dump_yaml
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore
from orchestrator.sweep.loader import load_sweep_spec


def _finish(record: JobRecord, output: str) -> None:
    from orchestrator.cli.sweep_ui import sweep_summary

    if output == "json":
        emit_json(record.to_json())
    else:
        stdout_console().print(sweep_summary(record))
    sys.exit(exit_code_for_state(record.state.value))


@click.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a field of the job part, e.g. --set training.epochs=3 (repeatable).")
@click.option("--backend", "-b", default="local", show_default=True, type=click.Choice(["local", "ray", "kubernetes"]),
              help="local: this machine; ray: this process drives the sweep, joined to a running Ray cluster "
                   "(--ray-address, or --address to ask the cluster for it); kubernetes: one RayJob (--dry-run "
                   "prints it).")
@click.option("--ray-address", "gcs_address", default=None, metavar="HOST:PORT",
              help="The Ray cluster's GCS address to join (backend ray; default: RAY_ADDRESS).")
@click.option("--address", "ray_address", default=None, metavar="URL",
              help="The Ray cluster's Jobs API, http://head:8265 (backend ray; default: ORCHESTRATOR_RAY_ADDRESS): "
                   "without --ray-address, the GCS address is asked of the cluster.")
@click.option("--namespace", "-n", "kube_namespace", default=None, metavar="NS",
              help="Namespace (backend kubernetes; default: ORCHESTRATOR_NAMESPACE, else the kubeconfig "
                   "context's, else default).")
@click.option("--dry-run", is_flag=True, help="Print the plan (trials, scheduler, resources) and start nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No live table.")
@click.option("--output", "-o", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True,
              help="text for people, json for scripts (one object, last line of stdout); yaml (with "
                   "--dry-run, backend kubernetes): the Secret, NetworkPolicy and RayJob, for kubectl apply -f -.")
@click.pass_context
@handle_errors
def tune(ctx: click.Context, spec_path: str, overrides: tuple[str, ...], backend: str, gcs_address: str | None,
         ray_address: str | None, kube_namespace: str | None, dry_run: bool, quiet: bool, output: str) -> None:
    """Run a hyperparameter sweep: SPEC is a job spec with a `tune:` section.

    \b
    Every trial is the job with the trial's parameters set (a multi-worker trial is a DDP or
    MultiWorkerMirroredStrategy run); ASHA stops poor trials early. At the end: a leaderboard,
    the budget early stopping saved, and the best trial's job spec, checkpoint and model.
    `orchestrator status SWEEP` shows it later; `orchestrator resume SWEEP` continues it.
    """
    from orchestrator.sweep.plan import sweep_plan

    sweep = load_sweep_spec(spec_path, overrides)
    settings = settings_of(ctx).with_overrides(kube_namespace=kube_namespace)
    if backend == "ray":
        settings = settings.with_overrides(local_ray_address=sweep_gcs_address(settings, gcs_address, ray_address,
                                                                               dry_run))
    if output == "yaml" and backend != "kubernetes":
        raise UsageError("--output yaml is for --backend kubernetes (the objects a sweep becomes there)",
                         fix="add --backend kubernetes --dry-run, or use -o text / -o json")
    if dry_run or backend == "kubernetes":
        if backend == "kubernetes" and not dry_run:
            raise UsageError("backend kubernetes supports --dry-run only for sweeps in this version",
                             fix="add --dry-run -o yaml and apply what it prints with kubectl apply -f - (the "
                                 "Secret, NetworkPolicy and RayJob; put a random token in the Secret first)")
        if output == "yaml":
            from orchestrator.backends.k8s.client import resolve_kube_target
            from orchestrator.sweep.plan import kubernetes_stream

            target = resolve_kube_target(settings.kube_namespace, settings.kube_context, settings.kubeconfig)
            docs = kubernetes_stream(sweep, target.namespace, spec_path)
            header = (f"# The objects sweep {sweep.name} becomes on Kubernetes: apply with kubectl apply -f -.\n"
                      "# The Secret's token is a placeholder: put a random one in before applying, e.g.\n"
                      "#   python -c 'import secrets; print(secrets.token_urlsafe(32))'\n")
            click.echo(header + "---\n".join(dump_yaml(d) for d in docs).rstrip())
            return
        plan = sweep_plan(sweep, backend, settings, spec_path)
        if output == "json":
            emit_json(plan)
        else:
            click.echo(dump_yaml(plan).rstrip())
        return
    from orchestrator.cli.sweep_ui import LiveSweep
    from orchestrator.sweep.runner import SweepDriver, create_sweep_record

    # the driver is this process, whichever cluster it joins
    record = create_sweep_record(settings, sweep, ray_address=settings.local_ray_address if backend == "ray" else None)
    ui = LiveSweep(quiet=quiet or output == "json")
    try:
        record = SweepDriver(settings, record.id, ui).run()
    finally:
        ui.stop()
    _finish(record, output)


def sweep_gcs_address(settings: Settings, gcs_address: str | None, jobs_url: str | None, dry_run: bool) -> str:
    """The GCS address a ``--backend ray`` sweep's driver joins: ``--ray-address``; else one asked of the
    cluster whose Jobs API ``--address`` (or ORCHESTRATOR_RAY_ADDRESS) names; else RAY_ADDRESS.

    Before this version ``tune --address`` (and ORCHESTRATOR_RAY_ADDRESS) was the GCS address: a value
    without a scheme (``head:6379``) is still taken as one, with a warning.
    """
    from orchestrator.backends.ray_cluster import RayClusterBackend

    if gcs_address:
        return _gcs_address(gcs_address, "--ray-address")
    url = jobs_url or settings.ray_address
    if url and "://" not in url:
        where = "--address" if jobs_url else "ORCHESTRATOR_RAY_ADDRESS"
        click.echo(f"warning: {where} {url} taken as the GCS address, as tune did before; it now means the Jobs "
                   f"API URL (http://head:8265): use --ray-address {url} (or RAY_ADDRESS) for the GCS address",
                   err=True)
        return _gcs_address(url, where)
    if url:
        if dry_run:
            return f"(asked of {url} at submit)"
        return RayClusterBackend(settings.with_overrides(ray_address=url)).gcs_address()
    if settings.local_ray_address and settings.local_ray_address != "auto":
        return _gcs_address(settings.local_ray_address, "RAY_ADDRESS")
    raise UsageError(
        "backend ray runs the sweep's driver here, joined to the cluster: it needs the cluster's GCS address",
        fix="pass --ray-address HEAD_IP:6379 (or set RAY_ADDRESS), or --address http://HEAD:8265 to ask the cluster "
            "for it; on the head node itself, --backend local joins RAY_ADDRESS",
    )


def _gcs_address(address: str, where: str) -> str:
    if address.startswith(("http://", "https://", "ray://")):
        raise UsageError(f"{where} {address} is not a GCS address (host:port)",
                         fix="give the GCS address, HEAD_IP:6379, with --ray-address; a http:// URL (the Jobs API) "
                             "goes to --address")
    return address


def is_sweep(record: JobRecord) -> bool:
    from orchestrator.sweep.models import is_sweep_spec

    return is_sweep_spec(record.spec)


def sweep_status(record: JobRecord, output: str) -> None:
    """`orchestrator status SWEEP`: the trials (live while it runs) and, at the end, the leaderboard."""
    from orchestrator.cli.sweep_ui import sweep_summary

    if output == "json":
        emit_json(record.to_json())
        return
    stdout_console().print(sweep_summary(record))


def resume_sweep(ctx: click.Context, sweep_id: str, quiet: bool, output: str) -> None:
    """`orchestrator resume SWEEP`: Tuner.restore; finished trials are kept, the others continue."""
    from orchestrator.cli.sweep_ui import LiveSweep
    from orchestrator.sweep.runner import SweepDriver

    settings = settings_of(ctx)
    store = JobStore(settings.db_path)
    store.reconcile_dead_drivers()
    record = store.get(sweep_id)
    if record.state in ACTIVE_STATES:
        raise UsageError(f"sweep {record.id} is {record.state.value}; only a sweep that ended can be resumed",
                         fix=f"wait for it, or `orchestrator cancel {record.id}` first")
    if record.result.get("ray_address"):  # a --backend ray sweep continues on its cluster
        settings = settings.with_overrides(local_ray_address=record.result["ray_address"])
    store.transition(record.id, JobState.PENDING, {record.state}, ended_at=None, message=None, driver_pid=None,
                     driver_started=None)
    ui = LiveSweep(quiet=quiet or output == "json")
    try:
        record = SweepDriver(settings, record.id, ui).run(resume=True)
    finally:
        ui.stop()
    _finish(record, output)


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (tune,)
