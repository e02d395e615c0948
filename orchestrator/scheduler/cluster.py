"""The cluster model: node pools, queues with quotas, priority classes; loaded from a cluster YAML.

A cluster file is validated once, at the edge, into immutable pydantic models (``extra="forbid"``):
every later stage trusts it. Errors name the file, the line and the field path, e.g.
``cluster.yaml:12: pools[1].topology: ...``. See docs/scheduler.md for the format.
"""

from __future__ import annotations

import difflib
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import SpecError, SpecIssue
from orchestrator.spec.loader import issues_from_validation, parse_yaml_text
from orchestrator.spec.models import ACCELERATOR_PATTERN, CrossFieldError, parse_memory
from orchestrator.spec.tpu import check_pool_shape

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CPU = "cpu"
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY_CLASSES: dict[str, int] = {"low": 0, "normal": 100, "high": 1000}
_TOPOLOGY = re.compile(r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Taint(_Model):
    """A node-pool taint: jobs that do not tolerate it stay off the pool (NoSchedule, NoExecute)
    or use it only when no other pool fits (PreferNoSchedule)."""

    key: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9./_]*$")
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


class NodeSize(_Model):
    """One node of a pool whose nodes differ in size (``NodePool.node_sizes``). A size left out is
    the pool's per-node value."""

    cpus: float | None = Field(default=None, ge=0, description="CPUs of this node.")
    memory: str | int | None = Field(default=None, description="Memory of this node.")
    accelerators: int | None = Field(default=None, ge=0, le=64, description="GPUs or TPU chips of this node.")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_memory(value) <= 0:
            raise ValueError("memory must be positive")
        return value


