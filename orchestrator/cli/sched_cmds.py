"""Scheduler verbs: ``simulate`` (trace replay), ``queue`` and ``explain`` (why a job waits)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from orchestrator.cli.common import OUTPUT_OPTION, emit_json, handle_errors, settings_of
from orchestrator.cli.targets import Where, locate, target_options
from orchestrator.errors import SpecError, UsageError
from orchestrator.scheduler import get_policy
from orchestrator.scheduler.explain import duration_words
from orchestrator.scheduler.view import QueueRow
from orchestrator.settings import Settings

_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
ROWS_SHOWN = 40


def parse_time(text: str) -> float:
    """Seconds from ``3600``, ``90m``, ``12h`` or ``3d``."""
    match = _TIME.match(text)
    if match is None:
        raise UsageError(
            f"--explain-at {text!r} is not a time", fix="give seconds, or a number with s, m, h or d"
        )
    return float(match.group(1)) * _UNIT[match.group(2)]


def _policies(names: Sequence[str]) -> list[str]:
    wanted = [n.strip() for name in names for n in name.split(",") if n.strip()] or ["default"]
    return list(dict.fromkeys(get_policy(n).name for n in wanted))  # validates every name first


def queue_table(rows: Sequence[QueueRow], title: str, limit: int | None = ROWS_SHOWN) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("job", "queue", "prio", "state", "gang", "for", "where / why"):
        table.add_column(column, overflow="fold")
    style = {"running": "cyan", "starting": "green", "waiting": "yellow", "unschedulable": "red"}
    for row in rows[:limit]:
        table.add_row(
            row.job_id,
            row.queue,
            str(row.priority),
            f"[{style.get(row.state, '')}]{row.state}[/]",
            row.gang,
            duration_words(row.since_s),
            row.detail,
        )
    if limit is not None and len(rows) > limit:
        table.caption = f"{len(rows) - limit} more jobs not shown (--output json lists all)"
    return table


# -- simulate ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--trace",
    "trace_path",
    required=True,
    metavar="TRACE.csv",
    help="Job trace: submit_s, duration, gpus and optionally vc columns.",
)
@click.option(
    "--cluster",
    "cluster_path",
    required=True,
    metavar="CLUSTER",
    help="A cluster YAML, or a vc_config.csv (each VC an independent partition).",
)
@click.option(
    "--policy",
    "policy_names",
    multiple=True,
    metavar="NAME",
    help="fifo, sjf, srtf (oracles), las or adaptive/default; repeat or comma-separate. Default: adaptive.",
)
@click.option(
    "--compare-to",
    "compare_to",
    metavar="NAME",
    help="Also replay this policy (e.g. srtf) and show every policy's avg JCT, p95 and preemptions "
    "per job as ratios to it.",
)
@click.option("--contended", is_flag=True, help="vc_config.csv: use contended_nodes instead of nodes.")
@click.option("--vc", "only", multiple=True, metavar="VC", help="Replay only this partition (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Replay only the first N rows of the trace.")
@click.option(
    "--backfill-bound",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Longest a queue head may be passed by backfill (default: the cluster's, 3600).",
)
@click.option(
    "--explain-at",
    "explain_at",
    metavar="T",
    help="Stop at time T (trace seconds; 90m, 12h, 3d) and show the queue and why each job waits.",
)
@click.option(
    "--job", "job_id", metavar="JOB", help="With --explain-at: explain this job only (e.g. job-1234)."
)
@click.option(
    "--plot", "plot_path", metavar="OUT.png", help="Write a PNG of the JCT distribution per policy."
)
@click.option(
    "--processes",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Replay partitions side by side in N worker processes (worth it where the cores are real; "
    "same figures).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@OUTPUT_OPTION
@handle_errors
def simulate(
    trace_path: str,
    cluster_path: str,
    policy_names: tuple[str, ...],
    compare_to: str | None,
    contended: bool,
    only: tuple[str, ...],
    limit: int | None,
    backfill_bound: float | None,
    explain_at: str | None,
    job_id: str | None,
    plot_path: str | None,
    processes: int,
    quiet: bool,
    output: str,
) -> None:
    """Replay a job trace through the real scheduler in simulated time and report JCT figures.

    \b
    Example (the Philly development slice, contended setting):
      orchestrator simulate --trace ../shared/traces/philly/dev.csv \\
          --cluster ../shared/traces/philly/vc_config.csv --contended --policy fifo,las,adaptive --compare-to srtf
    """
    from orchestrator.simulate import load, reports_json
    from orchestrator.simulate.report import write_plot

    policies = _policies(policy_names)
    if compare_to is not None:
        compare_to = _policies((compare_to,))[0]
        if compare_to not in policies:
            policies.append(compare_to)
    if job_id and explain_at is None:
        raise UsageError("--job needs --explain-at", fix="add --explain-at T")
    until = parse_time(explain_at) if explain_at is not None else None
    partitions = load(trace_path, cluster_path, contended=contended, limit=limit, only=only)
    if until is not None:
        _explain_at(partitions, policies[0], until, backfill_bound, job_id, output)
        return
    total = sum(len(p.jobs) for p in partitions)
    reports, jct = _replay_all(partitions, policies, backfill_bound, processes, quiet)
    if plot_path:
        write_plot(plot_path, jct)
    if output == "json":
        emit_json(
            reports_json(
                reports,
                compare_to,
                trace=trace_path,
                cluster=cluster_path,
                contended=contended,
                jobs=total,
                partitions=len(partitions),
            )
        )
        return
    title = (f"{trace_path}: {total:,} jobs on {cluster_path}"
             f"{' (contended)' if contended else ''}, {len(partitions)} partition(s)")
    _print_reports(reports, title, compare_to)
    if plot_path:
        click.echo(f"JCT distribution written to {plot_path}")


def _replay_all(partitions: list[Any], policies: list[str], backfill_bound: float | None, processes: int,
                quiet: bool) -> tuple[list[Any], dict[str, Any]]:
    """Replay every policy over the partitions, with a progress bar on stderr; (reports, JCTs by policy)."""
    from orchestrator.simulate import job_completion_times, run_policy, summarize

    console = Console(stderr=True)
    total = sum(len(p.jobs) for p in partitions)
    reports: list[Any] = []
    jct: dict[str, Any] = {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        for name in policies:
            task = progress.add_task(f"replaying with {name}", total=total)

            def advance(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            replays, seconds = run_policy(
                partitions,
                name,
                backfill_bound_s=backfill_bound,
                on_finished=advance,
                processes=processes,
            )
            progress.update(task, completed=total)
            reports.append(summarize(name, replays, seconds))
            jct[name] = job_completion_times(replays)
    return reports, jct


def _print_reports(reports: list[Any], title: str, compare_to: str | None) -> None:
    """The figures table, and the ratios to ``compare_to`` when it is one of the replayed policies."""
    from orchestrator.simulate.report import ratios

    table = Table(title=title, title_justify="left")
    for column in (
        "policy",
        "avg JCT",
        "p50",
        "p95",
        "p99",
        "avg queue",
        "makespan",
        "GPU util",
        "preempt",
        "replay",
    ):
        wide = max(len(r.policy) for r in reports) if column == "policy" else None  # names stay whole
        table.add_column(column, justify="left" if column == "policy" else "right", min_width=wide)
    for r in reports:
        table.add_row(
            r.policy,
            f"{r.avg_jct_s:,.0f} s",
            f"{r.p50_jct_s:,.0f}",
            f"{r.p95_jct_s:,.0f}",
            f"{r.p99_jct_s:,.0f}",
            f"{r.avg_queue_s:,.0f} s",
            duration_words(r.makespan_s),
            f"{r.utilization:.1%}",
            f"{r.preemptions:,}",
            f"{r.replay_s:.1f} s",
        )
    Console(soft_wrap=True).print(table)
    base = next((r for r in reports if r.policy == compare_to), None)
    if base is not None:
        vs = Table(title=f"ratios to {base.policy}", title_justify="left")
        for column in ("policy", "avg JCT", "p95 JCT", "preemptions/job"):
            vs.add_column(column, justify="left" if column == "policy" else "right")
        for r in reports:
            vs.add_row(r.policy, *(f"{v:.2f}x" for v in ratios(r, base).values()))
        Console(soft_wrap=True).print(vs)


def _explain_at(
    partitions: Sequence[Any],
    policy: str,
    until: float,
    backfill_bound: float | None,
    job_id: str | None,
    output: str,
) -> None:
    from orchestrator.scheduler.view import queue_rows
    from orchestrator.simulate import replay

    views: dict[str, list[QueueRow]] = {}
    for partition in partitions:
        done = replay(partition, policy, until=until, backfill_bound_s=backfill_bound)
        done.scheduler.clock.set(until)  # type: ignore[attr-defined]  # the replay's ManualClock
        views[partition.name] = queue_rows(done.scheduler, done.state)
    if job_id is not None:
        found = [(name, row) for name, rows in views.items() for row in rows if row.job_id == job_id]
        if not found:
            raise UsageError(
                f"job {job_id} is not queued or running at t={until:g}",
                fix="pick a job that has been submitted and not finished by then",
            )
        name, row = found[0]
        if output == "json":
            emit_json({"time": until, "policy": policy, "partition": name, "job": row.to_json()})
        else:
            _print_row(row, f"t={until:g} ({policy}, partition {name})")
        return
    if output == "json":
        emit_json(
            {
                "time": until,
                "policy": policy,
                "partitions": {name: [r.to_json() for r in rows] for name, rows in views.items()},
            }
        )
        return
    console = Console(soft_wrap=True)
    for name, rows in views.items():
        waiting = sum(r.state in ("waiting", "unschedulable") for r in rows)
        console.print(
            queue_table(
                rows,
                f"partition {name} at t={until:g} ({policy}): "
                f"{len(rows) - waiting} running or starting, {waiting} waiting",
            )
        )


def _print_row(row: QueueRow, where: str) -> None:
    click.echo(
        f"{row.job_id} ({row.gang}, queue {row.queue}, priority {row.priority}) at {where}: {row.state}"
        f" for {duration_words(row.since_s)}"
    )
    if row.reasons:
        for reason in row.reasons:
            click.echo(f"  - {reason}")
    else:
        click.echo(f"  {row.detail}")


# -- queue and explain (the local backend's jobs) ---------------------------------------------


def _local_view(ctx: click.Context, policy: str) -> tuple[list[QueueRow], dict[str, str], str]:
    """The scheduler's view of this machine's active jobs: rows, unreadable jobs, machine words.

    The cluster model is one node with this machine's CPUs, memory and GPUs; every queue the jobs
    name exists, without quota. Running jobs hold their resources; pending ones are explained.
    """
    import os

    import psutil

    from orchestrator.backends.base import get_backend
    from orchestrator.errors import OrchestratorError
    from orchestrator.execution.queue import gpu_count, machine_request
    from orchestrator.scheduler import ClusterState, ManualClock, Scheduler, request_from_spec
    from orchestrator.scheduler.cluster import cluster_from_data
    from orchestrator.scheduler.placement import find_placement
    from orchestrator.scheduler.view import queue_rows
    from orchestrator.store import JobState

    now = time.time()
    records = [
        r
        for r in get_backend("local", settings_of(ctx)).list(10_000)
        if r.state in (JobState.PENDING, JobState.RUNNING, JobState.CANCELLING)
    ]
    cpus, memory, gpus = os.cpu_count() or 1, psutil.virtual_memory().total, gpu_count()
    unreadable: dict[str, str] = {}
    requests = {}
    for record in sorted(records, key=lambda r: r.created_at):
        try:
            request = request_from_spec(record.job_spec)
        except (ValueError, OrchestratorError) as exc:
            unreadable[record.id] = str(exc).splitlines()[0]
            continue
        # The local backend runs on whatever GPUs this machine has: drop the type preference.
        requests[record.id] = (record, machine_request(request))
    pool: dict[str, Any] = {
        "name": "local",
        "nodes": 1,
        "cpus_per_node": float(cpus),
        "memory_per_node": memory,
    }
    pool.update(
        {"accelerator": "nvidia-gpu", "accelerators_per_node": gpus} if gpus else {"accelerator": "cpu"}
    )
    queues = sorted({req.queue for _, req in requests.values()} | {"default"})
    cluster = cluster_from_data({"name": "local", "pools": [pool], "queues": [{"name": q} for q in queues]})
    machine = f"this machine: {cpus} cpus, {memory / 2**30:.1f} GiB, {gpus} GPUs"
    clock = ManualClock(now)
    state = ClusterState(cluster)
    scheduler = Scheduler(cluster, policy, clock)
    overcommitted: list[QueueRow] = []
    for job_id, (record, request) in requests.items():
        try:
            job = state.submit(job_id, request, record.created_at, submit_time=record.created_at)
        except OrchestratorError as exc:
            unreadable[job_id] = str(exc).splitlines()[0]
            continue
        if record.state is JobState.PENDING:
            continue
        options = scheduler.eligibility(request).options
        placement = next(
            (
                p
                for o in options
                if (p := find_placement(state.capacity.pools[o.pool.name], request, o.resource)) is not None
            ),
            None,
        )
        if placement is None:  # Ray runs it anyway (or queues its workers): do not count it
            state.finish(job_id, now)
            overcommitted.append(
                QueueRow(
                    job_id,
                    request.queue,
                    job.priority,
                    "running",
                    request.describe(),
                    now - (record.started_at or record.created_at),
                    "running; not counted: it does not fit this machine's free resources",
                )
            )
        else:
            state.start(job, placement, record.started_at or record.created_at)
    return queue_rows(scheduler, state) + overcommitted, unreadable, machine


def _ray_view(ctx: click.Context, address: str | None) -> tuple[list[QueueRow], dict[str, str], str]:
    """The queue of a Ray cluster (its queue actor's rows, read through a short Ray job)."""
    from orchestrator.backends.ray_cluster import RayClusterBackend

    backend = RayClusterBackend(settings_of(ctx).with_overrides(ray_address=address))
    rows = [QueueRow(**{**r, "reasons": tuple(r.get("reasons") or ())}) for r in backend.queue_rows()]
    return rows, {}, f"Ray cluster {backend.address}"


#: TrainingJob phases the queue view shows (the others have ended, or wait to be resumed).
_K8S_ACTIVE = {"Pending": "waiting", "Starting": "starting", "Running": "running", "Suspending": "suspending"}


def kube_row(job: dict[str, Any], now: float) -> QueueRow:
    """One TrainingJob as a queue row, from what its status carries: the phase, the operator's
    message and ``Scheduled`` condition (why it waits), and the placement (where it runs)."""
    from orchestrator.backends.k8s.convert import job_spec_from_training_job
    from orchestrator.backends.k8s.status import TrainingJobStatus, parse_time
    from orchestrator.scheduler import request_from_spec
    from orchestrator.spec.models import JobSpec

    meta = job.get("metadata") or {}
    status = TrainingJobStatus.parse(job.get("status"))
    try:
        spec = job_spec_from_training_job(job, strict=False)  # camelCase -> the job spec's names
    except SpecError:
        spec = {}
    resources = spec.get("resources") or {}
    try:
        gang = request_from_spec(JobSpec.model_validate(spec)).describe(
            status.placement.accelerator if status.placement else None)
    except ValueError:
        gang = f"{resources.get('workers', 1)} workers"
    scheduled = status.condition("Scheduled")
    state = _K8S_ACTIVE.get(status.phase, status.phase.lower())
    if status.phase == "Pending" and scheduled is not None and scheduled.reason == "Unschedulable":
        state = "unschedulable"
    reasons: tuple[str, ...] = ()
    if status.phase in ("Running", "Starting") and status.placement is not None:
        p = status.placement
        detail = f"on pool {p.pool} ({p.accelerator}, {p.nodes} node{'s' * (p.nodes != 1)}, {p.workers} workers)"
        if status.rayJob is not None:
            detail += f", RayJob {status.rayJob.name}"
        since = parse_time(status.startTime) or parse_time(scheduled.lastTransitionTime if scheduled else None)
    else:
        detail = status.message or ("not yet seen by the operator" if not job.get("status") else status.phase)
        if scheduled is not None and scheduled.status == "False" and scheduled.message:
            reasons = tuple(r.strip() for r in scheduled.message.split(";") if r.strip())
        since = parse_time(scheduled.lastTransitionTime if scheduled else None)
    since = since or parse_time(meta.get("creationTimestamp")) or now
    priority = resources.get("priority")
    return QueueRow(str(meta.get("name", "")), str(resources.get("queue") or "default"),
                    priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
                    state, gang, max(0.0, now - since), detail, reasons)


def _kube_view(settings: Settings) -> tuple[list[QueueRow], dict[str, str], str]:
    """The TrainingJobs of a namespace that are waiting, starting or running, as the operator sees them."""
    from orchestrator.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(settings)
    now = time.time()
    jobs = [j for j in backend.api.list_training_jobs(backend.namespace)
            if ((j.get("status") or {}).get("phase") or "Pending") in _K8S_ACTIVE]
    rows = [kube_row(j, now) for j in jobs]
    order = {"running": 0, "starting": 1, "suspending": 2, "waiting": 3, "unschedulable": 4}
    rows.sort(key=lambda r: (order.get(r.state, 5), -r.since_s))
    where = f"namespace {backend.namespace}" + (f", context {backend.target.context}" if backend.target.context else "")
    return rows, {}, f"TrainingJobs in {where} (the operator's placement and messages)"


def _view(ctx: click.Context, where: Where, policy: str) -> tuple[list[QueueRow], dict[str, str], str]:
    if where.backend == "ray":
        return _ray_view(ctx, where.settings.ray_address)
    if where.backend == "kubernetes":
        return _kube_view(where.settings)
    return _local_view(ctx, _policies([policy])[0])


@click.command(name="queue")
@click.option("--policy", default="default", show_default=True,
              help="Scheduling policy to explain with (backend local; a cluster's scheduler uses its own).")
@target_options
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def queue_command(ctx: click.Context, policy: str, backend: str | None, ray_address: str | None,
                  kube_namespace: str | None, kube_context: str | None, output: str) -> None:
    """Show queued and running jobs (this machine's, a Ray cluster's, or a namespace's TrainingJobs)
    with their state and why they wait."""
    where = locate(ctx, None, backend, ray_address, kube_namespace, kube_context)
    rows, unreadable, machine = _view(ctx, where, policy)
    if output == "json":
        emit_json(
            {
                "time": time.time(),
                "machine": machine,
                "jobs": [r.to_json() for r in rows],
                "unreadable": unreadable,
            }
        )
        return
    if not rows and not unreadable:
        click.echo(f"no queued or running jobs ({machine})")
        return
    Console(soft_wrap=True).print(queue_table(rows, machine, limit=None))
    for job, problem in unreadable.items():
        click.echo(f"{job}: not shown, its spec cannot be read ({problem})", err=True)


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--policy", default="default", show_default=True,
              help="Scheduling policy to explain with (backend local; a cluster's scheduler uses its own).")
