"""Where a cluster job runs, recorded at submit: the ray backend's id alone reaches the recorded Jobs
API URL (no Ray: the Jobs client is a stand-in), and the store's index of places."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.backends.ray_cluster import RayClusterBackend
from orchestrator.cli import main
from orchestrator.errors import UsageError
from orchestrator.store import JobRecord, JobState, JobStore, JobTarget
from orchestrator.testing import builders as b


class FakeJobs:
    """The Jobs API client calls the ray backend makes on submit."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs["submission_id"])
        return str(kwargs["submission_id"])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    for name in ("ORCHESTRATOR_RAY_ADDRESS", "ORCHESTRATOR_NAMESPACE", "ORCHESTRATOR_KUBE_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(call, job id, the Jobs API URL the backend used) for every status/logs/cancel of the ray backend."""
    calls: list[tuple[str, str, str]] = []
    jobs = FakeJobs()

    def record(self: RayClusterBackend, job_id: str, state: JobState = JobState.RUNNING) -> JobRecord:
        return JobRecord(id=job_id, name="demo", backend="ray", state=state, spec={}, job_dir=Path("."),
                         created_at=0.0)

    def status(self: RayClusterBackend, job_id: str) -> JobRecord:
        calls.append(("status", job_id, self.address))
        return record(self, job_id)

    def logs(self: RayClusterBackend, job_id: str, follow: bool = False) -> Any:
        calls.append(("logs", job_id, self.address))
        yield "a line"

    def cancel(self: RayClusterBackend, job_id: str) -> JobRecord:
        calls.append(("cancel", job_id, self.address))
        return record(self, job_id, JobState.CANCELLING)

    monkeypatch.setattr(RayClusterBackend, "_client", lambda self: jobs)
    monkeypatch.setattr(RayClusterBackend, "status", status)
    monkeypatch.setattr(RayClusterBackend, "logs", logs)
    monkeypatch.setattr(RayClusterBackend, "cancel", cancel)
    monkeypatch.setattr(RayClusterBackend, "queue_rows", lambda self: calls.append(("queue", "", self.address)) or [
        {"job_id": "other-1", "queue": "default", "priority": 0, "state": "running", "gang": "1 worker x 1 cpus",
         "since_s": 5.0, "detail": "on node n1"}])
    return calls


def test_the_ray_backends_id_alone_reaches_the_recorded_jobs_api(home: Path, tmp_path: Path,
                                                                seen: list[tuple[str, str, str]]) -> None:
    spec = tmp_path / "demo.yaml"
    spec.write_text(yaml.safe_dump(b.spec_data("demo", workers=1)), encoding="utf-8")
    result = CliRunner().invoke(main, ["submit", str(spec), "-b", "ray", "--address", "http://head:8265", "-d", "-q",
                                       "-o", "json"])
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout.strip().splitlines()[-1])["job_id"]
    assert JobStore(home / "jobs.db").targets(job_id) == [
        JobTarget(job_id, "ray", address="http://head:8265", created_at=JobStore(home / "jobs.db").targets(job_id)[0]
                  .created_at)]
    seen.clear()

    assert CliRunner().invoke(main, ["status", job_id]).exit_code == 0
    result = CliRunner().invoke(main, ["logs", job_id])
    assert (result.exit_code, result.stdout) == (0, "a line\n")
    result = CliRunner().invoke(main, ["cancel", job_id])
    assert (result.exit_code, result.stdout) == (0, f"{job_id}: cancelling\n")
    result = CliRunner().invoke(main, ["explain", job_id])
    assert result.exit_code == 0 and result.stdout == f"{job_id}: it is running, not queued or running\n"
    assert seen == [("status", job_id, "http://head:8265"), ("logs", job_id, "http://head:8265"),
                    ("cancel", job_id, "http://head:8265"), ("status", job_id, "http://head:8265"),
                    ("queue", "", "http://head:8265")]
    # resume goes to the ray backend too (which says it cannot)
    result = CliRunner().invoke(main, ["resume", job_id])
    assert result.exit_code == 2 and f"the ray backend cannot resume a job ({job_id})" in result.output
    # an explicit --address overrides the recorded one
    seen.clear()
    assert CliRunner().invoke(main, ["status", job_id, "--address", "http://other:8265"]).exit_code == 0
    assert seen == [("status", job_id, "http://other:8265")]


def test_a_local_job_stays_local_and_an_unknown_one_is_refused(home: Path, seen: list[tuple[str, str, str]]) -> None:
    store = JobStore(home / "jobs.db")
    store.create(JobRecord(id="mine-abc123", name="mine", backend="local", state=JobState.SUCCEEDED,
                           spec=b.spec_data("mine"), job_dir=home / "jobs" / "mine-abc123", created_at=1.0))
    store.remember_target(JobTarget("mine-abc123", "ray", address="http://head:8265"))
    result = CliRunner().invoke(main, ["status", "mine-abc123", "-o", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[-1])["backend"] == "local"
    assert seen == []  # this machine's own job wins over a cluster job of the same id
    result = CliRunner().invoke(main, ["status", "zzz"])
    assert result.exit_code == 2 and "no job 'zzz' in the job store" in result.output


def test_the_index_keeps_one_row_per_place_and_finds_by_prefix(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.remember_target(JobTarget("train-1", "kubernetes", namespace="a", context="prod", created_at=1.0))
    store.remember_target(JobTarget("train-1", "kubernetes", namespace="a", context="prod", created_at=2.0))
    store.remember_target(JobTarget("train-1", "kubernetes", namespace="b", context="prod", created_at=3.0))
    store.remember_target(JobTarget("train-10", "ray", address="http://h:8265", created_at=4.0))
    assert [(t.namespace, t.created_at) for t in store.targets("train-1")] == [("b", 3.0), ("a", 2.0)]
    assert [t.job_id for t in store.targets("train-")] == ["train-10", "train-1", "train-1"]
    assert store.targets("nope") == []
    assert JobTarget("x", "kubernetes", namespace="a", context="prod").options() == "-b kubernetes -n a --context prod"
    with pytest.raises(UsageError, match="no job id given"):
        store.targets(" ")