class NodePool(_Model):
    """Interchangeable nodes: one accelerator type (or ``cpu``), their counts, labels and taints.

    The nodes are the same size unless ``node_sizes`` lists each node's own (a Ray cluster's
    nodes, read from Ray, differ in CPUs and memory); a gang may span the nodes of a pool, each
    worker on one node.
    """

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    accelerator: str = Field(default=CPU, description="Accelerator type, or 'cpu' for CPU-only nodes.")
    nodes: int = Field(ge=0, le=100_000, description="Nodes the pool has now.")
    min_nodes: int | None = Field(default=None, ge=0, description="Autoscaling lower bound.")
    max_nodes: int | None = Field(default=None, ge=0, description="Autoscaling upper bound.")
    accelerators_per_node: int = Field(default=0, ge=0, le=64, description="GPUs or TPU chips per node.")
    cpus_per_node: float | None = Field(default=None, gt=0, description="Omit to not track CPUs.")
    memory_per_node: str | int | None = Field(default=None, description="Omit to not track memory.")
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    spot: bool = Field(default=False, description="Spot/preemptible capacity.")
    topology: str | None = Field(
        default=None, description="TPU slice topology (2x4, 4x4x4): slices are placed whole."
    )
    node_sizes: list[NodeSize] | None = Field(
        default=None,
        description="Each node's size where the nodes differ, one entry per node; the per-node "
        "fields are then the largest node's (and the size an entry leaves out).",
    )

    @field_validator("accelerator")
    @classmethod
    def _accelerator_name(cls, value: str) -> str:
        if value == CPU or ACCELERATOR_PATTERN.match(value):
            return value
        raise ValueError("not an accelerator type; use 'cpu' or a name such as nvidia-a100-40gb")

    @field_validator("memory_per_node")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_memory(value) <= 0:
            raise ValueError("memory must be positive")
        return value

    @field_validator("topology")
    @classmethod
    def _topology_form(cls, value: str | None) -> str | None:
        if value is not None and not _TOPOLOGY.match(value):
            raise ValueError("a topology is two or three sizes joined by 'x', e.g. 2x4 or 4x4x4")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NodePool:
        if self.accelerator == CPU:
            if self.accelerators_per_node:
                raise CrossFieldError(
                    "accelerators_per_node",
                    "a cpu pool has no accelerators",
                    fix="set accelerators_per_node: 0 or name the accelerator type",
                )
            if self.cpus_per_node is None:
                raise CrossFieldError(
                    "cpus_per_node",
                    "a cpu pool needs cpus_per_node",
                    fix="add cpus_per_node: <CPUs of one node>",
                )
        elif self.accelerators_per_node == 0:
            raise CrossFieldError(
                "accelerators_per_node",
                f"pool of {self.accelerator} needs accelerators_per_node",
                fix="add accelerators_per_node: <GPUs or TPU chips per node>",
            )
        if self.topology is not None:
            if not self.is_tpu:
                raise CrossFieldError(
                    "topology",
                    "only TPU pools have a slice topology",
                    fix="drop topology, or use a tpu-... accelerator",
                )
            chips = self.chips_per_slice
            shape = check_pool_shape(self.accelerator, self.topology, self.accelerators_per_node)
            if shape:  # a TPU generation we know: its hosts and topologies (orchestrator/spec/tpu.py)
                raise CrossFieldError(*shape)
            if chips % self.accelerators_per_node:
                raise CrossFieldError(
                    "topology",
                    f"topology {self.topology} has {chips} chips, not a multiple "
                    f"of accelerators_per_node {self.accelerators_per_node}",
                    fix="fix the topology or the chips per host",
                )
            if self.nodes % self.hosts_per_slice:
                raise CrossFieldError(
                    "nodes",
                    f"{self.nodes} nodes is not a whole number of {self.topology} "
                    f"slices ({self.hosts_per_slice} hosts each)",
                    fix=f"use a multiple of {self.hosts_per_slice}",
                )
        elif self.is_tpu:
            shape = check_pool_shape(self.accelerator, None, self.accelerators_per_node)
            if shape:
                raise CrossFieldError(*shape)
        if self.node_sizes is not None:
            self._check_node_sizes()
        low, high = self.min_nodes, self.max_nodes
        if (low is not None and low > self.nodes) or (high is not None and high < self.nodes):
            raise CrossFieldError(
                "nodes",
                f"nodes {self.nodes} is outside min_nodes..max_nodes ({low}..{high})",
                fix="keep min_nodes <= nodes <= max_nodes",
            )
        return self

    def _check_node_sizes(self) -> None:
        sizes = self.node_sizes or []
        if len(sizes) != self.nodes:
            raise CrossFieldError(
                "node_sizes",
                f"{len(sizes)} node sizes for {self.nodes} nodes",
                fix="give one entry per node, or drop node_sizes when the nodes are alike",
            )
        if self.topology is not None:
            raise CrossFieldError(
                "node_sizes", "the hosts of a TPU slice are alike", fix="drop node_sizes or topology"
            )
        largest = (
            ("cpus", self.cpus_per_node, "cpus_per_node"),
            ("accelerators", self.accelerators_per_node, "accelerators_per_node"),
            ("memory", self.memory_bytes, "memory_per_node"),
        )
        for i, size in enumerate(sizes):
            for field, limit, pool_field in largest:
                value = getattr(size, field)
                if value is None:
                    continue
                if field == "memory":
                    value = parse_memory(value)
                if limit is None:
                    raise CrossFieldError(
                        f"node_sizes[{i}].{field}",
                        f"the pool does not track {field} ({pool_field} is not set)",
                        fix=f"set {pool_field} to the largest node's, or drop node_sizes[{i}].{field}",
                    )
                if value > limit:
                    raise CrossFieldError(
                        f"node_sizes[{i}].{field}",
                        f"{value:g} is more than {pool_field} {limit:g}",
                        fix=f"set {pool_field} to the largest node's {field}",
                    )

    @property
    def uniform(self) -> bool:
        """Every node has the pool's per-node sizes (no ``node_sizes``)."""
        return self.node_sizes is None

    @cached_property
    def sizes(self) -> tuple[tuple[float, float | None, int | None], ...]:
        """Each node's (primary resource, CPUs or None, memory bytes or None); the primary resource
        is accelerators, or CPUs in a cpu pool. For a pool with ``node_sizes`` only."""
        out = []
        for size in self.node_sizes or ():
            cpus = self.cpus_per_node if size.cpus is None else size.cpus
            memory = self.memory_bytes if size.memory is None else parse_memory(size.memory)
            accelerators = self.accelerators_per_node if size.accelerators is None else size.accelerators
            primary = float(accelerators) if self.accelerator != CPU else float(cpus or 0.0)
            out.append((primary, cpus, memory))
        return tuple(out)

    @property
    def is_tpu(self) -> bool:
        return self.accelerator.startswith("tpu-")

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_per_node is None else parse_memory(self.memory_per_node)

    @property
    def chips_per_slice(self) -> int:
        return (
            math.prod(int(x) for x in self.topology.split("x"))
            if self.topology
            else self.accelerators_per_node
        )

    @property
    def hosts_per_slice(self) -> int:
        """Hosts of one slice (1 for GPU and CPU pools: every node stands alone)."""
        return self.chips_per_slice // self.accelerators_per_node if self.topology else 1

    @property
    def capacity(self) -> float:
        """Total of the pool's primary resource: accelerators, or CPUs for a cpu pool."""
        if self.node_sizes is not None:
            return sum(primary for primary, _, _ in self.sizes)
        per_node = self.accelerators_per_node if self.accelerator != CPU else (self.cpus_per_node or 0.0)
        return self.nodes * per_node


