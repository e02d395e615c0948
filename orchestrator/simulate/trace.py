"""Job traces (Philly-style CSV) and the partitions they are replayed on.

A trace has one job per row: ``submit_s`` (seconds), ``duration`` (seconds), ``gpus`` (a gang,
all or nothing) and optionally ``vc`` (virtual cluster). A bad row fails with its line number and
column, exit code 2.

A cluster is either a ``vc_config.csv`` (each VC an independent partition of ``nodes`` x
``gpus_per_node`` GPUs, or ``contended_nodes`` with ``--contended``), or a cluster YAML (one
partition; a job joins the queue named like its VC when there is one, else ``default``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.scheduler import ClusterSpec, GangRequest, load_cluster
from orchestrator.scheduler.cluster import DEFAULT_QUEUE, cluster_from_data
from orchestrator.scheduler.placement import eligible_pools

TRACE_COLUMNS = ("submit_s", "duration", "gpus")
VC_COLUMNS = ("vc", "nodes", "gpus_per_node")
PHILLY_ACCELERATOR = "nvidia-gpu"  # the trace does not say which GPU model a job used
MAX_REPORTED = 10


class TraceError(UsageError):
    """A trace or cluster CSV has a bad row or column (exit code 2)."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One row of a trace. ``id`` is ``job-<line>`` so that messages point back at the file."""

    id: str
    line: int
    submit: float
    duration: float
    gpus: int
    vc: str | None = None


@dataclass
class Partition:
    """A part of the cluster that is scheduled on its own, with the jobs that go to it."""

    name: str
    cluster: ClusterSpec
    jobs: list[TraceJob] = field(default_factory=list)
    request_for: Callable[[TraceJob], GangRequest] = field(repr=False, default=lambda j: _gpu_gang(j))

    @property
    def gpus(self) -> float:
        return sum(p.capacity for p in self.cluster.pools if p.accelerator != "cpu")


def _gpu_gang(job: TraceJob, queue: str = DEFAULT_QUEUE, accelerators: tuple[str, ...] = ()) -> GangRequest:
    return _gang_of(job.gpus, queue, accelerators)


@lru_cache(maxsize=4096)
def _gang_of(gpus: int, queue: str, accelerators: tuple[str, ...]) -> GangRequest:
    """One (immutable) request per shape: tens of thousands of trace jobs share a few dozen."""
    return GangRequest(workers=gpus, accelerators_per_worker=1.0, accelerators=accelerators, queue=queue)


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) pairs of a CSV file, after checking that the header has ``required``."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}", fix="check the path") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(f"{path} is empty", fix="a header line with " + ", ".join(required)) from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}:1: not a CSV file ({exc})", fix="save it as UTF-8 CSV") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(
                f"{path}:1: missing column {', '.join(missing)} (header: {', '.join(header)})",
                fix="the header needs " + ", ".join(required),
            )
        try:
            for values in reader:
                if not values or all(not v.strip() for v in values):
                    continue
                line = reader.line_num
                if len(values) != len(header):
                    raise TraceError(
                        f"{path}:{line}: {len(values)} fields, the header has {len(header)}",
                        fix="fix the row",
                    )
                yield line, dict(zip(header, values, strict=True))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}:{reader.line_num}: unreadable row ({exc})", fix="fix the row") from None


def _number(
    path: Path, line: int, row: dict[str, str], column: str, *, whole: bool = False, minimum: float = 0.0
) -> float:
    text = row[column].strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise TraceError(
            f"{path}:{line}: column {column}: {text!r} is not {kind} >= {minimum:g}",
            fix=f"fix row {line} or remove it",
        )
    return value


def read_trace(path: str | Path, limit: int | None = None) -> list[TraceJob]:
    """The jobs of a trace CSV, sorted by submit time (stable for equal times)."""
    path = Path(path)
    jobs: list[TraceJob] = []
    for line, row in _rows(path, TRACE_COLUMNS):
        if limit is not None and len(jobs) >= limit:
            break
        try:  # the fast path; anything odd goes through _number for a precise message
            submit, duration, gpus = float(row["submit_s"]), float(row["duration"]), int(row["gpus"])
            good = submit >= 0 and duration >= 0 and gpus >= 1 and math.isfinite(submit + duration)
        except ValueError:
            good = False
        if not good:
            submit = _number(path, line, row, "submit_s")
            duration = _number(path, line, row, "duration")
            gpus = int(_number(path, line, row, "gpus", whole=True, minimum=1))
        jobs.append(
            TraceJob(f"job-{line}", line, submit, duration, gpus, row["vc"].strip() if "vc" in row else None)
        )
    if not jobs:
        raise TraceError(f"{path} has no jobs", fix="add rows below the header")
    jobs.sort(key=lambda j: j.submit)
    return jobs


