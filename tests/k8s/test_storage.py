"""Storage on Kubernetes: a TrainingJob's ``storage`` and ``kubernetes`` section (credentials from
Secrets, volumes, a pod-template override) reach the RayJob's head *and* worker pods; the rendered
RayJob is valid against KubeRay's schema; the operator creates it so; ``--dry-run`` prints it; bad
input is refused with a fix by ``orchestrator validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.backends.k8s import SHM_PATH, SHM_VOLUME, SPEC_ENV, SPEC_MOUNT_DIR, STORAGE_ENV
from orchestrator.backends.k8s.manifests import RuntimeConfig, kubernetes_issues, rayjob_manifest
from orchestrator.cli import main
from orchestrator.scheduler import NodePool
from orchestrator.spec import validate_spec_data
from orchestrator.spec.models import (
    KUBERNETES_RESERVED_ENV,
    KUBERNETES_RESERVED_MOUNTS,
    KUBERNETES_RESERVED_VOLUMES,
)
from orchestrator.testing import builders as b
from tests.k8s.conftest import wait_for

pytestmark = pytest.mark.k8s

JOB = {"metadata": {"name": "train", "namespace": "ml", "uid": "u-1"}}
#: What a user's shell may hold; it must never travel into a manifest.
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"

KUBERNETES = {
    "image": "registry.example.com/ml/orchestrator:1.2",
    "service_account": "trainer",
    "env_from_secrets": ["s3-creds"],
    "env": [{"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "AWS_SESSION_TOKEN", "secret_key_ref": {"name": "s3-session", "key": "token"}}],
    "volumes": [{"name": "datasets", "persistent_volume_claim": {"claim_name": "datasets-rwx", "read_only": True}},
                {"name": "gcs-key", "secret": {"secret_name": "gcs-key"}}],
    "volume_mounts": [{"name": "datasets", "mount_path": "/mnt/datasets", "read_only": True},
                      {"name": "gcs-key", "mount_path": "/var/secrets/gcs", "read_only": True, "sub_path": "key"}],
    "node_selector": {"cloud.google.com/gke-spot": "true", "cloud.google.com/gke-nodepool": "elsewhere"},
    "shm_size": "2Gi",
}


def storage_spec(**kw: Any) -> Any:
    data = b.spec_data("train", workers=2, gpus=1, accelerator="nvidia-a100-40gb",
                       tolerations=["cloud.google.com/gke-spot=true:NoSchedule"],
                       storage="s3://bucket/prefix", kubernetes=KUBERNETES, **kw)
    return validate_spec_data(data)


A100 = NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=2, accelerators_per_node=8,
                labels={"cloud.google.com/gke-nodepool": "a100"},
                taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])


def pods(rj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rj["spec"]["rayClusterSpec"]
    [workers] = cluster["workerGroupSpecs"]
    return {"head": cluster["headGroupSpec"]["template"]["spec"], "worker": workers["template"]["spec"]}


def assert_pods_carry_storage(rj: dict[str, Any]) -> None:
    """Both pods: image, service account, Secrets, env, volumes and mounts, /dev/shm, placement."""
    for role, pod in pods(rj).items():
        [container] = pod["containers"]
        assert container["image"] == "registry.example.com/ml/orchestrator:1.2", role
        assert pod["serviceAccountName"] == "trainer", role
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}], role
        env = {e["name"]: e for e in container["env"]}
        assert env[STORAGE_ENV] == {"name": STORAGE_ENV, "value": "s3://bucket/prefix"}, role
        assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "eu-west-1"}, role
        assert env["AWS_SESSION_TOKEN"] == {"name": "AWS_SESSION_TOKEN", "valueFrom": {
            "secretKeyRef": {"name": "s3-session", "key": "token"}}}, role
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["datasets"] == {"name": "datasets", "persistentVolumeClaim": {
            "claimName": "datasets-rwx", "readOnly": True}}, role
        assert volumes["gcs-key"] == {"name": "gcs-key", "secret": {"secretName": "gcs-key"}}, role
        assert volumes[SHM_VOLUME] == {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}, role
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/mnt/datasets"] == {"name": "datasets", "mountPath": "/mnt/datasets", "readOnly": True}, role
        assert mounts["/var/secrets/gcs"] == {"name": "gcs-key", "mountPath": "/var/secrets/gcs", "readOnly": True,
                                              "subPath": "key"}, role
        assert mounts[SHM_PATH] == {"name": SHM_VOLUME, "mountPath": SHM_PATH}, role
        assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                "effect": "NoSchedule"} in pod["tolerations"], role
        assert pod["securityContext"]["runAsNonRoot"] is True, role  # restricted, whatever the spec adds
    head, worker = pods(rj)["head"], pods(rj)["worker"]
    # no pod mounts a spec ConfigMap: the spec travels in the head's environment
    assert SPEC_MOUNT_DIR not in {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert "job-spec" not in {v["name"] for v in [*head["volumes"], *worker["volumes"]]}
    # the user's selector on both; on the workers the pool's own label wins (the scheduler chose the pool)
    assert head["nodeSelector"] == KUBERNETES["node_selector"]
    assert worker["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "cloud.google.com/gke-nodepool": "a100"}
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in worker["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_s3_storage_secrets_and_volumes_reach_the_head_and_the_worker_pods(rayjob_errors: Any) -> None:
    rj = rayjob_manifest(JOB, storage_spec(), A100, RuntimeConfig(service_account="operator-default"))
    assert rayjob_errors(rj) == []
    assert_pods_carry_storage(rj)  # the spec's service account wins over the operator's default


def test_a_spec_without_the_section_renders_as_before(rayjob_errors: Any) -> None:
    rj = rayjob_manifest(JOB, validate_spec_data(b.spec_data("train")), NodePool(name="cpu", nodes=2, cpus_per_node=8),
                         RuntimeConfig(image="img:1", service_account="sa"))
    assert rayjob_errors(rj) == []
    head, worker = pods(rj)["head"], pods(rj)["worker"]
    for pod in (head, worker):
        [container] = pod["containers"]
        assert container["image"] == "img:1" and pod["serviceAccountName"] == "sa"
        assert "envFrom" not in container and STORAGE_ENV not in {e["name"] for e in container["env"]}
        assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "volumes" not in head and "volumes" not in worker and "volumeMounts" not in worker["containers"][0]


def test_a_shared_path_storage_on_a_writable_claim_is_mounted_in_every_pod(rayjob_errors: Any) -> None:
    spec = validate_spec_data(b.spec_data("train", storage="/mnt/shared/jobs", kubernetes={
        "volumes": [{"name": "shared", "persistent_volume_claim": {"claim_name": "training-rwx"}}],
        "volume_mounts": [{"name": "shared", "mount_path": "/mnt/shared"}]}))
    assert kubernetes_issues(spec) == []
    rj = rayjob_manifest(JOB, spec, NodePool(name="cpu", nodes=2, cpus_per_node=8), RuntimeConfig())
    assert rayjob_errors(rj) == []
    for pod in pods(rj).values():
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "training-rwx"}} in pod["volumes"]
        [container] = pod["containers"]
        assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
        assert {"name": STORAGE_ENV, "value": "/mnt/shared/jobs"} in container["env"]


def test_a_shared_path_storage_without_the_section_is_refused_for_kubernetes_only() -> None:
    spec = validate_spec_data(b.spec_data("train", storage="/mnt/shared/jobs"))  # fine for local and ray
    [issue] = kubernetes_issues(spec)
    assert issue.field_path == "storage"
    assert issue.message.startswith("storage /mnt/shared/jobs is a shared path, and on Kubernetes no volume is mounted")
    assert issue.fix is not None and "persistent_volume_claim: {claim_name: CLAIM}" in issue.fix
    assert "mount_path: /mnt/shared" in issue.fix
    assert kubernetes_issues(validate_spec_data(b.spec_data("train", storage="gs://b/p"))) == []


def test_an_init_from_path_must_be_on_a_mounted_volume_a_job_id_or_uri_need_none() -> None:
    [issue] = kubernetes_issues(validate_spec_data(b.spec_data("train", init_from="/mnt/models/cnn-1a2b3c")))
    assert (issue.field_path, issue.message) == (
        "init_from", "init_from /mnt/models/cnn-1a2b3c is a path, and on Kubernetes no volume is mounted there")
    assert issue.fix is not None and "read_only is fine" in issue.fix
    for source in ("cnn-1a2b3c", "s3://bucket/prefix/cnn-1a2b3c"):
        assert kubernetes_issues(validate_spec_data(b.spec_data("train", init_from=source))) == []
    read_only = validate_spec_data(b.spec_data("train", init_from="/mnt/models/cnn-1a2b3c", kubernetes={
        "volumes": [{"name": "models", "persistent_volume_claim": {"claim_name": "models", "read_only": True}}],
        "volume_mounts": [{"name": "models", "mount_path": "/mnt/models", "read_only": True}]}))
    assert kubernetes_issues(read_only) == []


def test_the_names_the_operator_keeps_for_itself_are_the_ones_the_spec_refuses() -> None:
    assert SPEC_MOUNT_DIR in KUBERNETES_RESERVED_MOUNTS and SHM_PATH in KUBERNETES_RESERVED_MOUNTS
    assert set(KUBERNETES_RESERVED_VOLUMES) == {"job-spec", SHM_VOLUME}
    assert STORAGE_ENV in KUBERNETES_RESERVED_ENV
    rj = rayjob_manifest(JOB, storage_spec(), A100, RuntimeConfig())
    ours = {e["name"] for e in pods(rj)["head"]["containers"][0]["env"]} - {"AWS_REGION", "AWS_SESSION_TOKEN"}
    assert ours == set(KUBERNETES_RESERVED_ENV)


# -- the operator, against the API emulator -------------------------------------------------------


def test_the_operator_creates_a_rayjob_whose_pods_carry_storage_and_refuses_an_unmounted_path(
        api: Any, namespace: str, start_operator: Any, rayjob_errors: Any) -> None:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api.api_client)
    core.create_namespaced_config_map(namespace, b.pool_configmap("pools", namespace, [b.gpu_pool(
        "a100", nodes=2, per_node=8, labels={"cloud.google.com/gke-nodepool": "a100"},
        taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])]))
    start_operator(namespace)
    spec = b.spec_data("s3-job", workers=2, gpus=1, accelerator="nvidia-a100-40gb",
                       tolerations=["cloud.google.com/gke-spot=true:NoSchedule", "dedicated=ml:NoSchedule"],
                       storage="s3://bucket/prefix", kubernetes=KUBERNETES)
    api.create_training_job(b.training_job("s3-job", namespace, spec))
    # valid everywhere else, but no volume holds the path in a pod
    api.create_training_job(b.training_job("nfs-job", namespace, b.spec_data("nfs-job", storage="/mnt/nfs/jobs")))

    [rj] = wait_for(lambda: api.list_rayjobs(namespace), "the RayJob")
    assert rj["metadata"]["name"] == "s3-job" and rayjob_errors(rj) == []
    assert_pods_carry_storage(rj)
    [carried] = [e["value"] for e in pods(rj)["head"]["containers"][0]["env"] if e["name"] == SPEC_ENV]
    mounted = validate_spec_data(yaml.safe_load(carried))
    assert mounted.storage == "s3://bucket/prefix" and mounted.kubernetes is not None
    assert mounted.kubernetes.env_from_secrets == ["s3-creds"]

    def invalid() -> Any:
        st = (api.get_training_job(namespace, "nfs-job") or {}).get("status") or {}
        return st.get("phase") == "Invalid" and st
    st = wait_for(invalid, "nfs-job Invalid")
    assert st["message"].startswith("invalid spec: storage: storage /mnt/nfs/jobs is a shared path, and on "
                                    "Kubernetes no volume is mounted there")
    assert "(fix: mount a ReadWriteMany PersistentVolumeClaim there" in st["message"]
    assert [r["metadata"]["name"] for r in api.list_rayjobs(namespace)] == ["s3-job"]


# -- the CLI ---------------------------------------------------------------------------------------


def write(tmp_path: Path, data: dict[str, Any], name: str = "spec") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


def test_dry_run_shows_the_secrets_and_mounts_and_never_a_secret_value(cli: Any, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       rayjob_errors: Any) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)  # in the submitting shell, as is common
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEID")
    shared = {**KUBERNETES,
              "volumes": [*KUBERNETES["volumes"], {"name": "shared", "persistent_volume_claim": {
                  "claim_name": "training-rwx"}}],
              "volume_mounts": [*KUBERNETES["volume_mounts"], {"name": "shared", "mount_path": "/mnt/shared"}]}
    path = write(tmp_path, b.spec_data("dry-s3", workers=2, storage="s3://bucket/prefix", kubernetes=shared))
    code, out = cli("submit", path, "--dry-run")
    assert code == 0, out
    assert SECRET_VALUE not in out and "AKIAEXAMPLEID" not in out
    assert "s3-creds" in out and "s3-session" in out and "/mnt/shared" in out and "training-rwx" in out
    plan = yaml.safe_load(out)
    rj = plan["rayJob"]
    assert rayjob_errors(rj) == []
    for pod in pods(rj).values():
        [container] = pod["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
        assert {"name": STORAGE_ENV, "value": "s3://bucket/prefix"} in container["env"]
    assert plan["trainingJob"]["spec"]["kubernetes"]["envFromSecrets"] == ["s3-creds"]

    code, out = cli("submit", path, "--dry-run", "-o", "json")
    assert code == 0 and SECRET_VALUE not in out
    assert json.loads(out.strip().splitlines()[-1])["rayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"][
        "template"]["spec"]["serviceAccountName"] == "trainer"


def test_dry_run_and_submit_refuse_a_shared_path_no_volume_holds(cli: Any, api: Any, tmp_path: Path,
                                                                 namespace: str) -> None:
    path = write(tmp_path, b.spec_data("nfs", storage="/mnt/nfs/jobs"))
    for args in (("--dry-run",), ()):
        code, out = cli("submit", path, *args)
        assert code == 2, out
        assert "storage: storage /mnt/nfs/jobs is a shared path, and on Kubernetes no volume is mounted" in out
        assert "fix: mount a ReadWriteMany PersistentVolumeClaim there" in out
    assert api.get_training_job(namespace, "nfs") is None


# -- refusals: `orchestrator validate` exits 2 with the field and a fix ----------------------------

BASE = {"name": "k", "model": {"type": "cnn"}}
PVC = {"name": "shared", "persistent_volume_claim": {"claim_name": "training-rwx"}}


@pytest.mark.parametrize(("extra", "field", "words", "fix"), [
    ({"kubernetes": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": SECRET_VALUE}]}},
     "kubernetes.env[0].value", "AWS_SECRET_ACCESS_KEY looks like a credential and is written inline",
     "use secret_key_ref: {name: SECRET, key: KEY}"),
    ({"kubernetes": {"env": [{"name": "HF_TOKEN", "value": SECRET_VALUE}]}},
     "kubernetes.env[0].value", "HF_TOKEN looks like a credential", "kubernetes.env_from_secrets"),
    ({"kubernetes": {"env": [{"name": "DB_PASSWORD", "value": SECRET_VALUE}]}},
     "kubernetes.env[0].value", "DB_PASSWORD looks like a credential", "keep it in a Secret"),
    ({"kubernetes": {"env": [{"name": "X", "value": SECRET_VALUE, "secret_key_ref": {"name": "s", "key": "k"}}]}},
     "kubernetes.env[0].value", "give exactly one of value or secret_key_ref", "e.g. {name: AWS_REGION"),
    ({"kubernetes": {"env": [{"name": "ORCHESTRATOR_STORAGE", "value": "s3://b"}]}},
     "kubernetes.env[0].name", "ORCHESTRATOR_STORAGE is set by the operator", "set the job's `storage` field"),
    ({"kubernetes": {"volume_mounts": [{"name": "data", "mount_path": "/data"}]}},
     "kubernetes.volume_mounts[0].name", "volume data is not declared (volumes: none)",
     "add it to kubernetes.volumes, e.g. {name: data, persistent_volume_claim"),
    ({"storage": "/mnt/shared/jobs", "kubernetes": {"shm_size": "1Gi"}},
     "storage", "storage /mnt/shared/jobs is a shared path, and on Kubernetes no volume is mounted there",
     "mount a ReadWriteMany PersistentVolumeClaim there"),
    ({"storage": "/mnt/shared/jobs", "kubernetes": {"volumes": [PVC], "volume_mounts": [
        {"name": "shared", "mount_path": "/mnt/shared", "read_only": True}]}},
     "storage", "is on volume shared, which is read-only", "mount a writable PersistentVolumeClaim at /mnt/shared"),
    ({"storage": "/mnt/shared/jobs", "kubernetes": {"volumes": [{"name": "shared", "secret": {"secret_name": "s"}}],
                                                    "volume_mounts": [{"name": "shared", "mount_path": "/mnt"}]}},
     "storage", "not a PersistentVolumeClaim", "mount a writable PersistentVolumeClaim at /mnt"),
    ({"init_from": "/mnt/models/cnn-1a2b3c", "kubernetes": {"shm_size": "1Gi"}},
     "init_from", "init_from /mnt/models/cnn-1a2b3c is a path, and on Kubernetes no volume is mounted there",
     "mount the volume that holds it"),
    ({"kubernetes": {"env_from_secrets": ["S3_Creds"]}}, "kubernetes.env_from_secrets[0]", "should match pattern",
     "fix:"),
    ({"kubernetes": {"service_account": "Trainer!"}}, "kubernetes.service_account", "should match pattern", "fix:"),
    ({"kubernetes": {"volumes": [{"name": "Shared_Vol", "persistent_volume_claim": {"claim_name": "c"}}]}},
     "kubernetes.volumes[0].name", "should match pattern", "fix:"),
    ({"kubernetes": {"volumes": [{"name": "v", "persistent_volume_claim": {"claim_name": "c"},
                                  "secret": {"secret_name": "s"}}]}},
     "kubernetes.volumes[0].persistent_volume_claim", "give exactly one of persistent_volume_claim, secret or "
     "config_map", "e.g. {name: shared"),
    ({"kubernetes": {"volumes": [{"name": "job-spec", "config_map": {"name": "c"}}]}},
     "kubernetes.volumes[0].name", "volume name job-spec is used by the operator", "pick another name"),
    ({"kubernetes": {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/etc/orchestrator/x"}]}},
     "kubernetes.volume_mounts[0].mount_path", "/etc/orchestrator/x is used by the operator",
     "mount the volume elsewhere"),
    ({"kubernetes": {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/dev/shm"}]}},
     "kubernetes.volume_mounts[0].mount_path", "/dev/shm is used by the operator", "set kubernetes.shm_size"),
    ({"kubernetes": {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/a/../b"}]}},
     "kubernetes.volume_mounts[0].mount_path", "a mount path must be absolute without '.', '..'", "e.g. /mnt/shared"),
    ({"kubernetes": {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/x"},
                                                         {"name": "shared", "mount_path": "/x"}]}},
     "kubernetes.volume_mounts[1].mount_path", "two volumes mounted at /x", "give each mount its own path"),
    ({"kubernetes": {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/x",
                                                          "sub_path": "../up"}]}},
     "kubernetes.volume_mounts[0].sub_path", "sub_path is a relative path inside the volume", "e.g. team-a/jobs"),
    ({"kubernetes": {"shm_size": "2GB"}}, "kubernetes.shm_size", "not a Kubernetes memory quantity",
     "write a size such as 512Mi or 2Gi"),
    ({"kubernetes": {"node_selector": {"bad key!": "x"}}}, "kubernetes.node_selector",
     "'bad key!' is not a Kubernetes label key", "e.g. cloud.google.com/gke-spot"),
    ({"kubernetes": {"node_selector": {"team": "a b"}}}, "kubernetes.node_selector",
     "'a b' (for team) is not a label value", "up to 63 letters"),
    ({"kubernetes": {"tolerations": ["x"]}}, "kubernetes.tolerations", "unknown field", "Allowed here:"),
])
def test_validate_refuses_bad_kubernetes_input_with_a_fix(tmp_path: Path, extra: dict[str, Any], field: str,
                                                          words: str, fix: str) -> None:
    result = CliRunner().invoke(main, ["validate", write(tmp_path, {**BASE, **extra})])
    assert result.exit_code == 2, result.output
    assert f": {field}: " in result.output and words in result.output, result.output
    assert "fix: " in result.output and fix in result.output, result.output
    assert SECRET_VALUE not in result.output  # a refused credential is never echoed back
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kubernetes", [
    {"env": [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/gcs/key.json"}]},  # a path
    {"env": [{"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/token"}]},
    {"env": [{"name": "AWS_SESSION_TOKEN", "value": ""}]},  # empty: no credential in it
    {"volumes": [PVC], "volume_mounts": [{"name": "shared", "mount_path": "/mnt/shared", "sub_path": "team-a"}]},
    {"node_selector": {"cloud.google.com/gke-spot": "true", "pool": ""}, "shm_size": "512Mi"},
])
def test_validate_accepts_what_kubernetes_accepts(tmp_path: Path, kubernetes: dict[str, Any]) -> None:
    result = CliRunner().invoke(main, ["validate", write(tmp_path, {**BASE, "kubernetes": kubernetes})])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["kubernetes"] == validate_spec_data(
        {**BASE, "kubernetes": kubernetes}).model_dump(mode="json")["kubernetes"]


def test_a_shared_path_under_a_deeper_writable_mount_is_accepted() -> None:
    spec = validate_spec_data({**BASE, "storage": "/mnt/shared/team/jobs", "kubernetes": {
        "volumes": [PVC, {"name": "ro", "persistent_volume_claim": {"claim_name": "ro", "read_only": True}}],
        "volume_mounts": [{"name": "ro", "mount_path": "/mnt"}, {"name": "shared", "mount_path": "/mnt/shared"}]}})
    assert spec.kubernetes is not None
    mount = spec.kubernetes.mount_of("/mnt/shared/team/jobs")
    assert mount is not None and mount.name == "shared"  # the deepest mount holds it
    assert kubernetes_issues(spec) == []
