"""Manifests: the TrainingJob a user submits, and the KubeRay RayJob, token Secret and NetworkPolicy it becomes.

Pure functions of (job spec, chosen node pool, runtime config): the backend's dry run and the
operator call the same code, so ``submit --dry-run`` prints exactly what the operator creates.

How a job maps onto a RayJob (KubeRay v1):

* **head group**: one small CPU pod that runs the driver. The resolved spec travels inside the
  RayJob, as the head container's ``ORCHESTRATOR_SPEC_YAML`` variable (no ConfigMap); the
  entrypoint ``python -m orchestrator.backends.k8s.driver submit --backend local ...`` writes it
  to a file and runs ``orchestrator submit`` on it. KubeRay sets ``RAY_ADDRESS`` for the driver,
  and the local backend joins the Ray instance it names.
* **worker group** on the chosen pool: GPU and CPU pools get one pod per training worker
  (requests = limits: cpu, memory, ``nvidia.com/gpu``); a TPU pool with a slice topology gets one
  slice: ``numOfHosts`` host pods, each with the host's ``google.com/tpu`` chips.
* **placement**: ``nodeSelector`` from GKE's labels (``cloud.google.com/gke-accelerator``, or
  ``cloud.google.com/gke-tpu-accelerator`` + ``cloud.google.com/gke-tpu-topology``) and the
  pool's own labels (which win); a toleration for each of the pool's taints.
* **lifecycle**: ``shutdownAfterJobFinishes``, ``ttlSecondsAfterFinished``, ``backoffLimit`` =
  ``failure.max_failures`` (whole-cluster retries; worker restarts inside a run are the runtime's),
  an owner reference to the TrainingJob, and optionally Kueue's queue and priority-class labels with
  ``suspend: true`` (see :mod:`orchestrator.backends.k8s.kueue`).
* **locked down**: Ray's token auth on (``authOptions`` names the per-job Secret, and every Ray
  container gets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` from it); a NetworkPolicy admits to
  the Ray pods only the job's own pods, the operators (ours and KubeRay's) on the Ray ports, and
  Prometheus on the metrics ports; every pod template (head, workers, submitter) meets the Pod
  Security "restricted" level (non-root, no privilege escalation, ALL capabilities dropped,
  seccomp ``RuntimeDefault``, no service-account token).
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.backends.k8s import (
    API_VERSION,
    JOB_LABEL,
    JOB_UID_LABEL,
    KIND,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_LABEL,
    RAY_API_VERSION,
    RAY_AUTH_MODE_ENV,
    RAY_AUTH_TOKEN_ENV,
    RAY_KIND,
    RAY_TOKEN_KEY,
    SHM_PATH,
    SHM_VOLUME,
    SPEC_ENV,
    STORAGE_ENV,
)
from orchestrator.backends.k8s.convert import training_job_parts
from orchestrator.backends.k8s.kueue import priority_class
from orchestrator.backends.k8s.pools import GPU_RESOURCE, TPU_RESOURCE, gke_node_selector, is_tpu
from orchestrator.errors import SpecIssue
from orchestrator.scheduler import NodePool
from orchestrator.scheduler.cluster import CPU
from orchestrator.spec.loader import dump_yaml
from orchestrator.spec.models import EnvVar, JobSpec, VolumeMount, VolumeSpec, parse_memory, unmounted_paths

DEFAULT_IMAGE = "ghcr.io/orchestrator-dev/orchestrator:0.1.0"
#: A Kubernetes quantity as our specs write memory (``4Gi``, ``512M``; not ``4GB``, which Kubernetes refuses).
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MAX_NAME = 40  # KubeRay derives cluster, pod and service names from the RayJob's: leave room
#: The most bytes of resolved spec YAML the head's ``ORCHESTRATOR_SPEC_YAML`` may hold: Linux
#: refuses to start a process with one environment string over 128 KiB (MAX_ARG_STRLEN).
MAX_SPEC_ENV_BYTES = 96 * 1024
#: What ``--dry-run`` writes in place of the Ray token (the operator writes a random one).
TOKEN_PLACEHOLDER = "REPLACE-ME-with-a-random-token"
#: Ray's ports on the head: GCS, dashboard (Jobs API), Ray client.
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}


@dataclass(frozen=True)
class RuntimeConfig:
    """How the operator builds Ray clusters (set by ``orchestrator operator`` options)."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    ray_version: str = "2.60.0"
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    worker_memory: str = "4Gi"  # per worker, when the spec gives none
    ttl_seconds_after_finished: int = 600
    service_account: str | None = None
    #: Label RayJobs with Kueue's queue-name (the job's ``resources.queue``) and create them suspended.
    kueue: bool = False
    #: Relative paths in a spec (data.source, entrypoint, checkpoint.dir) resolve against this.
    workdir: str = "/app"
    metrics_port: int = 9400
    #: Ray's own metrics port (KubeRay's default ``metrics-export-port``).
    ray_metrics_port: int = 8080
    #: The user and group the Ray pods run as (rayproject images and ours: uid 1000, "ray").
    run_as_user: int = 1000
    run_as_group: int = 1000
    #: Who the NetworkPolicy admits besides the job's own pods: our operator's pods (namespace and
    #: labels), KubeRay's operator (it calls the dashboard; in its own namespace only: a pod label
    #: alone is one anybody who can create pods could copy) and Prometheus (the metrics ports only;
    #: None: from any namespace).
    operator_namespace: str = "orchestrator-system"
    operator_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "orchestrator-operator"})
    kuberay_namespace: str = "kuberay-system"
    kuberay_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"})
    prometheus_namespace: str | None = None


