"""Observability verbs: `metrics serve` (Prometheus) and `tensorboard`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import click

from orchestrator.cli.common import handle_errors, settings_of
from orchestrator.errors import UsageError
from orchestrator.settings import Settings
from orchestrator.store import JobRecord, JobState, JobStore


@click.group()
def metrics() -> None:
    """Prometheus metrics for long-running scraping."""


def local_queue_snapshot(records: list[JobRecord], cpus: float | None = None) -> dict[str, Any]:
    """Per-queue job counts and this machine's CPU pool, from the job store."""
    counts: Counter[tuple[str, str]] = Counter()
    oldest: dict[str, float] = {}
    allocated = 0.0
    preemptions: Counter[str] = Counter()
    now = time.time()
    for r in records:
        queue = str((r.spec.get("resources") or {}).get("queue") or "default")
        preemptions[queue] += int(r.result.get("preemptions") or 0)  # counted by the job's driver
        if r.state == JobState.PENDING:
            counts[(queue, "queued")] += 1
            oldest[queue] = max(oldest.get(queue, 0.0), now - r.created_at)
        elif r.state in (JobState.RUNNING, JobState.CANCELLING):
            counts[(queue, "running")] += 1
            res = r.spec.get("resources") or {}
            allocated += float(res.get("workers", 1)) * float(res.get("cpus_per_worker", 1))
    known = {str((r.spec.get("resources") or {}).get("queue") or "default") for r in records} | {"default"}
    for queue in known | {q for q, _ in counts}:  # a queue with no jobs now reads 0, not "no data"
        counts.setdefault((queue, "queued"), 0)
        counts.setdefault((queue, "running"), 0)
        oldest.setdefault(queue, 0.0)
    total = float(cpus if cpus is not None else (os.cpu_count() or 1))
    return {"queue_jobs": dict(counts), "oldest_wait": oldest,
            "pools": {("local", "cpu"): (total, allocated)}, "preemptions": dict(preemptions)}


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(ctx: click.Context | None, param: click.Parameter | None, value: str) -> float:
    """A duration in seconds: ``90s``, ``30m``, ``24h``, ``7d`` or plain seconds; ``0`` means none."""
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:])
    try:
        seconds = float(text[:-1] if unit is not None else text) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 90s, 30m, 24h, 7d, or seconds)",
                                 ctx, param) from None
    if seconds < 0:
        raise click.BadParameter(f"{value!r} is negative", ctx, param)
    return seconds


@metrics.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=9465, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--window", "window_s", default="24h", show_default=True, metavar="DURATION", callback=parse_duration,
              help="Export only jobs unfinished or ended within this long (0: every stored job).")
@click.pass_context
@handle_errors
def metrics_serve(ctx: click.Context, port: int, host: str, window_s: float) -> None:
    """Serve /metrics for the job store's unfinished and recently ended jobs (and the local queue)
    until Ctrl-C."""
    from prometheus_client import CollectorRegistry

    from orchestrator.metrics.prometheus import StoreCollector, serve_registry

    settings: Settings = settings_of(ctx)
    store = JobStore(settings.db_path)

    def records() -> list[JobRecord]:
        store.reconcile_dead_drivers()
        return store.list(limit=10_000)

    registry = CollectorRegistry()
    registry.register(StoreCollector(records, lambda: local_queue_snapshot(records()), window_s=window_s or None))
    try:
        server = serve_registry(registry, port, host)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", fix="pick another --port") from None
    click.echo(f"serving http://{host}:{server.server_port}/metrics (Ctrl-C to stop)", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@click.command()
@click.argument("job_id", metavar="[JOB|LOCATION]", required=False)
@click.option("--port", type=click.IntRange(0, 65535), default=6006, show_default=True,
              help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.pass_context
@handle_errors
def tensorboard(ctx: click.Context, job_id: str | None, port: int, host: str) -> None:
    """Start TensorBoard on one job's events (or every job's) and print its URL.

    JOB may be a job's storage location (s3://bucket/prefix/JOB_ID): its events are copied here first.
    """
    settings: Settings = settings_of(ctx)
    if job_id:
        from orchestrator.execution.outputs import JobOutputs
        from orchestrator.storage import is_job_location

        outputs = (JobOutputs.at(job_id) if is_job_location(job_id)
                   else JobOutputs.of_record(JobStore(settings.db_path).get(job_id)))
        logdir = outputs.tensorboard_dir()  # from storage: copied into this machine's cache
        if not logdir.is_dir():
            raise UsageError(f"job {outputs.job_id} has no TensorBoard events yet ({logdir})",
                             fix="wait until its first epoch ends")
    else:
        logdir = settings.jobs_dir
        if not logdir.is_dir():
            raise UsageError("no jobs yet", fix="orchestrator submit jobs/cnn.yaml")
    port = port or _free_port(host)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
           "--port", str(port)]
    click.echo(f"TensorBoard: http://{host}:{port}/  (logdir {logdir}; Ctrl-C to stop)")
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return
    if code != 0:
        err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
        raise UsageError(f"TensorBoard exited with code {code}: {err[-1] if err else ''}",
                         fix="check that the port is free (--port)")


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (metrics, tensorboard)
