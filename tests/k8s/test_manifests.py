"""RayJob, token Secret, NetworkPolicy and TrainingJob manifests (pure), validated against KubeRay's
schema, with the Pod Security "restricted" profile checked on every pod template."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestrator.backends.k8s import KUEUE_QUEUE_LABEL, SPEC_ENV
from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.backends.k8s.manifests import (
    RuntimeConfig,
    cluster_paths,
    entrypoint_command,
    node_selector,
    rayjob_manifest,
    rayjob_name,
    tolerations,
    training_job_manifest,
    worker_resources,
)
from orchestrator.scheduler import NodePool
from orchestrator.spec import validate_spec_data
from orchestrator.testing import builders as b
from tests.k8s.podsecurity import restricted_violations

pytestmark = pytest.mark.k8s

JOB = {"metadata": {"name": "train", "namespace": "ml", "uid": "u-1"}}


def spec(**kw: Any) -> Any:
    return validate_spec_data(b.spec_data("train", **kw))


def workers_of(rj: dict[str, Any]) -> dict[str, Any]:
    [group] = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


def test_gpu_rayjob_requests_gpus_on_the_pool_with_its_labels_and_taints(rayjob_errors: Any) -> None:
    pool = NodePool(name="h100", accelerator="nvidia-h100-80gb", nodes=2, accelerators_per_node=8,
                    labels={"cloud.google.com/gke-nodepool": "h100"},
                    taints=[{"key": "team", "value": "a", "effect": "NoSchedule"}, {"key": "spot", "effect": "NoExecute"}])
    rj = rayjob_manifest(JOB, spec(workers=3, gpus=2, cpus=4.5, accelerator="nvidia-h100-80gb", memory="16Gi"),
                         pool, RuntimeConfig(ttl_seconds_after_finished=60))
    assert rayjob_errors(rj) == []
    assert restricted_violations(rj) == []
    group = workers_of(rj)
    assert group["replicas"] == 3 and "numOfHosts" not in group
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "4500m", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "h100"}  # the pool's labels win
    assert pod["tolerations"] == [
        {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert rj["spec"]["ttlSecondsAfterFinished"] == 60 and rj["spec"]["backoffLimit"] == 0
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "volumes" not in head  # the spec travels in the RayJob, not in a mounted ConfigMap
    assert "nodeSelector" not in head


def test_gke_labels_are_used_when_a_gpu_pool_names_none() -> None:
    assert node_selector(NodePool(name="t4", accelerator="nvidia-t4", nodes=1, accelerators_per_node=4)) == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert node_selector(NodePool(name="l4", accelerator="nvidia-l4", nodes=1, accelerators_per_node=1)) == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}


def test_multi_host_tpu_rayjob_is_one_slice_of_hosts(rayjob_errors: Any) -> None:
    pool = NodePool(name="v4", accelerator="tpu-v4-podslice", nodes=8, accelerators_per_node=4, topology="2x2x2",
                    labels={"cloud.google.com/gke-nodepool": "v4"})
    rj = rayjob_manifest(JOB, spec(workers=2, gpus=4, cpus=2, accelerator="tpu-v4-podslice", topology="2x2x2"),
                         pool, RuntimeConfig())
    assert rayjob_errors(rj) == []
    assert restricted_violations(rj) == []
    group = workers_of(rj)
    assert (group["replicas"], group["numOfHosts"]) == (1, 2)
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice",
                                   "cloud.google.com/gke-tpu-topology": "2x2x2",
                                   "cloud.google.com/gke-nodepool": "v4"}
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["google.com/tpu"] == "4" and limits["cpu"] == "2"  # one worker per host, all its chips
    assert limits["memory"] == "4Gi"
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_single_host_tpu_slice_has_one_host() -> None:
    pool = NodePool(name="v5e", accelerator="tpu-v5-lite-podslice", nodes=2, accelerators_per_node=8,
                    topology="2x4")
    group = workers_of(rayjob_manifest(JOB, spec(workers=1, gpus=8, accelerator="tpu-v5-lite-podslice",
                                                 topology="2x4"), pool, RuntimeConfig()))
    assert (group["replicas"], group["numOfHosts"]) == (1, 1)
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"] == "8"


def test_cpu_job_on_a_cpu_pool_has_no_accelerator_and_default_memory(rayjob_errors: Any) -> None:
    pool = NodePool(name="cpu", nodes=4, cpus_per_node=16)
    rj = rayjob_manifest(JOB, spec(workers=2, cpus=2), pool, RuntimeConfig(worker_memory="6Gi"))
    assert rayjob_errors(rj) == []
    assert restricted_violations(rj) == []
    pod = workers_of(rj)["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_memory_that_kubernetes_would_misread_is_written_in_bytes() -> None:
    pool = NodePool(name="cpu", nodes=1, cpus_per_node=8)
    assert worker_resources(spec(memory="2GB"), pool, RuntimeConfig())["memory"] == str(2 * 1000**3)
    assert worker_resources(spec(memory="512Mi"), pool, RuntimeConfig())["memory"] == "512Mi"


def test_fractional_gpus_round_up_per_pod() -> None:
    pool = NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=1, accelerators_per_node=8)
    assert worker_resources(spec(gpus=0.5, accelerator="nvidia-a100-40gb"), pool, RuntimeConfig())[
        "nvidia.com/gpu"] == "1"


def test_kueue_queue_labels_the_rayjob_and_suspends_it(rayjob_errors: Any) -> None:
    pool = NodePool(name="cpu", nodes=4, cpus_per_node=16)
    rj = rayjob_manifest(JOB, spec(), pool, RuntimeConfig(), kueue_queue="team-a")
    assert rj["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a" and rj["spec"]["suspend"] is True
    assert rayjob_errors(rj) == []


def test_rayjob_names_stay_short_and_stable() -> None:
    assert rayjob_name("short", "u") == "short"
    long = "a-very-long-training-job-name-that-goes-on-and-on"
    name = rayjob_name(long, "u-1")
    assert len(name) <= 40 and name == rayjob_name(long, "u-1") != rayjob_name(long, "u-2")


def test_the_rayjob_carries_the_spec_with_paths_in_the_image() -> None:
    data = b.spec_data("train", entrypoint="examples/custom_train.py:train", model=None,
                       checkpoint={"dir": "/ckpt/train"})
    s = validate_spec_data(data)
    config = RuntimeConfig(workdir="/srv")
    rj = rayjob_manifest(JOB, s, NodePool(name="cpu", nodes=1, cpus_per_node=8), config)
    assert rj["spec"]["entrypoint"] == entrypoint_command(config)
    assert rj["spec"]["entrypoint"].startswith("python -m orchestrator.backends.k8s.driver submit --backend local")
    [head] = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    [carried] = [e["value"] for e in head["env"] if e["name"] == SPEC_ENV]
    [worker] = workers_of(rj)["template"]["spec"]["containers"]
    assert SPEC_ENV not in {e["name"] for e in worker["env"]}  # only the driver reads it
    mounted = yaml.safe_load(carried)
    assert mounted["entrypoint"] == "/srv/examples/custom_train.py:train"
    assert mounted["checkpoint"]["dir"] == "/ckpt/train"
    assert validate_spec_data(mounted).name == "train"
    assert cluster_paths({"data": {"source": "d/x.npz"}}, "/app") == {"data": {"source": "/app/d/x.npz"}}


def test_training_job_manifest_writes_every_field_and_suspend() -> None:
    s = spec(failure={"hang_timeout_s": None})
    tj = training_job_manifest(s, "ml", suspend=True)
    assert tj["metadata"] == {"name": "train", "namespace": "ml"}
    assert tj["spec"]["suspend"] is True
    assert tj["spec"]["failure"]["hangTimeoutS"] is None  # null means "never", not "default"
    assert validate_spec_data(job_spec_from_training_job(tj)) == s


def test_tolerations_of_a_cpu_pool_have_no_device_key() -> None:
    assert tolerations(NodePool(name="c", nodes=1, cpus_per_node=2)) == []


def test_the_driver_pod_names_the_trainingjob_as_owner_of_its_checkpoint_dir() -> None:
    """Each run of a TrainingJob (a retried or unsuspended RayJob) is a new local job in a new pod:
    the TrainingJob, the same across runs, owns checkpoint.dir so a later run resumes from it."""
    pool = NodePool(name="t4", accelerator="nvidia-t4", nodes=1, accelerators_per_node=4)
    rj = rayjob_manifest(JOB, spec(), pool, RuntimeConfig())
    [head] = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["ORCHESTRATOR_CHECKPOINT_OWNER"] == "ml-train-u-1"
    [worker] = workers_of(rj)["template"]["spec"]["containers"]
    assert "ORCHESTRATOR_CHECKPOINT_OWNER" not in {e["name"] for e in worker["env"]}
