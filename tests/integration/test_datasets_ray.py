"""Streaming data sets of files through real Ray Train workers (Ray Data reads), locally and from S3.

One job trains jobs/data-images.yaml's CNN on the digits written as PNGs, with a failure injected mid
epoch: it reaches the built-in digits' accuracy, every epoch's shards are disjoint across ranks, and
the resumed epoch continues exactly where its checkpoint left it. A second job streams Parquet shards
from the S3 API server and records the same split ``data inspect`` computes from a local copy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.runtime.datagen import generate
from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

FAIL_AT = 25  # global step: inside epoch 2 (19 steps per epoch), after the checkpoint at step 20


@pytest.fixture(scope="module")
def images_job(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("images")
    generate("images", tmp / "digits-png")
    spec = yaml.safe_load((REPO / "jobs" / "data-images.yaml").read_text())
    spec["data"]["source"] = str(tmp / "digits-png")
    spec["checkpoint"] = {"every_steps": 10, "every_epochs": 1}
    spec["failure"] = {"max_failures": 2}
    path = tmp / "images.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = cli_env(tmp / "home", ray_address)
    proc = run_cli(["submit", str(path), "-o", "json", "-q", "--inject-failure",
                    f"kind=exception,rank=1,at_step={FAIL_AT}"], env, check=True)
    return {"result": last_json(proc.stdout), "spec": spec, "tmp": tmp}


def test_image_folder_cnn_reaches_the_digits_accuracy(images_job: dict[str, Any]) -> None:
    result = images_job["result"]
    assert result["state"] == "succeeded", result
    assert result["metrics"]["test_accuracy"] >= 0.95
    data = result["data"]
    assert data["streaming"] is True and data["format"] == "images" and data["files"] == 1797
    assert data["split"]["rows"] == {"train": data["train"], "validation": data["validation"], "test": data["test"]}
    assert data["train"] + data["validation"] + data["test"] == 1797
    assert result["peak_worker_rss_bytes"] > 0


def test_shards_disjoint_every_epoch_and_the_resumed_epoch_is_exact(images_job: dict[str, Any], ray_address: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from orchestrator.execution.ray_local import use_local_auth_token
    from orchestrator.runtime.datasets import plan_stream, sample_ids, train_batches
    from orchestrator.spec.models import DataSpec

    monkeypatch.setenv("RAY_AUTH_MODE", "")  # so that the test's end restores what was there before
    monkeypatch.delenv("RAY_AUTH_MODE")
    use_local_auth_token()  # `ray start` turned on token auth; an explicit address needs the token

    result = images_job["result"]
    shards = json.loads((Path(result["job_dir"]) / "shards.json").read_text())
    spec = DataSpec(**images_job["spec"]["data"])
    ray.init(address=ray_address, log_to_driver=False)
    try:
        plan = plan_stream(spec, 0)
        for epoch in range(1, 11):
            a, b = shards["0"][str(epoch)], shards["1"][str(epoch)]
            assert set(a).isdisjoint(b) and len(set(a)) == len(a)
            if epoch != 2:
                assert len(a) == len(b) == plan.epoch_rows(epoch, 2)
        rows = plan.epoch_rows(2, 2)
        for rank in (0, 1):  # the resumed epoch: the stream's tail from the checkpoint's step, nothing twice
            stream = np.concatenate([sample_ids(bt["key"].view(np.uint64)) for bt in train_batches(plan, 2, rank, 2, 32)])
            got = shards[str(rank)]["2"]
            first = (rows - len(got)) / 32
            assert first == int(first) and 0 < first < math.ceil(rows / 32)
            assert got == stream[int(first) * 32:].tolist()
    finally:
        ray.shutdown()


def test_parquet_streams_from_s3_with_the_same_split_as_a_local_copy(s3: Any, ray_address: str,
                                                                      tmp_path: Path) -> None:
    bucket = s3.create_bucket()
    env = cli_env(tmp_path / "home", ray_address)
    env.update(s3.env)
    run_cli(["data", "generate", "parquet", f"{bucket}/digits", "--shards", "4"], env, check=True)
    generate("parquet", tmp_path / "local", shards=4)
    spec = yaml.safe_load((REPO / "jobs" / "data-s3.yaml").read_text())
    spec["data"]["source"] = f"{bucket}/digits"
    spec["training"]["epochs"] = 3
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = last_json(run_cli(["submit", str(path), "-o", "json", "-q"], env, check=True).stdout)
    assert result["state"] == "succeeded", result
    assert result["metrics"]["val_accuracy"] >= 0.85
    local = last_json(run_cli(["data", "inspect", str(tmp_path / "local"), "-o", "json"], env, check=True).stdout)
    assert result["data"]["split"]["rows"] == local["split"]["rows"]
    assert result["data"]["files"] == local["files"] == 4
    shards = json.loads((Path(result["job_dir"]) / "shards.json").read_text())
    assert set(shards["0"]["1"]).isdisjoint(shards["1"]["1"]) and len(shards["0"]["1"]) == len(shards["1"]["1"]) > 0


@pytest.mark.smoke
def test_tensorflow_streams_npz_shards_each_rank_its_own_files(ray_address: str, tmp_path: Path) -> None:
    """`make test`'s streaming job: MWMS workers each stream their files of an npz shard set (Ray Data)."""
    generate("npz", tmp_path / "shards", shards=4)
    spec = yaml.safe_load((REPO / "jobs" / "data-npz-shards.yaml").read_text())
    spec.update(framework="tensorflow", model={"type": "sequential", "layers": [
        "Flatten(input_shape=(1, 8, 8))", "Dense(64, activation='relu')", "Dense(10, activation='softmax')"]})
    spec["data"]["source"] = str(tmp_path / "shards" / "*.npz")
    spec["training"].update(epochs=3, learning_rate=0.01)
    path = tmp_path / "tf-stream.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = cli_env(tmp_path / "home", ray_address)
    result = last_json(run_cli(["submit", str(path), "-o", "json", "-q"], env, check=True).stdout)
    assert result["state"] == "succeeded", result
    assert result["sync_backend"].startswith("mwms-")
    data = result["data"]
    assert data["streaming"] is True and data["format"] == "npz" and data["files"] == 4
    assert result["metrics"]["val_accuracy"] >= 0.85 and result["metrics"]["test_accuracy"] >= 0.85, result["metrics"]
    local = last_json(run_cli(["data", "inspect", str(tmp_path / "shards"), "-o", "json", "--workers", "2"], env,
                              check=True).stdout)
    assert data["split"]["rows"] == local["split"]["rows"]  # the split the job used is the one inspect shows
    shards = json.loads((Path(result["job_dir"]) / "shards.json").read_text())
    rows = local["rows_per_worker_epoch"]
    for epoch in ("1", "2", "3"):
        a, b = shards["0"][epoch], shards["1"][epoch]
        assert len(a) == len(b) == rows > 0 and set(a).isdisjoint(b)
    assert shards["0"]["1"] != shards["0"]["2"]  # shuffled anew each epoch