class Quota(_Model):
    """A queue's share of one accelerator type (or ``cpu``), in accelerators (or CPUs)."""

    nominal: float = Field(ge=0, description="What the queue owns.")
    borrowing_limit: float | None = Field(
        default=None,
        ge=0,
        description="How much above nominal it may borrow from its cohort (none: no limit).",
    )
    lending_limit: float | None = Field(
        default=None, ge=0, description="How much of its unused nominal it lends to the cohort (none: all)."
    )

    @model_validator(mode="after")
    def _lend_within_nominal(self) -> Quota:
        if self.lending_limit is not None and self.lending_limit > self.nominal:
            raise CrossFieldError(
                "lending_limit",
                f"lending_limit {self.lending_limit} exceeds nominal {self.nominal}",
                fix="lend at most the nominal quota",
            )
        return self

    @property
    def guaranteed(self) -> float:
        """The part of the nominal quota never lent out."""
        return self.nominal - (self.nominal if self.lending_limit is None else self.lending_limit)


class Queue(_Model):
    """A queue (a team, a project): default priority, per-type quotas, an optional cohort."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    cohort: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="Queues of a cohort lend and borrow."
    )
    priority: int | str = Field(
        default="normal", description="Priority class of its jobs unless they name one."
    )
    quotas: dict[str, Quota] = Field(
        default_factory=dict, description="Per accelerator type (or cpu). Empty: no quota, no limit."
    )

    def quota(self, resource: str) -> Quota | None:
        """The quota for ``resource``; None when the queue is unlimited; nominal 0 when not listed."""
        if not self.quotas:
            return None
        return self.quotas.get(resource) or _ZERO_QUOTA


_ZERO_QUOTA = Quota(nominal=0)


class SchedulerSettings(_Model):
    """Defaults for the scheduler that runs on this cluster."""

    policy: str = Field(
        default="adaptive", description="fifo, sjf, srtf (oracles), las, or adaptive (the default)."
    )
    backfill_bound_s: float = Field(
        default=3600.0, ge=0, description="After the head of a queue has waited this long, nothing jumps it."
    )


class ClusterSpec(_Model):
    """A whole cluster: pools, queues, priority classes and scheduler defaults."""

    name: str = Field(default="cluster", pattern=NAME_PATTERN)
    pools: list[NodePool] = Field(min_length=1)
    queues: list[Queue] = Field(default_factory=list)
    priority_classes: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES))
    scheduler: SchedulerSettings = SchedulerSettings()

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        _unique("pools", [p.name for p in self.pools])
        _unique("queues", [q.name for q in self.queues])
        types = {p.accelerator for p in self.pools} | {CPU}
        for i, queue in enumerate(self.queues):
            for resource in queue.quotas:
                if resource not in types:
                    raise CrossFieldError(
                        f"queues[{i}].quotas.{resource}",
                        f"no pool has accelerator {resource!r}",
                        fix="use one of " + ", ".join(sorted(types)),
                    )
            if isinstance(queue.priority, str) and queue.priority not in self.priority_classes:
                raise CrossFieldError(
                    f"queues[{i}].priority",
                    f"unknown priority class {queue.priority!r}",
                    fix="use one of " + ", ".join(self.priority_classes),
                )
        return self

    @cached_property
    def queue_by_name(self) -> dict[str, Queue]:
        """Declared queues plus an implicit unlimited ``default`` queue if none is declared."""
        queues = {q.name: q for q in self.queues}
        queues.setdefault(DEFAULT_QUEUE, Queue(name=DEFAULT_QUEUE))
        return queues

    @cached_property
    def has_quotas(self) -> bool:
        return any(q.quotas for q in self.queues)

    @cached_property
    def pool_by_name(self) -> dict[str, NodePool]:
        return {p.name: p for p in self.pools}

    def cohort_members(self, cohort: str | None) -> list[Queue]:
        return [q for q in self.queue_by_name.values() if cohort is not None and q.cohort == cohort]

    def priority_value(self, priority: int | str | None, queue: str = DEFAULT_QUEUE) -> int:
        """An integer priority from a class name, an integer, or the queue's default."""
        if priority is None:
            known = self.queue_by_name.get(queue)
            priority = known.priority if known is not None else "normal"
        if isinstance(priority, int):
            return priority
        if priority not in self.priority_classes:
            raise SpecError(
                [
                    SpecIssue(
                        "resources.priority",
                        f"unknown priority class {priority!r}",
                        value=priority,
                        fix="use one of " + ", ".join(self.priority_classes),
                    )
                ]
            )
        return self.priority_classes[priority]


