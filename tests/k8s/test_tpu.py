"""TPU shapes per generation (v4, v5e, v5p, v6e): the slices a job may ask for, the hosts and GKE
labels they become, the shapes `validate` refuses with the numbers that fit, and the pool model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.backends.k8s.manifests import RuntimeConfig, rayjob_manifest
from orchestrator.backends.k8s.pools import assumed_pool, cluster_from_configmaps
from orchestrator.errors import SpecError
from orchestrator.scheduler import ClusterSpec, NodePool
from orchestrator.scheduler.jobs import GangRequest, request_from_spec
from orchestrator.scheduler.placement import never_fits
from orchestrator.spec import validate_spec_data
from orchestrator.spec.tpu import GENERATIONS, generation, host_shapes, topologies
from orchestrator.testing import builders as b
from tests.conftest import REPO

pytestmark = pytest.mark.k8s

JOB = {"metadata": {"name": "train", "namespace": "ml", "uid": "u-1"}}
ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY = "cloud.google.com/gke-tpu-topology"


def tpu_spec(accelerator: str, topology: str | None, workers: int, chips: float) -> Any:
    return validate_spec_data(b.spec_data("train", workers=workers, gpus=chips, accelerator=accelerator,
                                          topology=topology))


def worker_group(spec: Any, pool: NodePool) -> dict[str, Any]:
    [group] = rayjob_manifest(JOB, spec, pool, RuntimeConfig())["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


# (accelerator, topology, workers = hosts, chips per worker = chips per host)
VALID = [
    ("tpu-v4-podslice", "2x2x1", 1, 4),
    ("tpu-v4-podslice", "2x2x2", 2, 4),
    ("tpu-v4-podslice", "4x4x4", 16, 4),
    ("tpu-v5-lite-podslice", "1x1", 1, 1),
    ("tpu-v5-lite-podslice", "2x2", 1, 4),
    ("tpu-v5-lite-podslice", "2x4", 1, 8),   # one 8-chip VM (ct5lp-hightpu-8t)
    ("tpu-v5-lite-podslice", "2x4", 2, 4),   # two 4-chip VMs (GKE only)
    ("tpu-v5-lite-podslice", "4x4", 4, 4),
    ("tpu-v5p-slice", "2x2x1", 1, 4),
    ("tpu-v5p-slice", "2x2x4", 4, 4),
    ("tpu-v5p-slice", "4x4x4", 16, 4),
    ("tpu-v6e-slice", "2x4", 1, 8),
    ("tpu-v6e-slice", "4x8", 8, 4),
    ("tpu-v6e-slice", "16x16", 64, 4),
]


@pytest.mark.parametrize(("accelerator", "topology", "workers", "chips"), VALID)
def test_a_valid_slice_is_one_pod_per_host_with_all_its_chips_and_gke_labels(
        accelerator: str, topology: str, workers: int, chips: int, rayjob_errors: Any) -> None:
    spec = tpu_spec(accelerator, topology, workers, chips)
    pool = assumed_pool(spec)
    assert (pool.hosts_per_slice, pool.accelerators_per_node, pool.topology) == (workers, chips, topology)
    group = worker_group(spec, pool)
    assert (group["replicas"], group["numOfHosts"]) == (1, workers)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == str(chips)
    assert pod["containers"][0]["resources"]["requests"]["google.com/tpu"] == str(chips)
    assert pod["nodeSelector"] == {ACCELERATOR: accelerator, TOPOLOGY: topology}
    assert rayjob_errors(rayjob_manifest(JOB, spec, pool, RuntimeConfig())) == []


@pytest.mark.parametrize(("accelerator", "chips", "topology"), [
    ("tpu-v4-podslice", 4, "2x2x1"), ("tpu-v5p-slice", 4, "2x2x1"), ("tpu-v5-lite-podslice", 1, "1x1"),
    ("tpu-v5-lite-podslice", 8, "2x4"), ("tpu-v6e-slice", 4, "2x2"),
])
def test_a_single_host_job_without_a_topology_gets_the_hosts_topology_label(
        accelerator: str, chips: int, topology: str) -> None:
    # GKE labels every TPU node with its topology, and the Ray TPU webhook refuses a TPU worker
    # group without the topology selector
    spec = tpu_spec(accelerator, None, 1, chips)
    group = worker_group(spec, assumed_pool(spec))
    assert group["template"]["spec"]["nodeSelector"] == {ACCELERATOR: accelerator, TOPOLOGY: topology}
    assert group["numOfHosts"] == 1


def test_the_v5p_2x2x4_rayjob_has_4_hosts_of_4_chips_and_validates(rayjob_errors: Any) -> None:
    cluster = overlay_cluster()
    pool = cluster.pool_by_name["v5p-2x2x4"]
    spec = validate_spec_data(job_spec_from_training_job(yaml.safe_load((REPO / "deploy/k8s/examples/trainingjob-tpu.yaml").read_text())))
    assert never_fits(pool, request_from_spec(spec)) is None
    rj = rayjob_manifest(JOB, spec, pool, RuntimeConfig())
    assert rayjob_errors(rj) == []
    [group] = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"], group["numOfHosts"]) == (1, 1, 1, 4)
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["google.com/tpu"] == "4"
    assert container["resources"]["requests"]["google.com/tpu"] == "4"
    assert group["template"]["spec"]["nodeSelector"] == {ACCELERATOR: "tpu-v5p-slice", TOPOLOGY: "2x2x4"}


def spec_file(tmp_path: Path, workers: int, chips: float, accelerator: str = "tpu-v5p-slice",
              topology: str | None = "2x2x4") -> str:
    path = tmp_path / "tpu.yaml"
    path.write_text(yaml.safe_dump(b.spec_data("tpu", workers=workers, gpus=chips, accelerator=accelerator,
                                               topology=topology)))
    return str(path)


def run(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from orchestrator.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# the four shapes of issue 20 point 6, and more: (workers, chips, accelerator, topology, field, words, fix)
REFUSED = [
    (8, 2, "tpu-v5p-slice", "2x2x4", "resources.workers", "v5p 2x2x4 is 16 chips on 4 hosts of 4: 8 workers x 2 chips",
     "set resources.workers: 4 and resources.gpus_per_worker: 4"),
    (1, 16, "tpu-v5p-slice", "2x2x4", "resources.workers", "v5p 2x2x4 is 16 chips on 4 hosts of 4: 1 worker x 16 chips",
     "set resources.workers: 4 and resources.gpus_per_worker: 4"),
    (3, 4, "tpu-v5p-slice", "2x2x4", "resources.workers", "v5p 2x2x4 is 16 chips on 4 hosts of 4: 3 workers x 4 chips",
     "set resources.workers: 4 and resources.gpus_per_worker: 4"),
    (4, 4, "tpu-v5p-slice", "4x4", "resources.topology", "v5p slices are 3-D (AxBxC, e.g. 2x2x1 or 2x2x4), not 4x4",
     "set resources.topology: 2x2x4 (16 chips)"),
    (4, 4, "tpu-v5-lite-podslice", "2x2x4", "resources.topology", "v5e slices are 2-D", "set resources.topology: 4x4"),
    (4, 4, "tpu-v6e-slice", "4x2", "resources.topology", "4x2 is not a v6e slice", "set resources.topology: 2x4"),
    (4, 4, "tpu-v4-podslice", "2x2x3", "resources.topology", "2x2x3 is not a v4 slice", "use a v4 topology: 2x2x1"),
    (1, 16, "tpu-v5p-slice", None, "resources.gpus_per_worker",
     "1 worker x 16 chips: a v5p host has 4 chips, and 16 chips is a 2x2x4 slice of 4 hosts of 4",
     "set resources.workers: 4, resources.gpus_per_worker: 4 and resources.topology: 2x2x4"),
    (1, 2, "tpu-v6e-slice", None, "resources.gpus_per_worker", "a v6e worker takes a whole host: 1 or 4 or 8 chips",
     "set resources.gpus_per_worker: 4"),
    (4, 4, "tpu-v5p-slice", None, "resources.topology", "4 workers on TPUs need the slice topology",
     "set resources.topology: 2x2x4 (16 chips on 4 hosts of 4)"),
    (8, 4, "tpu-v5p-slice", "2x2x4", "resources.workers", "is 2 such slices, and a job takes one slice (multi-slice",
     "set resources.workers: 4 and resources.gpus_per_worker: 4 (one slice), or set resources.topology: 2x4x4, "
     "resources.workers: 8 and resources.gpus_per_worker: 4"),
    (2, 8, "tpu-v5-lite-podslice", "4x4", "resources.workers", "v5e 4x4 is 16 chips on 4 hosts of 4",
     "set resources.workers: 4 and resources.gpus_per_worker: 4"),
    (4, 2.5, "tpu-v5p-slice", "2x2x4", "resources.gpus_per_worker", "2.5 TPU chips: a worker takes whole chips",
     "set resources.gpus_per_worker: 4"),
    (1, 4, "tpu-v5e", None, "resources.accelerator", "tpu-v5e is not GKE's name for TPU v5e",
     "use tpu-v5-lite-podslice"),
]


@pytest.mark.parametrize(("workers", "chips", "accelerator", "topology", "field", "words", "fix"), REFUSED)
def test_validate_refuses_an_impossible_shape_with_the_numbers_that_fit(
        tmp_path: Path, workers: int, chips: float, accelerator: str, topology: str | None, field: str,
        words: str, fix: str) -> None:
    code, out = run("validate", spec_file(tmp_path, workers, chips, accelerator, topology))
    assert code == 2, out
    assert f": {field}: " in out and words in out, out
    assert f"fix: {fix}" in out, out
    assert "Traceback" not in out and "internal error" not in out


def test_a_dry_run_of_3_workers_on_2x2x4_is_a_spec_error_not_an_internal_error(cli: Any, tmp_path: Path) -> None:
    code, out = cli("submit", spec_file(tmp_path, 3, 4), "--dry-run")
    assert code == 2, out
    assert "resources.workers: v5p 2x2x4 is 16 chips on 4 hosts of 4" in out
    assert "internal error" not in out


def test_a_list_of_tpu_types_is_checked_type_by_type() -> None:
    data = b.spec_data("t", workers=1, gpus=8)  # one v5e host of 8, but not a v5p host
    data["resources"]["accelerators"] = ["tpu-v5-lite-podslice", "tpu-v5p-slice"]
    with pytest.raises(SpecError) as caught:
        validate_spec_data(data)
    [issue] = caught.value.issues
    assert issue.field_path == "resources.gpus_per_worker" and issue.message == (
        "1 worker x 8 chips: a v5p host has 4 chips, and 8 chips is a 2x2x2 slice of 2 hosts of 4")
    assert issue.fix == ("set resources.workers: 2, resources.gpus_per_worker: 4 and resources.topology: 2x2x2, "
                         "or drop tpu-v5p-slice from resources.accelerators")


def overlay_cluster() -> ClusterSpec:
    cm = yaml.safe_load((REPO / "deploy/k8s/overlays/tpu/pools-tpu.yaml").read_text())
    cluster = cluster_from_configmaps([cm])
    assert cluster is not None
    return cluster


def test_the_tpu_overlay_pools_match_the_table() -> None:
    pools = [p for p in overlay_cluster().pools if p.is_tpu]
    assert {p.name for p in pools} == {"v5p-2x2x4", "v5e-2x4"}
    for pool in pools:
        gen = generation(pool.accelerator)
        assert gen is not None and pool.topology in topologies(gen)
        assert (pool.hosts_per_slice, pool.accelerators_per_node) in host_shapes(gen, pool.topology)
        assert pool.nodes % pool.hosts_per_slice == 0
    by_name = {p.name: (p.hosts_per_slice, p.accelerators_per_node, p.nodes // p.hosts_per_slice) for p in pools}
    assert by_name == {"v5p-2x2x4": (4, 4, 2), "v5e-2x4": (1, 8, 4)}


@pytest.mark.parametrize(("pool", "field", "words", "fix"), [
    (b.tpu_pool("v5p", topology="2x2x4", nodes=8, per_node=2), "accelerators_per_node",
     "v5p 2x2x4 is 16 chips on 4 hosts of 4, not hosts of 2", "set accelerators_per_node: 4"),
    (b.tpu_pool("v5p", topology="4x4", nodes=4, per_node=4), "topology", "v5p slices are 3-D", "set topology: 2x2x4"),
    (b.tpu_pool("v6e", topology="4x4", nodes=2, per_node=8, accelerator="tpu-v6e-slice"), "accelerators_per_node",
     "v6e 4x4 is 16 chips on 4 hosts of 4, not hosts of 8", "set accelerators_per_node: 4"),
    ({"name": "v5e", "accelerator": "tpu-v5-lite-podslice", "nodes": 2, "accelerators_per_node": 2},
     "accelerators_per_node", "a v5e node has 1 or 4 or 8 chips, not 2", "set accelerators_per_node to 1 or 4 or 8"),
])
def test_the_pool_model_refuses_hosts_a_generation_does_not_have(
        pool: dict[str, Any], field: str, words: str, fix: str) -> None:
    with pytest.raises(SpecError) as caught:
        cluster_from_configmaps([b.pool_configmap("pools", "ops", [pool])])
    [issue] = caught.value.issues
    assert issue.field_path == f"pools[0].{field}" and words in issue.message and fix in (issue.fix or "")


def test_a_slice_pool_takes_one_worker_per_host_with_all_its_chips() -> None:
    one_vm = NodePool(name="v5e-8", accelerator="tpu-v5-lite-podslice", topology="2x4", nodes=2,
                      accelerators_per_node=8)
    two_vms = NodePool(name="v5e-4", accelerator="tpu-v5-lite-podslice", topology="2x4", nodes=2,
                       accelerators_per_node=4)
    one = GangRequest(workers=1, accelerators_per_worker=8, accelerators=("tpu-v5-lite-podslice",), topology="2x4")
    two = GangRequest(workers=2, accelerators_per_worker=4, accelerators=("tpu-v5-lite-podslice",), topology="2x4")
    assert never_fits(one_vm, one) is None and never_fits(two_vms, two) is None
    assert never_fits(one_vm, two) == (
        "needs 8 tpu-v5-lite-podslice (2x4 slice) on 2 workers; pool v5e-8 has 2x4 slices of 8 chips on 1 hosts "
        "(one worker per host, with its 8 chips)")
    assert "(one worker per host, with its 4 chips)" in (never_fits(two_vms, one) or "")


def test_every_generation_has_a_gke_label_and_hosts_that_tile_its_slices() -> None:
    assert [(g.name, g.accelerator, g.dims, g.chips_per_host) for g in GENERATIONS] == [
        ("v4", "tpu-v4-podslice", 3, 4), ("v5e", "tpu-v5-lite-podslice", 2, 4),
        ("v5p", "tpu-v5p-slice", 3, 4), ("v6e", "tpu-v6e-slice", 2, 4)]
    for gen in GENERATIONS:
        for topology in topologies(gen):
            for hosts, per_host in host_shapes(gen, topology):
                chips = 1
                for size in topology.split("x"):
                    chips *= int(size)
                assert hosts * per_host == chips and len(topology.split("x")) == gen.dims
