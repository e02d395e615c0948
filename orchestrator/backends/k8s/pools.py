"""Node pools as the scheduler sees them, read from ConfigMaps and/or from the cluster's Nodes.

* A **pool ConfigMap** (label ``orchestrator.dev/node-pools: "true"``) holds, under the key
  ``pools.yaml``, a cluster file in the scheduler's format (``pools:``, optionally ``queues:``,
  ``priority_classes:``, ``scheduler:``; see docs/scheduler.md). Several ConfigMaps add up.
* **Nodes** can be read too: Ready, schedulable nodes grouped by their node-pool label
  (GKE's ``cloud.google.com/gke-nodepool`` by default), with the accelerator from GKE's labels and
  the counts from ``allocatable``. A pool named in a ConfigMap wins over the same pool from Nodes.

Everything here is pure: callers pass the objects they listed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.backends.k8s import POOLS_CONFIGMAP_KEY
from orchestrator.errors import SpecError, SpecIssue
from orchestrator.scheduler import ClusterSpec, NodePool
from orchestrator.scheduler.cluster import CPU, cluster_from_data
from orchestrator.spec.loader import parse_yaml_text
from orchestrator.spec.models import JobSpec, parse_memory
from orchestrator.spec.tpu import generation, single_host_topology

GKE_NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
GKE_SPOT_LABELS = ("cloud.google.com/gke-spot", "cloud.google.com/gke-preemptible")
GPU_RESOURCE = "nvidia.com/gpu"
TPU_RESOURCE = "google.com/tpu"
#: Taints GKE puts on every GPU/TPU node; pods that request the device tolerate them, so they do
#: not keep a job off a pool.
DEVICE_TAINT_KEYS = frozenset({GPU_RESOURCE, TPU_RESOURCE})

#: Our accelerator names -> GKE's ``cloud.google.com/gke-accelerator`` values, where they differ.
GKE_GPU_NAMES: dict[str, str] = {
    "nvidia-a100-40gb": "nvidia-tesla-a100",
    "nvidia-t4": "nvidia-tesla-t4",
    "nvidia-v100": "nvidia-tesla-v100",
    "nvidia-p100": "nvidia-tesla-p100",
    "nvidia-p4": "nvidia-tesla-p4",
}
_OUR_GPU_NAMES = {gke: ours for ours, gke in GKE_GPU_NAMES.items()}


def is_tpu(accelerator: str | None) -> bool:
    return bool(accelerator and accelerator.startswith("tpu-"))


def gke_node_selector(accelerator: str, topology: str | None, chips_per_node: int = 0) -> dict[str, str]:
    """GKE's node labels for an accelerator type (and TPU slice topology: for a pool that names
    none, the single-host topology of ``chips_per_node`` chips)."""
    if accelerator == CPU:
        return {}
    if is_tpu(accelerator):
        selector = {GKE_TPU_ACCELERATOR_LABEL: accelerator}
        if not topology and chips_per_node:
            topology = tpu_topology(accelerator, chips_per_node)
        if topology:
            selector[GKE_TPU_TOPOLOGY_LABEL] = topology
        return selector
    return {GKE_ACCELERATOR_LABEL: GKE_GPU_NAMES.get(accelerator, accelerator)}


def _configmap_source(cm: Mapping[str, Any]) -> str:
    meta = cm.get("metadata", {})
    return f"configmap {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " ")


def cluster_from_configmaps(configmaps: Iterable[Mapping[str, Any]], extra_pools: Iterable[NodePool] = ()
                            ) -> ClusterSpec | None:
    """Merge pool ConfigMaps (and pools found on Nodes) into one ClusterSpec; None when no pool.

    Raises SpecError naming the ConfigMap and the field when a ConfigMap is malformed.
    """
    pools: list[Any] = []
    merged: dict[str, Any] = {}
    for cm in sorted(configmaps, key=lambda c: (c["metadata"].get("namespace", ""), c["metadata"]["name"])):
        source = _configmap_source(cm)
        text = (cm.get("data") or {}).get(POOLS_CONFIGMAP_KEY)
        if text is None:
            raise SpecError([SpecIssue("data", f"no key {POOLS_CONFIGMAP_KEY!r}",
                                       fix=f"put the pools under data.{POOLS_CONFIGMAP_KEY}")], source=source)
        data = parse_yaml_text(text, source).data
        if not isinstance(data, dict):
            raise SpecError([SpecIssue("", "must be a mapping with a 'pools:' list",
                                       fix="see deploy/k8s/overlays")], source=source)
        cluster_from_data(data, source)  # validate each ConfigMap on its own: errors name it
        pools.extend(data.get("pools") or [])
        for key, value in data.items():
            if key != "pools":
                merged.setdefault(key, value)
    named = {p["name"] for p in pools if isinstance(p, dict)}
    pools.extend(p.model_dump(exclude_none=True) for p in extra_pools if p.name not in named)
    if not pools:
        return None
    return cluster_from_data({**merged, "pools": pools}, "node-pool configmaps")


def parse_cpu(quantity: str | int | float) -> float:
    """A CPU quantity (``7910m``, ``8``) in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _node_ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = [c for c in conditions if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"  # no conditions: a fake node, count it


def pools_from_nodes(nodes: Iterable[Mapping[str, Any]], pool_label: str = GKE_NODEPOOL_LABEL) -> list[NodePool]:
    """Pools from Ready nodes grouped by ``pool_label`` (nodes without the label are skipped).

    A group that does not make a consistent pool (e.g. a TPU pool with part of a slice Ready) is
    left out rather than guessed at.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for node in nodes:
        name = (node.get("metadata", {}).get("labels") or {}).get(pool_label)
        if name and _node_ready(node):
            groups.setdefault(name, []).append(node)
    pools = []
    for name, members in sorted(groups.items()):
        first = members[0]
        labels = first["metadata"].get("labels") or {}
        alloc = (first.get("status") or {}).get("allocatable") or {}
        tpu = labels.get(GKE_TPU_ACCELERATOR_LABEL)
        gpu = labels.get(GKE_ACCELERATOR_LABEL)
        accelerator = tpu or (_OUR_GPU_NAMES.get(gpu, gpu) if gpu else CPU)
        per_node = int(alloc.get(TPU_RESOURCE if tpu else GPU_RESOURCE, 0) or 0) if accelerator != CPU else 0
        taints = [{"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]}
                  for t in (first.get("spec") or {}).get("taints") or [] if t.get("key") not in DEVICE_TAINT_KEYS]
        data: dict[str, Any] = {
            "name": name, "accelerator": accelerator, "nodes": len(members),
            "accelerators_per_node": per_node, "labels": {pool_label: name}, "taints": taints,
            "spot": any(labels.get(k) == "true" for k in GKE_SPOT_LABELS),
        }
        if "cpu" in alloc:
            data["cpus_per_node"] = parse_cpu(alloc["cpu"])
        if "memory" in alloc:
            data["memory_per_node"] = parse_memory(str(alloc["memory"]))
        if tpu and labels.get(GKE_TPU_TOPOLOGY_LABEL):
            data["topology"] = labels[GKE_TPU_TOPOLOGY_LABEL]
        try:
            pools.append(NodePool.model_validate(data))
        except ValueError:
            continue
    return pools


def assumed_pool(spec: JobSpec) -> NodePool:
    """A pool that just fits ``spec``, for a dry run that cannot read the cluster's pools.

    It uses the first accelerator type the job accepts, one worker per node, and GKE's labels.
    """
    r = spec.resources
    accelerator = r.accelerator_choices[0] if r.accelerator_choices else CPU
    if accelerator == CPU:
        return NodePool(name="assumed-cpu", nodes=r.workers, cpus_per_node=float(math.ceil(r.cpus_per_worker)))
    per_node = max(1, math.ceil(r.gpus_per_worker))
    # a validated TPU job is one slice: one worker per host, each with all of the host's chips
    topology = (r.topology or tpu_topology(accelerator, per_node)) if is_tpu(accelerator) else None
    return NodePool(name=f"assumed-{accelerator}"[:63], accelerator=accelerator, nodes=r.workers,
                    accelerators_per_node=per_node, topology=topology)


def tpu_topology(accelerator: str, chips_per_node: int) -> str | None:
    """The slice topology of a single-host TPU node of ``chips_per_node`` chips (GKE labels every
    TPU node with one, and the Ray TPU webhook refuses a TPU worker group without the selector);
    None for a TPU generation we have no table for."""
    gen = generation(accelerator)
    return single_host_topology(gen, chips_per_node) if gen else None
