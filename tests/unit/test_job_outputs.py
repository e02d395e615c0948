"""A job's outputs in storage without Ray: the driver's copies, reading them back, adopting a job,
init_from's checks, the default storage and the spec's storage field."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import UsageError
from orchestrator.execution.outputs import JobOutputs, OutputSync, model_files, resolve_init_from
from orchestrator.spec import JobSpec, with_default_storage
from orchestrator.storage import Storage
from orchestrator.store import JobRecord, JobState, JobStore

SPEC = {"name": "out", "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]}}


@pytest.fixture(params=["path", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "path":
        return str(tmp_path / "shared")
    return str(request.getfixturevalue("s3_bucket")) + "/jobs"


def record(tmp_path: Path, storage: str | None, job_id: str = "out-abc123", **spec: Any) -> JobRecord:
    data = {**SPEC, **spec, **({"storage": storage} if storage else {})}
    return JobRecord(id=job_id, name="out", backend="local", state=JobState.SUCCEEDED,
                     spec=JobSpec.model_validate(data).model_dump(mode="json"), job_dir=tmp_path / "job",
                     created_at=time.time(), ended_at=time.time(), message=None,
                     result={"metrics": {"val_accuracy": 0.97}, "model_checksum": "abc"})


def write_model(folder: Path, **meta: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "model.torchscript.pt").write_bytes(b"script")
    spec = JobSpec.model_validate(SPEC)
    (folder / "model.json").write_text(json.dumps({
        "framework": "torch", "model": spec.model.model_dump(mode="json") if spec.model else {},
        "sample_shape": [1, 8, 8], "num_classes": 10, "files": {"torchscript": "model.torchscript.pt"}, **meta}))


def test_the_driver_copies_spec_record_result_log_and_events(root: str, tmp_path: Path) -> None:
    rec = record(tmp_path, root)
    storage = Storage.open(root).child(rec.id)
    (rec.job_dir / "tensorboard").mkdir(parents=True)
    events = rec.job_dir / "tensorboard" / "events.out.tfevents.1"
    events.write_bytes(b"one")
    (rec.job_dir / "driver.log").write_text("line 1\n")
    sync = OutputSync(storage, rec.job_dir, interval_s=3600)
    sync.write_spec(rec)
    sync.sync(rec, force=True)
    assert storage.read_bytes("tensorboard/events.out.tfevents.1") == b"one"
    events.write_bytes(b"one-two")  # TensorBoard appends: the grown file is sent again
    (rec.job_dir / "driver.log").write_text("line 1\nline 2\n")
    sync.sync(rec)  # within the interval: nothing sent
    assert storage.read_bytes("tensorboard/events.out.tfevents.1") == b"one"
    assert sync.finish(rec) is None
    assert storage.read_bytes("tensorboard/events.out.tfevents.1") == b"one-two"
    assert json.loads(storage.read_text("result.json"))["model_checksum"] == "abc"
    snapshot = json.loads(storage.read_text("job.json"))
    assert snapshot["state"] == "succeeded" and snapshot["spec"]["storage"] == Storage.open(root).uri
    outputs = JobOutputs.at(storage.uri)
    assert outputs.job_id == rec.id
    assert outputs.log_lines() == ["line 1", "line 2"]
    assert outputs.spec_data()["name"] == "out"


def test_model_files_and_a_local_copy_of_the_model(root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_CACHE_DIR", str(tmp_path / "cache"))
    rec = record(tmp_path, root)
    storage = Storage.open(root).child(rec.id)
    write_model(tmp_path / "export")
    storage.put_dir(tmp_path / "export", "model")
    OutputSync(storage, rec.job_dir).write_spec(rec)
    found = model_files(storage)
    assert found["model_path"] == f"{storage.uri}/model/model.pt"
    assert found["torchscript_path"] == f"{storage.uri}/model/model.torchscript.pt"
    assert found["model_dir"] == f"{storage.uri}/model"
    local = JobOutputs.at(storage.uri).model_dir()
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "model.pt").read_bytes() == b"weights"
    (local / "model.pt").write_bytes(b"tampered!")  # a cache that differs from storage is refreshed
    assert (JobOutputs.at(storage.uri).model_dir() / "model.pt").read_bytes() == b"weights"


def test_a_location_without_a_job_is_refused(root: str) -> None:
    with pytest.raises(UsageError, match="holds no job") as err:
        JobOutputs.at(f"{root}/nothing-here")
    assert "fix" in err.value.render()


def test_adopting_a_job_from_storage_into_a_fresh_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.backends.local import LocalBackend
    from orchestrator.settings import Settings

    shared = tmp_path / "shared"
    rec = record(tmp_path, str(shared))
    storage = Storage.open(str(shared)).child(rec.id)
    running = JobRecord(**{**rec.__dict__, "state": JobState.RUNNING})
    OutputSync(storage, rec.job_dir).write_spec(rec)
    OutputSync(storage, rec.job_dir).sync(running, force=True)
    backend = LocalBackend(Settings(home=tmp_path / "fresh"))
    adopted = backend.adopt(JobOutputs.at(storage.uri))
    assert adopted.id == rec.id and adopted.backend == "local"
    assert adopted.state is JobState.FAILED  # last seen running: its driver is gone
    assert "last seen running" in (adopted.message or "")
    assert adopted.result["storage"] == storage.uri
    assert adopted.job_spec.storage == str(shared)
    assert backend.adopt(JobOutputs.at(storage.uri)).id == rec.id  # known already: the same record
    assert [r.id for r in JobStore(tmp_path / "fresh" / "jobs.db").list()] == [rec.id]


def test_init_from_checks_framework_and_architecture(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    source = record(tmp_path, str(shared))
    storage = Storage.open(str(shared)).child(source.id)
    write_model(tmp_path / "export")
    storage.put_dir(tmp_path / "export", "model")
    OutputSync(storage, source.job_dir).write_spec(source)
    store = JobStore(tmp_path / "jobs.db")

    ok = JobSpec.model_validate({**SPEC, "init_from": storage.uri, "model": {**SPEC["model"], "dropout": 0.5}})
    assert resolve_init_from(ok, store).uri == f"{storage.uri}/model"  # dropout changes no weight

    wider = JobSpec.model_validate({**SPEC, "init_from": storage.uri,
                                    "model": {**SPEC["model"], "conv_filters": [32, 64]}})
    with pytest.raises(UsageError, match=r"conv_filters \(\[16, 32\] there, \[32, 64\] here\)"):
        resolve_init_from(wider, store)
    tf = JobSpec.model_validate({**SPEC, "init_from": storage.uri, "framework": "tensorflow"})
    with pytest.raises(UsageError, match="trained with torch, this job uses tensorflow"):
        resolve_init_from(tf, store)
    missing = JobSpec.model_validate({**SPEC, "init_from": "no-such-job"})
    with pytest.raises(UsageError, match="no job 'no-such-job'"):
        resolve_init_from(missing, store)
    (tmp_path / "export" / "model.json").unlink()
    bare = Storage.open(str(shared)).child("bare")
    bare.put_dir(tmp_path / "export", "model")
    OutputSync(bare, source.job_dir).write_spec(source)
    with pytest.raises(UsageError, match="has no saved model"):
        resolve_init_from(JobSpec.model_validate({**SPEC, "init_from": bare.uri}), store)


def test_init_from_refuses_a_job_id_that_is_not_an_id() -> None:
    with pytest.raises(ValueError, match="give a job id"):
        JobSpec.model_validate({**SPEC, "init_from": "cnn job; rm -rf"})


def test_the_default_storage_applies_only_where_a_spec_sets_none() -> None:
    spec = JobSpec.model_validate(SPEC)
    assert with_default_storage(spec, "s3://bucket/x/").storage == "s3://bucket/x"
    own = JobSpec.model_validate({**SPEC, "storage": "/mnt/shared"})
    assert with_default_storage(own, "s3://bucket/x").storage == "/mnt/shared"
    assert with_default_storage(spec, None).storage is None
    with pytest.raises(UsageError, match="ORCHESTRATOR_STORAGE") as err:
        with_default_storage(spec, "relative/path")
    assert "fix" in err.value.render()


@pytest.mark.parametrize(("value", "text"), [
    ("relative/dir", "is relative"),
    ("ftp://host/x", "unknown storage scheme 'ftp'"),
    ("s3://", "names no bucket"),
    ("s3://bucket/../up", "'.' and '..' are not allowed"),
])
def test_validate_refuses_a_bad_storage_with_a_fix(value: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({**SPEC, "storage": value}))
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 2, out.output
    assert "storage" in out.output and text in out.output and "fix:" in out.output


def test_spread_placement_reaches_ray_train() -> None:
    from orchestrator.execution.ray_local import scaling_arguments

    spread = JobSpec.model_validate({**SPEC, "resources": {"placement": "spread"}})
    assert scaling_arguments(spread)["placement_strategy"] == "SPREAD"
    assert scaling_arguments(JobSpec.model_validate(SPEC))["placement_strategy"] == "PACK"


def test_a_training_job_keeps_one_storage_folder_across_runs(tmp_path: Path) -> None:
    """On Kubernetes each run of a TrainingJob is a new record in a new pod; its storage folder is
    the TrainingJob's identity (ORCHESTRATOR_CHECKPOINT_OWNER), so a later run finds the checkpoints."""
    from orchestrator.execution.driver import job_paths

    shared = tmp_path / "shared"
    first = job_paths(record(tmp_path, str(shared), job_id="run-aaaaaa"), JobSpec.model_validate(
        {**SPEC, "storage": str(shared)}), owner="team-a-cnn-1234abcd")
    again = job_paths(record(tmp_path, str(shared), job_id="run-bbbbbb"), JobSpec.model_validate(
        {**SPEC, "storage": str(shared)}), owner="team-a-cnn-1234abcd")
    assert first["storage"].uri == again["storage"].uri == f"{shared}/team-a-cnn-1234abcd"
    assert first["checkpoint_dir"] is None  # checkpoints in storage, not in the job directory
    plain = job_paths(record(tmp_path, None), JobSpec.model_validate(SPEC))
    assert "storage" not in plain and plain["checkpoint_dir"].endswith("/checkpoints")
