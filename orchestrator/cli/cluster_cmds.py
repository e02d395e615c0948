"""`up` and `down`: a warm local Ray cluster that outlives one job (see orchestrator.execution.cluster)."""

from __future__ import annotations

import time
from datetime import datetime

import click

from orchestrator.cli.common import emit_json, handle_errors, settings_of
from orchestrator.cli.obs_cmds import parse_duration
from orchestrator.errors import UsageError


@click.command("up")
@click.option("--idle-timeout", "idle_timeout_s", default="30m", show_default=True, metavar="DURATION",
              callback=parse_duration, help="Stop the cluster after this long with no active job (0: never).")
@click.option("--warm-workers", type=click.IntRange(0, 64), default=2, show_default=True,
              help="Torch workers started now, torch imported and joined in one process group (0: none; "
                   "a job whose worker count has no idle gang starts one and leaves it warm).")
@click.option("--num-cpus", type=click.FloatRange(min=0.5), default=None,
              help="CPUs Ray may schedule (default: all of this machine's).")
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=None,
              help="The Ray dashboard's port (default 8265, or a free one when taken).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
@handle_errors
def up(ctx: click.Context, idle_timeout_s: float, warm_workers: int, num_cpus: float | None,
       dashboard_port: int | None, output: str) -> None:
    """Start a warm local Ray cluster; `submit` then uses it (its torch jobs start in seconds)."""
    from orchestrator.execution.cluster import cluster_info, cluster_lock, find_warm_cluster, start_cluster

    settings = settings_of(ctx)
    if settings.local_ray_address:
        raise UsageError(f"RAY_ADDRESS is set ({settings.local_ray_address}): jobs of this shell join that Ray, "
                         "not a warm cluster", fix="unset RAY_ADDRESS, then run orchestrator up")
    started = time.time()
    with cluster_lock(settings.home):  # two `up` at once: the second finds the first's cluster
        cluster = find_warm_cluster(settings.home)
        already = cluster is not None
        if cluster is None:
            cluster = start_cluster(settings.home, num_cpus=num_cpus, idle_timeout_s=idle_timeout_s,
                                    warm_workers=warm_workers, dashboard_port=dashboard_port)
    info = cluster_info(cluster)
    info.update(already_up=already, seconds=round(time.time() - started, 1))
    if output == "json":
        emit_json(info)
        return
    pool = info.get("pool") or {}
    when = (f"since {datetime.fromtimestamp(cluster.started_at):%H:%M:%S}" if already
            else f"started in {info['seconds']:.0f} s")
    click.echo(f"warm cluster {'already ' if already else ''}up at {cluster.address} ({when})")
    click.echo(f"  Ray dashboard: {cluster.dashboard_url}")
    click.echo(f"  warm torch workers: {pool.get('idle_workers', pool.get('error', '?'))}")
    timeout = cluster.idle_timeout_s
    click.echo(f"  stops after {timeout / 60:g} min with no active job" if timeout
               else "  stays up until `orchestrator down`")
    click.echo("  `orchestrator submit SPEC` now runs here; `orchestrator down` stops it")


@click.command("down")
@click.option("--force", is_flag=True, help="Stop it even while jobs run on it (they end where they are).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
@handle_errors
def down(ctx: click.Context, force: bool, output: str) -> None:
    """Stop the warm local cluster `up` started (jobs running on it stop too)."""
    from orchestrator.execution.cluster import active_job_ids, find_warm_cluster, stop_cluster

    settings = settings_of(ctx)
    active = active_job_ids(settings.home)
    if active and not force and find_warm_cluster(settings.home) is not None:
        raise UsageError(f"jobs are active on the warm cluster: {', '.join(active)}",
                         fix="wait for them, or `orchestrator cancel JOB` (it checkpoints first), "
                             "or `orchestrator down --force`")
    cluster = stop_cluster(settings.home)
    if output == "json":
        emit_json({"stopped": cluster is not None, "address": cluster.address if cluster else None,
                   "active_jobs": active})
        return
    if cluster is None:
        click.echo("no warm cluster is up")
        return
    click.echo(f"warm cluster at {cluster.address} stopped")
    if active:
        click.echo(f"  jobs that were active: {', '.join(active)} (`orchestrator resume JOB` continues them)")


COMMANDS = [up, down]