@target_options
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def explain(ctx: click.Context, job_id: str, policy: str, backend: str | None, ray_address: str | None,
            kube_namespace: str | None, kube_context: str | None, output: str) -> None:
    """Say where JOB runs, or why it waits, in words.

    On Kubernetes: what the TrainingJob's status carries (its phase, the operator's message, the
    Scheduled condition's reasons, the placement); the operator's scheduler decides there.
    """
    from orchestrator.backends.base import get_backend

    where = locate(ctx, job_id, backend, ray_address, kube_namespace, kube_context)
    if where.backend == "kubernetes":
        _explain_kube(where.settings, job_id, output)
        return
    record = get_backend(where.backend, where.settings).status(job_id)
    rows, unreadable, machine = _view(ctx, where, policy)
    row = next((r for r in rows if r.job_id == record.id), None)
    if row is None:
        why = unreadable.get(record.id)
        message = (
            f"its spec cannot be read: {why}" if why else f"it is {record.state.value}, not queued or running"
        )
        if output == "json":
            emit_json({"job_id": record.id, "state": record.state.value, "detail": message})
        else:
            click.echo(f"{record.id}: {message}")
        return
    if output == "json":
        emit_json(row.to_json())
    else:
        _print_row(row, machine)


def _explain_kube(settings: Settings, job_id: str, output: str) -> None:
    from orchestrator.backends.k8s.status import TrainingJobStatus, record_from_training_job
    from orchestrator.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(settings)
    job = backend.training_job(job_id)
    record = record_from_training_job(job)
    status = TrainingJobStatus.parse(job.get("status"))
    row = kube_row(job, time.time())
    where = f"namespace {backend.namespace}"
    conditions = [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                  for c in status.conditions]
    if output == "json":
        emit_json({**row.to_json(), "phase": status.phase, "message": status.message, "conditions": conditions,
                   "placement": status.placement.model_dump() if status.placement else None,
                   "namespace": backend.namespace})
        return
    if status.phase not in _K8S_ACTIVE:
        click.echo(f"{record.id} ({where}): phase {status.phase}, not queued or running"
                   + (f": {status.message}" if status.message else ""))
    else:
        _print_row(row, where)
    for c in status.conditions:
        click.echo(f"  condition {c.type}={c.status} ({c.reason})" + (f": {c.message}" if c.message else ""))


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (simulate, queue_command, explain)