def rayjob_name(job_name: str, uid: str) -> str:
    """The RayJob of a TrainingJob: its name, or a shortened one with a stable hash suffix."""
    if len(job_name) <= _MAX_NAME:
        return job_name
    digest = hashlib.sha1(f"{job_name}/{uid}".encode()).hexdigest()[:6]
    return f"{job_name[: _MAX_NAME - 7].rstrip('-')}-{digest}"


def kubernetes_issues(spec: JobSpec) -> list[SpecIssue]:
    """What makes ``spec`` unable to run as a TrainingJob, though valid elsewhere: a shared-path
    ``storage`` or ``init_from`` that no volume of ``kubernetes`` holds (a spec with that section
    was already checked when it was validated; one without it is checked here, by the backend and
    the operator)."""
    issues = [SpecIssue(p.field_path, str(p), fix=p.fix)
              for p in unmounted_paths(spec.storage, spec.init_from, spec.kubernetes)]
    size = len(dump_yaml(spec_data(spec)).encode())
    if size > MAX_SPEC_ENV_BYTES:
        issues.append(SpecIssue(
            "", f"the spec is {size} bytes as YAML; the RayJob carries it in an environment variable, "
                f"which holds at most {MAX_SPEC_ENV_BYTES}",
            fix="move large values (long lists, inline data) into files in the image or in storage"))
    return issues


def token_secret_name(rayjob: str) -> str:
    """The Secret holding the Ray token of a RayJob's cluster."""
    return f"{rayjob}-ray-token"


def network_policy_name(rayjob: str) -> str:
    return f"{rayjob}-ray"


def spec_data(spec: JobSpec) -> dict[str, Any]:
    """The spec as plain data, every field written out (a default may change; this job must not)."""
    return spec.model_dump(mode="json")