def _unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise CrossFieldError(
                f"{field}[{i}].name", f"{name!r} is used twice", fix="give each a unique name"
            )
        seen.add(name)


class ClusterFileError(SpecError):
    """A cluster file is missing, unreadable or inconsistent (exit code 2)."""

    def __init__(self, issues: list[SpecIssue], *, source: str | None = None) -> None:
        super().__init__(issues, source=source)
        count = len(self.issues)
        self.message = (
            f"invalid cluster file {source or ''}".rstrip() + f": {count} problem{'s' * (count != 1)}"
        )
        self.args = (self.message,)


def cluster_from_data(data: Any, source: str = "<cluster>", lines: Any = None) -> ClusterSpec:
    """Validate plain data (a parsed cluster YAML) into a ClusterSpec, or raise ClusterFileError."""
    if not isinstance(data, dict):
        raise ClusterFileError(
            [
                SpecIssue(
                    "",
                    "the top level must be a mapping with a 'pools:' list",
                    fix="see examples/clusters/gpu.yaml",
                )
            ],
            source=source,
        )
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        issues = issues_from_validation(exc, data, lines)
        raise ClusterFileError([_suggest_field(i, data) for i in issues], source=source) from None


def load_cluster(path: str | Path) -> ClusterSpec:
    """Read and validate a cluster YAML file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else f"cannot read it ({exc})"
        raise ClusterFileError(
            [SpecIssue("", reason, fix="check the path; examples are in examples/clusters/")], source=source
        ) from None
    if not text.strip():
        raise ClusterFileError(
            [SpecIssue("", "the file is empty", fix="see examples/clusters/gpu.yaml")], source=source
        )
    try:
        loaded = parse_yaml_text(text, source)
    except SpecError as exc:
        raise ClusterFileError(exc.issues, source=source) from None
    return cluster_from_data(loaded.data, source, loaded)


_MODELS_BY_PATH: dict[str, type[BaseModel]] = {
    "": ClusterSpec,
    "pools": NodePool,
    "node_sizes": NodeSize,
    "queues": Queue,
    "taints": Taint,
    "scheduler": SchedulerSettings,
    "quotas": Quota,
}


def _suggest_field(issue: SpecIssue, data: Any) -> SpecIssue:
    """Replace the job-spec 'did you mean' of an unknown field with one from the cluster models."""
    if issue.message != "unknown field":
        return issue
    parts = [p for p in re.split(r"[.\[\]]", issue.field_path) if p and not p.isdigit()]
    owner = parts[-2] if len(parts) >= 2 else ""
    if owner not in _MODELS_BY_PATH and len(parts) >= 3 and parts[-3] == "quotas":
        owner = "quotas"
    model = _MODELS_BY_PATH.get(owner, ClusterSpec)
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(parts[-1] if parts else "", allowed, n=1, cutoff=0.6)
    fix = (f"did you mean `{close[0]}`? " if close else "") + "Allowed here: " + ", ".join(allowed)
    return SpecIssue(issue.field_path, issue.message, fix=fix, line=issue.line)


def fmt_amount(value: float) -> str:
    """An amount of accelerators or CPUs in words: ``12``, ``0.5``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
