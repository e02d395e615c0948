"""The ray backend's pieces that need no cluster: the entrypoint's interpreter lookup, the plan,
reading a job's state back from Ray's job info and log lines, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.backends.ray_cluster import (
    ALWAYS_EXCLUDED,
    CLUSTER_PYTHON,
    EVENT_MARK,
    RESULT_MARK,
    RayClusterBackend,
    entrypoint_command,
    record_from_wire,
    record_to_wire,
    upload_plan,
)
from orchestrator.errors import UsageError
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")


def found_python(parent_args: list[str]) -> str:
    """What the entrypoint's lookup finds when its shell runs under a process with these arguments."""
    script = CLUSTER_PYTHON + 'echo "${py:-python3}"'
    code = "import subprocess, sys; sys.stdout.write(subprocess.run(['sh', '-c', sys.argv[1]], " \
           "capture_output=True, text=True).stdout)"
    return subprocess.run([sys.executable, "-c", code, script, *parent_args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_entrypoint_finds_the_interpreter_the_raylet_starts_workers_with() -> None:
    # like the raylet: the worker command is one argument, the interpreter its first word
    worker = "--python_worker_command=/opt/cluster/venv/bin/python -u /opt/ray/default_worker.py --x=1"
    assert found_python(["--raylet-name=r", worker]) == "/opt/cluster/venv/bin/python"


def test_without_a_raylet_above_it_the_entrypoint_falls_back_to_python3() -> None:
    assert found_python(["--unrelated"]) == "python3"


def test_an_explicit_interpreter_is_used_as_given() -> None:
    assert entrypoint_command("/opt/py 3/bin/python") == "exec '/opt/py 3/bin/python' -m orchestrator _ray_job"
    assert entrypoint_command(None).endswith('exec "${py:-python3}" -m orchestrator _ray_job')


def backend(address: str | None = "http://head:8265") -> RayClusterBackend:
    return RayClusterBackend(Settings.from_env({"ORCHESTRATOR_HOME": "/tmp/x"}).with_overrides(ray_address=address))


def spec(**extra: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "demo", "model": {"type": "cnn"}, **extra})


def test_the_plan_carries_the_spec_and_user_code(tmp_path: Path) -> None:
    plan = backend().dry_run(spec(), None)  # type: ignore[arg-type]
    submit = plan["submit_job"]
    assert plan["address"] == "http://head:8265"
    assert submit["submission_id"] == "demo-<id>" and submit["entrypoint_num_cpus"] == 0
    assert json.loads(submit["runtime_env"]["env_vars"]["ORCHESTRATOR_SPEC_JSON"])["name"] == "demo"
    assert submit["metadata"]["orchestrator_job_name"] == "demo"
    train = tmp_path / "code" / "train.py"
    train.parent.mkdir()
    train.write_text("def main(config):\n    pass\n")
    user = JobSpec.model_validate({"name": "mine", "entrypoint": f"{train}:main"})
    env = backend().submission(user, "mine-1")["runtime_env"]
    assert env["working_dir"] == str(train.parent)
    assert json.loads(env["env_vars"]["ORCHESTRATOR_SPEC_JSON"])["entrypoint"] == "train.py:main"
    assert {".git", ".ssh", ".venv", "__pycache__", "*.pem", ".env"} <= set(env["excludes"])


def test_an_address_is_required_and_must_be_the_dashboard() -> None:
    with pytest.raises(UsageError, match="needs the address"):
        _ = backend(None).address
    with pytest.raises(UsageError, match="not Ray Client"):
        _ = backend("ray://head:10001").address
    assert backend("head:8265").address == "http://head:8265"


class Status(str):
    @property
    def value(self) -> str:
        return str(self)

    def is_terminal(self) -> bool:
        return self in ("SUCCEEDED", "FAILED", "STOPPED")


def info(status: str, **extra: Any) -> Any:
    fields = {"submission_id": "demo-1", "job_id": None, "status": Status(status), "message": None,
              "metadata": {"orchestrator_job_name": "demo"}, "start_time": 1_000_000, "end_time": None,
              "runtime_env": {"env_vars": {"ORCHESTRATOR_SPEC_JSON": json.dumps(spec().model_dump(mode="json"))}}}
    return SimpleNamespace(**{**fields, **extra})


def event(kind: str, **fields: Any) -> str:
    return EVENT_MARK + json.dumps({"type": kind, **fields})


def test_a_queued_job_reads_as_pending_with_its_reason() -> None:
    logs = "\n".join(["driver of demo-1", event("queued", reason="needs 2 workers x 1 cpus as one gang")])
    record = backend()._record(info("RUNNING"), logs)
    assert record.state is JobState.PENDING
    assert record.message == "queued: needs 2 workers x 1 cpus as one gang"
    assert record.spec["name"] == "demo" and record.started_at == 1000.0


def test_a_running_job_shows_its_latest_epoch_and_admission_clears_the_queued_state() -> None:
    logs = "\n".join([event("queued", reason="r"), event("attempt_start", attempt=1),
                      event("epoch", epoch=3, metrics={"val_accuracy": 0.9}), "plain line"])
    record = backend()._record(info("RUNNING"), logs)
    assert record.state is JobState.RUNNING
    assert record.progress == {"epoch": 3, "val_accuracy": 0.9}


def test_the_drivers_final_record_wins_and_survives_the_wire() -> None:
    final = JobRecord(id="demo-1", name="demo", backend="ray", state=JobState.SUCCEEDED, spec={"name": "demo"},
                      job_dir=Path("/home/ray/.orchestrator/jobs/demo-1"), created_at=5.0, started_at=6.0,
                      ended_at=9.0, result={"metrics": {"val_accuracy": 0.97}}, attempts=[{"attempt": 1}])
    logs = "\n".join([event("epoch", epoch=1, metrics={}), RESULT_MARK + json.dumps(record_to_wire(final))])
    record = backend()._record(info("SUCCEEDED"), logs)
    assert record.state is JobState.SUCCEEDED and record.result["metrics"] == {"val_accuracy": 0.97}
    assert record.result["dashboard_url"] == "http://head:8265/#/jobs/demo-1"
    assert record_from_wire(record_to_wire(final)).attempts == final.attempts
    stopped = backend()._record(info("STOPPED"), logs)  # Ray stopped it after our driver said succeeded
    assert stopped.state is JobState.SUCCEEDED
    killed = backend()._record(info("STOPPED"), event("epoch", epoch=1, metrics={}))
    assert killed.state is JobState.CANCELLED


def test_the_framework_is_checked_on_the_cluster_not_on_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensorflow job submitted from a machine without tensorflow reaches the cluster; a cluster
    whose Python lacks it fails the job there with a clear record (what, where, the fix)."""
    import importlib.util

    from click.testing import CliRunner

    from orchestrator.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorflow", "tf_keras") else real_find_spec(name, *a))
    tf_spec = spec(framework="tensorflow")
    # the client submits without looking for tensorflow locally
    submitted: list[dict[str, Any]] = []

    class Client:
        def submit_job(self, **kwargs: Any) -> str:
            submitted.append(kwargs)
            return str(kwargs["submission_id"])

    client_side = backend()
    monkeypatch.setattr(client_side, "_client", lambda: Client())
    monkeypatch.setattr(client_side, "status", lambda job_id: JobRecord(
        id=job_id, name="demo", backend="ray", state=JobState.PENDING, spec={}, job_dir=Path("."), created_at=0.0))
    from orchestrator.backends.base import SubmitOptions

    record = client_side.submit(tf_spec, SubmitOptions(detach=True))
    assert record.state is JobState.PENDING and submitted[0]["metadata"]["orchestrator_framework"] == "tensorflow"

    # the driver on the cluster: a failed record on the wire, a non-zero exit, no job left pending
    env = {"ORCHESTRATOR_SPEC_JSON": json.dumps(tf_spec.model_dump(mode="json")), "ORCHESTRATOR_JOB_ID": "demo-1",
           "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(main, ["_ray_job"], env=env)
    assert result.exit_code != 0
    [wire] = [line for line in result.output.splitlines() if line.startswith(RESULT_MARK)]
    failed = record_from_wire(json.loads(wire[len(RESULT_MARK):]))
    assert failed.state is JobState.FAILED and failed.id == "demo-1"
    assert "framework 'tensorflow' needs tensorflow and tf_keras" in (failed.message or "")
    assert "on the Ray cluster" in failed.message and "pip install 'train-orchestrator[tensorflow]'" in failed.message
    # read back by the client as the driver's own last word
    assert backend()._record(info("FAILED"), wire).state is JobState.FAILED


# -- what the ray backend uploads with a user entrypoint ------------------------------------------


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home" / "someone"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(home))
    return home


def user_spec(entry: Path, **code: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "mine", "entrypoint": f"{entry}:main", "code": code})


def make_file(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_an_entrypoint_in_the_home_directory_is_refused(fake_home: Path) -> None:
    entry = make_file(fake_home / "train.py", "def main(config):\n    pass\n")
    with pytest.raises(UsageError) as caught:
        backend().submission(user_spec(entry), "mine-1")
    text = caught.value.render()
    assert f"would upload {fake_home} (the entrypoint's folder), which is your home directory" in text
    assert "~/.ssh" in text and "fix: move train.py into a project folder of its own" in text
    assert "code.dir" in text


@pytest.mark.parametrize("code_dir", ["HOME", "/", ".."])
def test_code_dir_may_not_be_the_home_directory_or_hold_it(fake_home: Path, code_dir: str) -> None:
    entry = make_file(fake_home / "project" / "train.py")
    given = str(fake_home) if code_dir == "HOME" else code_dir
    with pytest.raises(UsageError, match=r"\(code.dir\), which is (your home directory|a folder that holds your home)"):
        upload_plan(user_spec(entry, dir=given))


def test_an_entrypoint_in_a_package_uploads_the_package_root_with_excludes(fake_home: Path) -> None:
    project = fake_home / "work" / "project"
    entry = make_file(project / "mypkg" / "sub" / "train.py")
    make_file(project / "mypkg" / "__init__.py")
    make_file(project / "mypkg" / "sub" / "__init__.py")
    make_file(project / ".orchestratorignore", "# data stays home\ndata/\n\n*.ckpt\n")
    plan = upload_plan(user_spec(entry, exclude=["notebooks/"]))
    assert plan.directory == project
    assert plan.entrypoint == "mypkg/sub/train.py:main"
    assert plan.excludes[: len(ALWAYS_EXCLUDED)] == ALWAYS_EXCLUDED
    assert plan.excludes[len(ALWAYS_EXCLUDED) :] == ("data/", "*.ckpt", "notebooks/")
    env = backend().submission(user_spec(entry, exclude=["notebooks/"]), "mine-1")["runtime_env"]
    assert env["working_dir"] == str(project) and env["excludes"] == list(plan.excludes)
    assert json.loads(env["env_vars"]["ORCHESTRATOR_SPEC_JSON"])["entrypoint"] == "mypkg/sub/train.py:main"


def test_a_named_code_dir_is_uploaded(fake_home: Path) -> None:
    project = fake_home / "project"
    entry = make_file(project / "scripts" / "train.py")
    assert upload_plan(user_spec(entry, dir="..")).directory == project  # relative to the entrypoint's folder
    plan = upload_plan(user_spec(entry, dir=str(project)))
    assert plan.directory == project and plan.entrypoint == "scripts/train.py:main"
    make_file(fake_home / "other" / "x.py")
    with pytest.raises(UsageError, match=f"code.dir {fake_home / 'other'} does not hold the entrypoint"):
        upload_plan(user_spec(entry, dir=str(fake_home / "other")))
    with pytest.raises(UsageError, match="no such folder"):
        upload_plan(user_spec(entry, dir="missing"))


def test_an_excluded_entrypoint_is_refused(fake_home: Path) -> None:
    entry = make_file(fake_home / "project" / "src" / "train.py")
    with pytest.raises(UsageError, match="the entrypoint train.py is excluded") as caught:
        upload_plan(user_spec(entry, exclude=["*.py"]))
    assert "fix: remove the pattern" in caught.value.render()
    make_file(fake_home / "project" / ".orchestratorignore", "src/\n")
    with pytest.raises(UsageError, match="the entrypoint src/train.py is excluded"):
        upload_plan(user_spec(entry, dir=".."))


def test_the_dry_run_shows_the_upload_folder_and_excludes(fake_home: Path, tmp_path: Path, home: Path) -> None:
    project = fake_home / "project"
    entry = make_file(project / "train.py", "def main(config):\n    pass\n")
    spec_file = make_file(project / "job.yaml", "name: mine\nentrypoint: train.py:main\ncode:\n  exclude: [data/]\n")
    args = [sys.executable, "-m", "orchestrator", "submit", str(spec_file), "--backend", "ray",
            "--address", "http://head:8265", "--dry-run", "--output", "json"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["upload"]["dir"] == str(project) and plan["upload"]["entrypoint"] == "train.py:main"
    assert plan["upload"]["excludes"][-1] == "data/" and ".ssh" in plan["upload"]["excludes"]
    assert plan["upload"]["also_honoured"] == [".orchestratorignore", ".gitignore", ".rayignore"]
    assert plan["submit_job"]["runtime_env"]["working_dir"] == str(project)
    assert plan["submit_job"]["runtime_env"]["excludes"] == plan["upload"]["excludes"]
    assert entry.is_file()

    make_file(fake_home / "train.py")
    loose = make_file(fake_home / "loose.yaml", "name: mine\nentrypoint: train.py:main\n")
    refused = subprocess.run([*args[:4], str(loose), *args[5:]], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "which is your home directory" in refused.stderr and "fix: move train.py" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert json.loads(refused.stdout)["error"]["type"] == "UsageError"


def test_log_lines_of_unknown_or_malformed_events_are_skipped_but_the_newest_line_decides_queued() -> None:
    # an event this version does not know, newest: the job is not "queued" any more (as before)
    logs = "\n".join([event("queued", reason="r"), event("added_later", x=1)])
    assert backend()._record(info("RUNNING"), logs).state is JobState.RUNNING
    # a malformed epoch line (no metrics) is passed over; the epoch before it is the progress
    logs = "\n".join([event("epoch", epoch=2, metrics={"val_accuracy": 0.8}), event("epoch", epoch=3), "{cut"])
    record = backend()._record(info("RUNNING"), logs)
    assert record.progress == {"epoch": 2, "val_accuracy": 0.8}


def test_backends_that_cannot_resume_refuse_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from orchestrator.backends.base import SubmitOptions
    from orchestrator.cli import main

    with pytest.raises(UsageError) as refused:
        backend().resume("demo-1", SubmitOptions())
    assert "the ray backend cannot resume a job (demo-1)" in refused.value.message
    assert "orchestrator submit SPEC --backend ray" in str(refused.value.fix)
    monkeypatch.setattr(RayClusterBackend, "status", lambda self, job_id: JobRecord(
        id=job_id, name="demo", backend="ray", state=JobState.CANCELLED, spec=spec().model_dump(mode="json"),
        job_dir=Path("."), created_at=0.0))
    result = CliRunner().invoke(main, ["resume", "demo-1", "--backend", "ray", "--address", "http://head:8265"])
    assert result.exit_code == 2
    assert "error: the ray backend cannot resume a job (demo-1)" in result.output


def test_a_head_whose_job_agent_is_starting_is_waited_for_then_a_refusal_is_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.backends import ray_cluster
    from orchestrator.backends.base import SubmitOptions
    from orchestrator.errors import BackendError

    calls: list[str] = []

    class Client:
        def __init__(self, failures: int, text: str) -> None:
            self.failures, self.text = failures, text

        def submit_job(self, **kwargs: Any) -> str:
            calls.append(kwargs["submission_id"])
            if len(calls) <= self.failures:
                raise RuntimeError(self.text)
            return str(kwargs["submission_id"])

    monkeypatch.setattr(ray_cluster.time, "sleep", lambda s: None)
    side = backend()
    monkeypatch.setattr(side, "status", lambda job_id: JobRecord(
        id=job_id, name="demo", backend="ray", state=JobState.PENDING, spec={}, job_dir=Path("."), created_at=0.0))
    busy = "Request failed with status code 500: No available agent to submit job, please try again later."
    monkeypatch.setattr(side, "_client", lambda: Client(2, busy))
    assert side.submit(spec(), SubmitOptions(detach=True)).state is JobState.PENDING
    assert len(calls) == 3  # two refusals while the agent started, then accepted
    calls.clear()
    monkeypatch.setattr(side, "_client", lambda: Client(1, "Request failed with status code 400: bad runtime_env"))
    with pytest.raises(BackendError, match="refused the job: .*bad runtime_env"):
        side.submit(spec(), SubmitOptions(detach=True))
    assert len(calls) == 1  # any other refusal is not retried
