"""Kubernetes pieces shared by the ``kubernetes`` backend and the operator (pure, no client import).

The operator sits above the backends (``operator -> backends``), and the backend's dry run must
print the exact RayJob the operator would create, so the manifest builders, the CRD generator,
the node-pool readers and the status model live here, below both.

Names used on the cluster are defined once, below.
"""

from __future__ import annotations

#: Our API group, version and kind: ``trainingjobs.orchestrator.dev/v1alpha1``.
GROUP = "orchestrator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ("tj",)
CRD_NAME = f"{PLURAL}.{GROUP}"

#: KubeRay's RayJob (v1).
RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_VERSION}"
RAY_KIND = "RayJob"
RAY_PLURAL = "rayjobs"

#: Labels on everything the operator creates: who manages it, and which TrainingJob it serves.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "orchestrator"
JOB_LABEL = f"{GROUP}/trainingjob"
JOB_UID_LABEL = f"{GROUP}/trainingjob-uid"
POOL_LABEL = f"{GROUP}/pool"
#: ConfigMaps that describe node pools carry this label (value "true").
POOLS_CONFIGMAP_LABEL = f"{GROUP}/node-pools"
#: The key of a pool ConfigMap that holds the pools, in the cluster-file format of the scheduler.
POOLS_CONFIGMAP_KEY = "pools.yaml"
#: Kueue's label that puts a job in a LocalQueue.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Kueue's label that names a job's WorkloadPriorityClass.
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
#: Annotation the operator bumps on waiting TrainingJobs when pools or free capacity change.
RETRY_ANNOTATION = f"{GROUP}/retry"

#: Where the job spec is mounted in the Ray head pod, and the file name inside.
SPEC_MOUNT_DIR = "/etc/orchestrator"
SPEC_FILE = "spec.yaml"
#: The head container's variable that carries the resolved job spec (YAML) to the driver: the spec
#: travels inside the RayJob, so the operator writes no ConfigMap.
SPEC_ENV = "ORCHESTRATOR_SPEC_YAML"
#: Ray's token auth (Ray >= 2.52): the mode variable, the token variable, and the key of the per-job
#: Secret that holds the token (the key KubeRay's ``authOptions.secretName`` expects).
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
RAY_TOKEN_KEY = "auth_token"
#: The memory-backed volume for ``kubernetes.shm_size``, and where it is mounted.
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"
#: The variable that gives the driver and the workers the job's storage location.
STORAGE_ENV = "ORCHESTRATOR_STORAGE"

__all__ = [
    "API_VERSION", "CRD_NAME", "GROUP", "JOB_LABEL", "JOB_UID_LABEL", "KIND", "KUEUE_PRIORITY_LABEL", "KUEUE_QUEUE_LABEL",
    "MANAGED_BY", "MANAGED_BY_LABEL", "PLURAL", "POOLS_CONFIGMAP_KEY", "POOLS_CONFIGMAP_LABEL",
    "POOL_LABEL", "RAY_API_VERSION", "RAY_AUTH_MODE_ENV", "RAY_AUTH_TOKEN_ENV", "RAY_TOKEN_KEY", "RAY_GROUP", "RAY_KIND", "RAY_PLURAL", "RAY_VERSION",
    "RETRY_ANNOTATION", "SHM_PATH", "SHM_VOLUME", "SHORT_NAMES", "SINGULAR", "SPEC_ENV", "SPEC_FILE", "SPEC_MOUNT_DIR",
    "STORAGE_ENV", "VERSION",
]