def training_job_manifest(spec: JobSpec, namespace: str, *, name: str | None = None, suspend: bool = False,
                          labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TrainingJob custom resource for ``spec`` (named after the spec unless ``name`` is given): the
    spec with camelCase field names, failure injections in an annotation (see :mod:`.convert`)."""
    body, annotations = training_job_parts(spec_data(spec))
    if suspend:
        body["suspend"] = True
    metadata: dict[str, Any] = {"name": name or spec.name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True}


def job_labels(job: Mapping[str, Any], pool: str | None = None) -> dict[str, str]:
    """The labels of everything made for a TrainingJob (managed-by, job name and uid, the pool)."""
    meta = job["metadata"]
    labels = {MANAGED_BY_LABEL: MANAGED_BY, JOB_LABEL: meta["name"]}
    if meta.get("uid"):
        labels[JOB_UID_LABEL] = meta["uid"]
    if pool:
        labels[POOL_LABEL] = pool
    return labels


def cluster_paths(data: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Resolve relative file paths in spec data against the image's working directory."""
    out = dict(data)

    def absolute(path: str) -> str:
        return path if posixpath.isabs(path) else posixpath.normpath(posixpath.join(workdir, path))

    source = (out.get("data") or {}).get("source")
    if source and source.endswith(".npz"):
        out["data"] = {**out["data"], "source": absolute(source)}
    if out.get("entrypoint"):
        file_part, func = out["entrypoint"].rsplit(":", 1)
        out["entrypoint"] = f"{absolute(file_part)}:{func}"
    ckpt = (out.get("checkpoint") or {}).get("dir")
    if ckpt:
        out["checkpoint"] = {**out["checkpoint"], "dir": absolute(ckpt)}
    return out


def spec_text(spec: JobSpec, config: RuntimeConfig) -> str:
    """The spec the driver runs, as YAML, with file paths resolved in the image."""
    return dump_yaml(cluster_paths(spec_data(spec), config.workdir))


def entrypoint_command(config: RuntimeConfig) -> str:
    """The RayJob entrypoint: our runtime on the spec in ``ORCHESTRATOR_SPEC_YAML``, joining the
    RayJob's Ray cluster (a plain command: KubeRay's submitter runs it through a shell)."""
    return (f"python -m orchestrator.backends.k8s.driver submit --backend local --quiet "
            f"--metrics-host 0.0.0.0 --metrics-port {config.metrics_port}")


def _names(job: Mapping[str, Any]) -> tuple[str, str, str]:
    """(namespace, RayJob name, TrainingJob name) of a TrainingJob."""
    meta = job["metadata"]
    return meta["namespace"], rayjob_name(meta["name"], meta.get("uid", "")), meta["name"]


def token_secret(job: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
    """The per-job Secret with the Ray token (``token`` None: without data; the operator adds a
    random one when it creates it). Owned by the TrainingJob: it goes when the job goes."""
    namespace, rayjob, _ = _names(job)
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": token_secret_name(rayjob), "namespace": namespace, "labels": job_labels(job),
                     "ownerReferences": [owner_reference(job)]},
    }
    if token is not None:
        body["stringData"] = {RAY_TOKEN_KEY: token}
    return body


def _selector(namespace: str | None, labels: Mapping[str, str]) -> dict[str, Any]:
    """A NetworkPolicy peer: pods with ``labels`` in ``namespace`` (None: in any namespace)."""
    ns = {"matchLabels": {"kubernetes.io/metadata.name": namespace}} if namespace else {}
    peer: dict[str, Any] = {"namespaceSelector": ns}
    if labels:
        peer["podSelector"] = {"matchLabels": dict(labels)}
    return peer


def network_policy(job: Mapping[str, Any], config: RuntimeConfig) -> dict[str, Any]:
    """Ingress to the job's Ray pods: from its own pods (every port: GCS, raylets, object manager,
    workers, collectives), from our operator and KubeRay's on the Ray ports, and from Prometheus
    on the metrics ports only. Egress is left alone."""
    namespace, rayjob, name = _names(job)
    own = {"podSelector": {"matchLabels": {JOB_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}}}
    ray_ports = [{"protocol": "TCP", "port": port} for port in RAY_PORTS.values()]
    metrics_ports = [{"protocol": "TCP", "port": port} for port in (config.metrics_port, config.ray_metrics_port)]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(rayjob), "namespace": namespace, "labels": job_labels(job),
                     "ownerReferences": [owner_reference(job)]},
        "spec": {
            "podSelector": {"matchLabels": {JOB_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [own]},
                {"from": [_selector(config.operator_namespace, config.operator_labels),
                          _selector(config.kuberay_namespace, config.kuberay_labels)], "ports": ray_ports},
                {"from": [_selector(config.prometheus_namespace, {})], "ports": metrics_ports},
            ],
        },
    }


