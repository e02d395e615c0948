"""Kueue: which TrainingJobs Kueue admits, and our priorities as Kueue ``WorkloadPriorityClass`` es.

When Kueue manages a job, the operator holds no placement of its own (no gating twice): it creates
the RayJob suspended, labelled with the LocalQueue (``kueue.x-k8s.io/queue-name``) and the
priority class (``kueue.x-k8s.io/priority-class``), and Kueue admits it by setting
``spec.suspend: false`` (KubeRay's RayJob integration). The operator never unsuspends it.

A job goes to Kueue, in this order, when

1. its spec names a LocalQueue (``kubernetes.local_queue``);
2. the TrainingJob carries Kueue's queue-name label (its value is the LocalQueue);
3. the operator runs with ``--kueue`` (every namespace) or ``--kueue-namespace NS`` (those): the
   LocalQueue is then the spec's ``resources.queue``.

Pure: no client, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from orchestrator.backends.k8s import KUEUE_QUEUE_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from orchestrator.backends.k8s.pools import assumed_pool
from orchestrator.scheduler import ClusterSpec, NodePool
from orchestrator.scheduler.cluster import CPU, DEFAULT_PRIORITY_CLASSES
from orchestrator.spec.models import JobSpec

KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta1"
#: Our WorkloadPriorityClasses are named this plus our priority name (cluster-scoped names: no clash
#: with a platform's own classes).
PRIORITY_CLASS_PREFIX = "orchestrator-"


def local_queue(job: Mapping[str, Any], spec: JobSpec | None, *, everywhere: bool = False,
                namespaces: Collection[str] = ()) -> str | None:
    """The LocalQueue Kueue admits ``job`` from, or None when the operator's own pools place it."""
    if spec is not None and spec.kubernetes is not None and spec.kubernetes.local_queue:
        return spec.kubernetes.local_queue
    meta = job.get("metadata", {})
    labelled = (meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    if labelled:
        return str(labelled)
    if spec is not None and (everywhere or meta.get("namespace") in namespaces):
        return spec.resources.queue
    return None


def admission_pool(spec: JobSpec, cluster: ClusterSpec | None) -> NodePool:
    """The shape of a Kueue job's workers (node labels, taints, TPU hosts): the first known pool of
    the spec's first accelerator type (and topology), else one drawn from the spec alone. Nothing
    is held in the operator's book: Kueue's quota decides, and its ResourceFlavor may add labels."""
    r = spec.resources
    accelerator = r.accelerator_choices[0] if r.accelerator_choices else CPU
    for pool in cluster.pools if cluster is not None else ():
        if pool.accelerator == accelerator and (r.topology is None or pool.topology == r.topology):
            return pool
    return assumed_pool(spec)


def priority_class(priority: int | str | None, classes: Mapping[str, int] = DEFAULT_PRIORITY_CLASSES,
                   known: Mapping[str, int] | None = None) -> str | None:
    """The WorkloadPriorityClass of a spec's ``resources.priority`` (see :func:`kueue_priority`)."""
    return kueue_priority(priority, classes, known)[0]


def kueue_priority(priority: int | str | None, classes: Mapping[str, int] = DEFAULT_PRIORITY_CLASSES,
                   known: Mapping[str, int] | None = None) -> tuple[str | None, str | None]:
    """(WorkloadPriorityClass, note) of a spec's ``resources.priority``, only ever one of the
    shipped ``classes`` (deploy/k8s/kueue: Kueue cannot admit a job whose class does not exist).

    A shipped name maps to ``orchestrator-NAME``; an integer to the highest shipped class not above
    it (the lowest when it is below them all); another name through its value in ``known`` (the
    cluster's ``priority_classes``) the same way, with a note saying so; a name with no known value
    to no class (Kueue's default priority), with a note; None to None."""
    if priority is None:
        return None, None
    if isinstance(priority, int):
        return _at_most(priority, classes), None
    if priority in classes:
        return f"{PRIORITY_CLASS_PREFIX}{priority}", None
    shipped = ", ".join(f"{PRIORITY_CLASS_PREFIX}{n}" for n, _ in sorted(classes.items(), key=lambda kv: kv[1]))
    value = (known or {}).get(priority)
    if value is None:
        return None, (f"priority {priority} is not a priority class the operator knows: no Kueue priority-class "
                      f"label, so Kueue's default priority (shipped WorkloadPriorityClasses: {shipped})")
    name = _at_most(value, classes)
    return name, (f"priority {priority} ({value}) has no WorkloadPriorityClass of its own: labelled {name}, the "
                  f"highest shipped class not above it (shipped: {shipped})")


def _at_most(value: int, classes: Mapping[str, int]) -> str:
    ranked = sorted(classes.items(), key=lambda kv: kv[1])
    name = ranked[0][0]
    for candidate, level in ranked:
        if level <= value:
            name = candidate
    return f"{PRIORITY_CLASS_PREFIX}{name}"


def workload_priority_classes(classes: Mapping[str, int] = DEFAULT_PRIORITY_CLASSES) -> list[dict[str, Any]]:
    """Kueue WorkloadPriorityClass objects for our priority levels (deploy/k8s/kueue ships these)."""
    return [{
        "apiVersion": KUEUE_API_VERSION, "kind": "WorkloadPriorityClass",
        "metadata": {"name": f"{PRIORITY_CLASS_PREFIX}{name}", "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "value": value,
        "description": f"orchestrator TrainingJobs with resources.priority {name}",
    } for name, value in sorted(classes.items(), key=lambda kv: kv[1])]