def _pool_name(vc: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", vc.lower()).strip("-")
    return (name or "vc")[:63]


def vc_partitions(path: str | Path, contended: bool) -> dict[str, Partition]:
    """One partition per VC of a ``vc_config.csv``: a pool of ``nodes`` x ``gpus_per_node`` GPUs."""
    path = Path(path)
    columns = VC_COLUMNS + (("contended_nodes",) if contended else ())
    partitions: dict[str, Partition] = {}
    for line, row in _rows(path, columns):
        vc = row["vc"].strip()
        if not vc:
            raise TraceError(f"{path}:{line}: column vc is empty", fix="name the virtual cluster")
        if vc in partitions:
            raise TraceError(f"{path}:{line}: vc {vc!r} appears twice", fix="keep one row per VC")
        nodes = _number(path, line, row, "contended_nodes" if contended else "nodes", whole=True, minimum=1)
        per_node = _number(path, line, row, "gpus_per_node", whole=True, minimum=1)
        cluster = cluster_from_data(
            {
                "name": _pool_name(vc),
                "pools": [
                    {
                        "name": _pool_name(vc),
                        "accelerator": PHILLY_ACCELERATOR,
                        "nodes": int(nodes),
                        "accelerators_per_node": int(per_node),
                    }
                ],
            },
            source=f"{path}:{line}",
        )
        partitions[vc] = Partition(vc, cluster)
    if not partitions:
        raise TraceError(f"{path} lists no VC", fix="add one row per virtual cluster")
    return partitions


def assign(
    trace: list[TraceJob], cluster_path: str | Path, *, contended: bool = False, trace_name: str = "trace"
) -> list[Partition]:
    """Split the trace's jobs over the partitions of a vc_config.csv or a cluster YAML."""
    if str(cluster_path).endswith(".csv"):
        partitions = vc_partitions(cluster_path, contended)
        for job in trace:
            part = partitions.get(job.vc or "")
            if part is None:
                raise TraceError(
                    f"{trace_name}:{job.line}: vc {job.vc!r} is not in {cluster_path}",
                    fix="add the VC to the cluster file or drop its rows",
                )
            if job.gpus > part.gpus:
                raise TraceError(
                    f"{trace_name}:{job.line}: the job asks for {job.gpus} GPUs; vc {job.vc} "
                    f"has {part.gpus:g}",
                    fix="use a larger cluster or drop the row",
                )
            part.jobs.append(job)
        return [p for p in partitions.values() if p.jobs]
    if contended:
        raise TraceError(
            "--contended applies to a vc_config.csv cluster only",
            fix="drop --contended, or pass a vc_config.csv",
        )
    cluster = load_cluster(cluster_path)
    gpu_types = tuple(
        dict.fromkeys(p.accelerator for p in cluster.pools if p.accelerator != "cpu" and not p.is_tpu)
    )
    if not gpu_types:
        raise TraceError(f"{cluster_path}: no GPU pool to replay a GPU trace on", fix="add a GPU pool")

    def request_for(job: TraceJob) -> GangRequest:
        queue = job.vc if job.vc in cluster.queue_by_name else DEFAULT_QUEUE
        return _gpu_gang(job, queue, gpu_types)

    part = Partition(cluster.name, cluster, list(trace), request_for)
    fits: dict[GangRequest, bool] = {}
    for job in trace:
        request = request_for(job)
        if request not in fits:
            fits[request] = bool(eligible_pools(cluster, request).options)
        if not fits[request]:
            raise TraceError(
                f"{trace_name}:{job.line}: no pool of {cluster_path} can ever hold a gang of {job.gpus} GPUs",
                fix="use a larger cluster or drop the row",
            )
    return [part]
