"""Builders for Kubernetes-side test data: job specs, TrainingJobs, pool ConfigMaps, Nodes.

Plain dicts, as they travel over the API; defaults make a small valid object, keywords change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from orchestrator.backends.k8s import API_VERSION, KIND, POOLS_CONFIGMAP_KEY, POOLS_CONFIGMAP_LABEL
from orchestrator.backends.k8s.convert import training_job_parts


def spec_data(name: str, *, workers: int = 2, gpus: float = 0, accelerator: str | None = None,
              topology: str | None = None, cpus: float = 1, memory: str | None = None,
              tolerations: Iterable[str] = (), **sections: Any) -> dict[str, Any]:
    """A job spec as data: the built-in CNN, ``workers`` workers with the given resources."""
    resources: dict[str, Any] = {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus}
    if accelerator:
        resources["accelerator"] = accelerator
    if topology:
        resources["topology"] = topology
    if memory:
        resources["memory"] = memory
    if tolerations:
        resources["tolerations"] = list(tolerations)
    data: dict[str, Any] = {"name": name, "model": {"type": "cnn"}, "resources": resources,
                            "training": {"epochs": 1, "batch_size": 64}}
    data.update(sections)
    return data


def training_job(name: str, namespace: str, spec: Mapping[str, Any] | None = None, *, suspend: bool = False,
                 labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A TrainingJob object (spec: :func:`spec_data` of ``name`` unless given; job spec data, snake_case,
    as in a job file: written camelCase, failure injections in the annotation)."""
    body, annotations = training_job_parts(spec if spec is not None else spec_data(name))
    if suspend:
        body["suspend"] = True
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}


def pool_configmap(name: str, namespace: str, pools: Iterable[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """A node-pool ConfigMap (``pools.yaml`` in the scheduler's cluster-file format)."""
    text = yaml.safe_dump({"pools": [dict(p) for p in pools], **extra}, sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {POOLS_CONFIGMAP_LABEL: "true"}},
            "data": {POOLS_CONFIGMAP_KEY: text}}


def gpu_pool(name: str = "a100", *, nodes: int = 2, per_node: int = 8, accelerator: str = "nvidia-a100-40gb",
             **fields: Any) -> dict[str, Any]:
    return {"name": name, "accelerator": accelerator, "nodes": nodes, "accelerators_per_node": per_node, **fields}


def tpu_pool(name: str = "v5p", *, topology: str = "2x2x4", nodes: int = 8, per_node: int = 4,
             accelerator: str = "tpu-v5p-slice", **fields: Any) -> dict[str, Any]:
    return {"name": name, "accelerator": accelerator, "topology": topology, "nodes": nodes,
            "accelerators_per_node": per_node, **fields}


def node(name: str, pool: str, *, gpu: str | None = None, gpus: int = 0, tpu: str | None = None,
         topology: str | None = None, chips: int = 0, cpu: str = "8", memory: str = "32Gi",
         taints: Iterable[Mapping[str, str]] = (), ready: bool = True) -> dict[str, Any]:
    """A Node as GKE labels it (node-pool, accelerator, TPU topology) with its allocatable."""
    labels = {"cloud.google.com/gke-nodepool": pool}
    allocatable = {"cpu": cpu, "memory": memory}
    if gpu:
        labels["cloud.google.com/gke-accelerator"] = gpu
        allocatable["nvidia.com/gpu"] = str(gpus)
    if tpu:
        labels["cloud.google.com/gke-tpu-accelerator"] = tpu
        allocatable["google.com/tpu"] = str(chips)
        if topology:
            labels["cloud.google.com/gke-tpu-topology"] = topology
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": [dict(t) for t in taints]},
            "status": {"allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