def _auth_env(rayjob: str) -> list[dict[str, Any]]:
    """Ray's token auth for a container: the mode, and the token from the job's Secret."""
    return [{"name": RAY_AUTH_MODE_ENV, "value": "token"},
            {"name": RAY_AUTH_TOKEN_ENV,
             "valueFrom": {"secretKeyRef": {"name": token_secret_name(rayjob), "key": RAY_TOKEN_KEY}}}]


def container_security() -> dict[str, Any]:
    """A container's part of Pod Security "restricted"."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def pod_security(config: RuntimeConfig) -> dict[str, Any]:
    """A pod's part of Pod Security "restricted" (non-root uid, seccomp RuntimeDefault)."""
    return {"runAsNonRoot": True, "runAsUser": config.run_as_user, "runAsGroup": config.run_as_group,
            "fsGroup": config.run_as_group, "seccompProfile": {"type": "RuntimeDefault"}}


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(math.ceil(value * 1000))}m"


def worker_layout(spec: JobSpec, pool: NodePool) -> tuple[int, int, int]:
    """(replicas, numOfHosts, training workers per pod) of the worker group on ``pool``."""
    workers = spec.resources.workers
    if is_tpu(pool.accelerator) and pool.topology:
        hosts = pool.hosts_per_slice
        return 1, hosts, max(1, workers // hosts)
    return workers, 1, 1


def worker_resources(spec: JobSpec, pool: NodePool, config: RuntimeConfig) -> dict[str, str]:
    """Requests (= limits) of one worker pod."""
    r = spec.resources
    _, _, per_pod = worker_layout(spec, pool)
    if per_pod == 1 and r.memory is None:
        memory = config.worker_memory
    elif per_pod == 1 and _QUANTITY.match(str(r.memory)):
        memory = str(r.memory)  # keep what the user wrote when Kubernetes reads it the same way
    else:
        memory = str((r.memory_bytes or parse_memory(config.worker_memory)) * per_pod)
    out = {"cpu": _quantity(r.cpus_per_worker * per_pod), "memory": memory}
    if pool.accelerator != CPU and r.gpus_per_worker:
        if is_tpu(pool.accelerator):
            chips = pool.accelerators_per_node if pool.topology else math.ceil(r.gpus_per_worker)
            out[TPU_RESOURCE] = str(chips)
        else:
            out[GPU_RESOURCE] = str(math.ceil(r.gpus_per_worker))  # a pod cannot hold part of a GPU
    return out


def node_selector(pool: NodePool) -> dict[str, str]:
    """GKE's labels for the pool's accelerator (TPUs: always; GPUs: when the pool names no labels),
    then the pool's own labels."""
    selector: dict[str, str] = {}
    if is_tpu(pool.accelerator) or not pool.labels:
        selector.update(gke_node_selector(pool.accelerator, pool.topology, pool.accelerators_per_node))
    selector.update(pool.labels)
    return selector


def tolerations(pool: NodePool) -> list[dict[str, str]]:
    out = []
    for taint in pool.taints:
        item = {"key": taint.key, "operator": "Equal" if taint.value else "Exists", "effect": taint.effect}
        if taint.value:
            item["value"] = taint.value
        out.append(item)
    device = TPU_RESOURCE if is_tpu(pool.accelerator) else GPU_RESOURCE if pool.accelerator != CPU else None
    if device:  # GKE taints every GPU/TPU node with the device key
        out.append({"key": device, "operator": "Exists", "effect": "NoSchedule"})
    return out


def spec_tolerations(spec: JobSpec) -> list[dict[str, Any]]:
    """The spec's ``resources.tolerations`` as pod tolerations (core/v1 Toleration; empty fields left out)."""
    out = []
    for toleration in spec.resources.tolerations:
        item: dict[str, Any] = {"key": toleration.key, "operator": toleration.operator}
        if toleration.value:
            item["value"] = toleration.value
        if toleration.effect:
            item["effect"] = toleration.effect
        if toleration.toleration_seconds is not None:
            item["tolerationSeconds"] = toleration.toleration_seconds
        if not toleration.key:
            del item["key"]
        out.append(item)
    return out


def _env(var: EnvVar) -> dict[str, Any]:
    if var.secret_key_ref is not None:
        ref = var.secret_key_ref
        return {"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return {"name": var.name, "value": var.value}


def _volume(volume: VolumeSpec) -> dict[str, Any]:
    if volume.persistent_volume_claim is not None:
        claim = volume.persistent_volume_claim
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": claim.claim_name}}
        if claim.read_only:
            source["persistentVolumeClaim"]["readOnly"] = True
    elif volume.secret is not None:
        source = {"secret": {"secretName": volume.secret.secret_name}}
    elif volume.config_map is not None:
        source = {"configMap": {"name": volume.config_map.name}}
    else:  # the model allows exactly one source
        raise ValueError(f"volume {volume.name} has no source")
    return {"name": volume.name, **source}


def _mount(mount: VolumeMount) -> dict[str, Any]:
    out: dict[str, Any] = {"name": mount.name, "mountPath": mount.mount_path}
    if mount.read_only:
        out["readOnly"] = True
    if mount.sub_path:
        out["subPath"] = mount.sub_path
    return out


def _container(name: str, spec: JobSpec, config: RuntimeConfig, resources: Mapping[str, str],
               env: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A Ray container: our environment, then the spec's ``kubernetes`` env, Secrets and mounts."""
    k8s = spec.kubernetes
    container: dict[str, Any] = {
        "name": name, "image": (k8s.image if k8s and k8s.image else config.image),
        "imagePullPolicy": config.image_pull_policy,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "env": [{"name": "ORCHESTRATOR_HOME", "value": "/tmp/orchestrator"}, *(dict(e) for e in env)],
        "securityContext": container_security(),
    }
    if spec.storage:  # the driver and every worker write the job's outputs there
        container["env"].append({"name": STORAGE_ENV, "value": spec.storage})
    mounts: list[dict[str, Any]] = []
    if k8s is not None:
        container["env"].extend(_env(var) for var in k8s.env)
        if k8s.env_from_secrets:
            container["envFrom"] = [{"secretRef": {"name": secret}} for secret in k8s.env_from_secrets]
        mounts.extend(_mount(m) for m in k8s.volume_mounts)
        if k8s.shm_size:
            mounts.append({"name": SHM_VOLUME, "mountPath": SHM_PATH})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _pod(spec: JobSpec, config: RuntimeConfig, container: dict[str, Any],
         volumes: Sequence[Mapping[str, Any]] = (), selector: Mapping[str, str] | None = None,
         tolerated: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """A Ray pod: ``container`` and the given placement, plus the spec's ``kubernetes`` volumes,
    node selector (the pool's labels win on a key both name) and service account, and the spec's
    tolerations."""
    k8s = spec.kubernetes
    pod: dict[str, Any] = {"containers": [container], "securityContext": pod_security(config),
                           "automountServiceAccountToken": False}
    all_volumes = [dict(v) for v in volumes]
    labels: dict[str, str] = {}
    if k8s is not None:
        all_volumes.extend(_volume(v) for v in k8s.volumes)
        if k8s.shm_size:
            all_volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}})
        labels.update(k8s.node_selector)
    if all_volumes:
        pod["volumes"] = all_volumes
    labels.update(selector or {})
    if labels:
        pod["nodeSelector"] = labels
    merged = [dict(t) for t in tolerated]
    merged.extend(t for t in spec_tolerations(spec) if t not in merged)
    if merged:
        pod["tolerations"] = merged
    account = (k8s.service_account if k8s else None) or config.service_account
    if account:
        pod["serviceAccountName"] = account
    return pod


def _head_group(job: Mapping[str, Any], spec: JobSpec, config: RuntimeConfig) -> dict[str, Any]:
    meta = job["metadata"]
    _, rayjob, _ = _names(job)
    # the driver runs here, once per RayJob run: the TrainingJob, not the run, owns checkpoint.dir
    owner = {"name": "ORCHESTRATOR_CHECKPOINT_OWNER",
             "value": f"{meta['namespace']}-{meta['name']}-{meta.get('uid', '')[:8]}".rstrip("-")}
    carried = {"name": SPEC_ENV, "value": spec_text(spec, config)}
    container = _container("ray-head", spec, config, {"cpu": config.head_cpu, "memory": config.head_memory},
                           [owner, carried, *_auth_env(rayjob)])
    container["ports"] = [
        {"containerPort": RAY_PORTS["gcs"], "name": "gcs"}, {"containerPort": RAY_PORTS["dashboard"], "name": "dashboard"},
        {"containerPort": RAY_PORTS["client"], "name": "client"},
        {"containerPort": config.metrics_port, "name": "job-metrics"},
    ]
    pod = _pod(spec, config, container)
    # token auth guards the dashboard and the NetworkPolicy limits who reaches it; the job's label
    # (job_labels) on the head pod is what deploy/k8s/monitoring's job PodMonitor selects
    return {"rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {"metadata": {"labels": job_labels(job)}, "spec": pod}}


def _worker_group(job: Mapping[str, Any], spec: JobSpec, pool: NodePool, config: RuntimeConfig) -> dict[str, Any]:
    replicas, hosts, _ = worker_layout(spec, pool)
    _, rayjob, _ = _names(job)
    container = _container("ray-worker", spec, config, worker_resources(spec, pool, config), _auth_env(rayjob))
    pod = _pod(spec, config, container, selector=node_selector(pool), tolerated=tolerations(pool))
    group: dict[str, Any] = {
        "groupName": "workers", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
        "rayStartParams": {}, "template": {"metadata": {"labels": job_labels(job, pool.name)}, "spec": pod},
    }
    if hosts > 1 or (is_tpu(pool.accelerator) and pool.topology):
        group["numOfHosts"] = hosts
    return group


def _submitter_template(job: Mapping[str, Any], spec: JobSpec, config: RuntimeConfig) -> dict[str, Any]:
    """The pod of KubeRay's submitter Job (``ray job submit``; its log is the driver's, which
    ``orchestrator logs`` reads). KubeRay fills in the command; we make it restricted, labelled
    for the NetworkPolicy, and give it the token for the Jobs API."""
    _, rayjob, _ = _names(job)
    k8s = spec.kubernetes
    resources = {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    container = {"name": "ray-job-submitter", "image": (k8s.image if k8s and k8s.image else config.image),
                 "imagePullPolicy": config.image_pull_policy, "resources": resources,
                 "env": _auth_env(rayjob), "securityContext": container_security()}
    return {"metadata": {"labels": job_labels(job)},
            "spec": {"restartPolicy": "Never", "containers": [container], "securityContext": pod_security(config),
                     "automountServiceAccountToken": False}}


def rayjob_manifest(job: Mapping[str, Any], spec: JobSpec, pool: NodePool, config: RuntimeConfig,
                    kueue_queue: str | None = None, priority_classes: Mapping[str, int] | None = None
                    ) -> dict[str, Any]:
    """The KubeRay RayJob that runs ``spec`` on ``pool`` for the TrainingJob ``job``; for Kueue
    (``kueue_queue``), ``priority_classes`` (the cluster's) map a custom priority name to a
    shipped WorkloadPriorityClass."""
    meta = job["metadata"]
    labels = job_labels(job, None if kueue_queue else pool.name)  # Kueue's job: no pool of ours is held
    if kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = kueue_queue
        priority = priority_class(spec.resources.priority, known=priority_classes)
        if priority:
            labels[KUEUE_PRIORITY_LABEL] = priority
    body: dict[str, Any] = {
        "entrypoint": entrypoint_command(config),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
        "backoffLimit": spec.failure.max_failures,
        "rayClusterSpec": {
            "rayVersion": config.ray_version,
            "authOptions": {"mode": "token", "secretName": token_secret_name(rayjob_name(meta["name"],
                                                                                         meta.get("uid", "")))},
            "headGroupSpec": _head_group(job, spec, config),
            "workerGroupSpecs": [_worker_group(job, spec, pool, config)],
        },
        "submitterPodTemplate": _submitter_template(job, spec, config),
    }
    if kueue_queue:
        body["suspend"] = True  # Kueue admits the job by unsuspending it
    return {
        "apiVersion": RAY_API_VERSION, "kind": RAY_KIND,
        "metadata": {"name": rayjob_name(meta["name"], meta.get("uid", "")), "namespace": meta["namespace"],
                     "labels": labels, "ownerReferences": [owner_reference(job)]},
        "spec": body,
    }
