"""The CLI remembers where a Kubernetes job runs: after ``submit -b kubernetes -n NS``, the id alone
reaches NS (status, logs, cancel, resume, explain); ``-n`` defaults to the kubeconfig context's
namespace; queue and explain show what the TrainingJob's status carries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.testing import builders as b

pytestmark = pytest.mark.k8s

Run = Callable[..., tuple[int, str, str]]


def spec_file(tmp_path: Path, name: str, **kw: Any) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(b.spec_data(name, **kw)), encoding="utf-8")
    return str(path)


def last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def run(kube: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """`orchestrator ARGS` exactly as given (no backend options added); KUBECONFIG names a kubeconfig
    whose current context ``emulator`` has the namespace ``elsewhere``. Returns (code, stdout, all output)."""
    from orchestrator.cli import main

    config = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="elsewhere")
    monkeypatch.setenv("KUBECONFIG", str(config))
    # the client's own default (read at its import) must not be what finds the file
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    for name in ("ORCHESTRATOR_NAMESPACE", "ORCHESTRATOR_KUBE_CONTEXT", "ORCHESTRATOR_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args))
        return result.exit_code, result.stdout, result.output

    return invoke


def test_the_id_alone_reaches_the_namespace_the_job_was_submitted_to(
        run: Run, api: Any, kube: Any, tmp_path: Path, namespace: str) -> None:
    code, out, _ = run("submit", spec_file(tmp_path, "far"), "-b", "kubernetes", "-n", namespace, "-o", "json")
    assert code == 0 and last_json(out)["namespace"] == namespace
    assert api.get_training_job("elsewhere", "far") is None  # -n wins over the context's namespace

    api.patch_training_job_status(namespace, "far", {
        "phase": "Running", "message": "RayJob far: Running", "attempts": 1,
        "placement": {"pool": "cpu", "accelerator": "cpu", "nodes": 1, "workers": 2},
        "rayJob": {"name": "far", "jobStatus": "RUNNING"}, "startTime": "2026-01-01T00:00:00Z"})
    code, out, _ = run("status", "far", "-o", "json")
    record = last_json(out)
    assert (code, record["backend"], record["namespace"], record["state"], record["pool"]) == (
        0, "kubernetes", namespace, "running", "cpu")

    core = kubernetes.client.CoreV1Api(api.api_client)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "far-x1", "labels": {"job-name": "far"}},
                                           "spec": {"containers": [{"name": "submitter", "image": "x"}]}})
    kube.set_pod_log(namespace, "far-x1", "epoch 1/1 val_accuracy 0.5\n")
    code, out, _ = run("logs", "far")
    assert (code, out.splitlines()) == (0, ["epoch 1/1 val_accuracy 0.5"])

    code, out, _ = run("explain", "far")
    assert code == 0 and out.splitlines()[0].startswith(f"far (2 workers x 1 cpus, queue default, priority 0) at "
                                                        f"namespace {namespace}: running")
    assert "on pool cpu (cpu, 1 node, 2 workers), RayJob far" in out

    code, out, _ = run("cancel", "far")
    assert (code, out.strip()) == (0, "far: cancelling")
    assert api.get_training_job(namespace, "far")["spec"]["suspend"] is True
    api.patch_training_job_status(namespace, "far", {"phase": "Suspended", "message": "suspended", "placement": None})
    code, out, _ = run("resume", "far", "-o", "json")
    assert code == 0, out
    assert api.get_training_job(namespace, "far")["spec"]["suspend"] is False
    assert last_json(out)["namespace"] == namespace

    # an explicit option still overrides what was recorded
    code, _, output = run("status", "far", "-n", "other")
    assert code == 2 and "no TrainingJob 'far' in namespace other of context emulator (namespace from -n)" in output


def test_n_defaults_to_the_namespace_of_the_kubeconfig_context(run: Run, api: Any, kube: Any, tmp_path: Path,
                                                               namespace: str) -> None:
    kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)  # the file KUBECONFIG names
    code, out, _ = run("submit", spec_file(tmp_path, "here"), "-b", "kubernetes", "-o", "json")
    assert code == 0 and last_json(out)["namespace"] == namespace
    assert api.get_training_job(namespace, "here")["metadata"]["namespace"] == namespace
    code, out, _ = run("list", "-b", "kubernetes", "-o", "json")
    assert [j["job_id"] for j in last_json(out)["jobs"]] == ["here"]
    # -n alone implies the kubernetes backend
    code, out, _ = run("list", "-n", namespace, "-o", "json")
    assert [j["job_id"] for j in last_json(out)["jobs"]] == ["here"]


def test_a_context_without_a_namespace_means_default(run: Run, kube: Any, tmp_path: Path) -> None:
    from orchestrator.backends.k8s.client import resolve_kube_target

    path = tmp_path / "no-ns.yaml"
    doc = yaml.safe_load(kube.write_kubeconfig(path).read_text())
    del doc["contexts"][0]["context"]["namespace"]
    path.write_text(yaml.safe_dump(doc))
    target = resolve_kube_target(None, None, str(path))
    assert (target.namespace, target.context, target.namespace_from) == ("default", "emulator", "default")
    target = resolve_kube_target("mine", None, str(path))
    assert (target.namespace, target.namespace_from) == ("mine", "-n")


def test_no_kubeconfig_is_said_clearly(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing-here"))
    code, _, output = run("status", "j1", "-b", "kubernetes", "--context", "prod")
    assert code == 2
    assert f"no kubeconfig to find context 'prod' in: the kubeconfig {tmp_path / 'nothing-here'} (KUBECONFIG)" in output
    assert "point KUBECONFIG at a kubeconfig file" in output


def test_an_unknown_id_says_so_with_how_to_name_where_it_runs(run: Run) -> None:
    code, _, output = run("status", "nope-123")
    assert code == 2
    assert "no job 'nope-123' in the job store" in output and "nor among the cluster jobs submitted" in output
    assert "-b kubernetes -n NAMESPACE [--context CTX]" in output and "-b ray --address http://HEAD:8265" in output


def test_a_recorded_context_that_no_longer_exists_says_so(run: Run, kube: Any, tmp_path: Path,
                                                          namespace: str) -> None:
    code, _, output = run("submit", spec_file(tmp_path, "lost"), "-b", "kubernetes", "-n", namespace)
    assert code == 0, output
    kube.write_kubeconfig(tmp_path / "kubeconfig", context="renamed", namespace="elsewhere")
    code, _, output = run("status", "lost")
    assert code == 2
    assert "submitted with kubeconfig context 'emulator', which no longer exists" in output
    assert "(contexts: renamed)" in output and "pass --context CTX" in output
    # the way out the fix names: --context overrides the recorded context; the recorded namespace stays
    code, out, _ = run("status", "lost", "--context", "renamed", "-o", "json")
    assert code == 0 and last_json(out)["namespace"] == namespace


def test_the_same_name_in_two_namespaces_asks_which(run: Run, tmp_path: Path, namespace: str) -> None:
    other = f"{namespace}-b"
    for ns in (namespace, other):
        assert run("submit", spec_file(tmp_path, "twin"), "-b", "kubernetes", "-n", ns)[0] == 0
    code, _, output = run("status", "twin")
    assert code == 2 and "'twin' names 2 jobs submitted from this machine" in output
    assert f"-b kubernetes -n {other} --context emulator" in output
    code, out, _ = run("status", "twin", "-n", other, "-o", "json")
    assert code == 0 and last_json(out)["namespace"] == other


def test_queue_and_explain_show_what_the_trainingjob_status_carries(run: Run, api: Any, tmp_path: Path,
                                                                    namespace: str) -> None:
    for name in ("runs", "waits", "done"):
        assert run("submit", spec_file(tmp_path, name, gpus=1 if name == "waits" else 0,
                                       accelerator="nvidia-h100-80gb" if name == "waits" else None),
                   "-b", "kubernetes", "-n", namespace)[0] == 0
    api.patch_training_job_status(namespace, "runs", {
        "phase": "Running", "message": "RayJob runs: Running", "startTime": "2026-01-01T00:00:00Z",
        "placement": {"pool": "l4", "accelerator": "nvidia-l4", "nodes": 2, "workers": 2},
        "rayJob": {"name": "runs-1a2b"}})
    why = "no pool has nvidia-h100-80gb; queue default is over its quota"
    api.patch_training_job_status(namespace, "waits", {
        "phase": "Pending", "message": f"cannot be placed: {why}",
        "conditions": [{"type": "Valid", "status": "True", "reason": "SpecValid", "message": ""},
                       {"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": why,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    api.patch_training_job_status(namespace, "done", {"phase": "Succeeded", "message": "RayJob done: Succeeded"})

    code, out, _ = run("queue", "-b", "kubernetes", "-n", namespace, "-o", "json")
    view = last_json(out)
    assert code == 0 and view["machine"] == (f"TrainingJobs in namespace {namespace}, context emulator "
                                             "(the operator's placement and messages)")
    rows = {r["job_id"]: r for r in view["jobs"]}
    assert sorted(rows) == ["runs", "waits"]  # a finished job is not in the queue
    assert (rows["runs"]["state"], rows["runs"]["detail"]) == (
        "running", "on pool l4 (nvidia-l4, 2 nodes, 2 workers), RayJob runs-1a2b")
    assert (rows["waits"]["state"], rows["waits"]["detail"], rows["waits"]["reasons"]) == (
        "unschedulable", f"cannot be placed: {why}", ["no pool has nvidia-h100-80gb", "queue default is over its quota"])
    assert rows["waits"]["gang"] == "2 nvidia-h100-80gb"

    code, out, _ = run("explain", "waits")  # the id alone: the recorded namespace
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"waits (2 nvidia-h100-80gb, queue default, priority 0) at namespace {namespace}: "
                               "unschedulable for ")
    assert lines[1:] == ["  - no pool has nvidia-h100-80gb", "  - queue default is over its quota",
                         "  condition Valid=True (SpecValid)",
                         f"  condition Scheduled=False (Unschedulable): {why}"]
    code, out, _ = run("explain", "done", "-o", "json")
    data = last_json(out)
    assert (data["phase"], data["state"], data["message"]) == ("Succeeded", "succeeded", "RayJob done: Succeeded")
    code, out, _ = run("explain", "done")
    assert out.splitlines()[0] == f"done (namespace {namespace}): phase Succeeded, not queued or running: " \
                                  "RayJob done: Succeeded"


def test_resume_refuses_a_finished_or_running_job_with_what_to_do(run: Run, api: Any, tmp_path: Path,
                                                                  namespace: str) -> None:
    assert run("submit", spec_file(tmp_path, "fin"), "-b", "kubernetes", "-n", namespace)[0] == 0
    code, _, output = run("resume", "fin")
    assert code == 2 and "TrainingJob fin is pending, not suspended: nothing to resume" in output
    api.patch_training_job_status(namespace, "fin", {"phase": "Failed", "message": "boom"})
    code, _, output = run("resume", "fin")
    assert code == 2 and "TrainingJob fin is failed (phase Failed); the operator runs a finished TrainingJob no more" \
        in output
    assert f"kubectl delete tj fin -n {namespace}" in output
    code, _, output = run("resume", "fin", "--epochs", "3")
    assert code == 2 and "--epochs does not apply to the kubernetes backend" in output


def test_a_recorded_cluster_id_wins_over_a_local_job_it_is_the_prefix_of(run: Run, tmp_path: Path,
                                                                         namespace: str) -> None:
    from orchestrator.store import JobRecord, JobState, JobStore

    assert run("submit", spec_file(tmp_path, "cnn-digits"), "-b", "kubernetes", "-n", namespace)[0] == 0
    home = tmp_path / "home"
    JobStore(home / "jobs.db").create(JobRecord(
        id="cnn-digits-a1b2c3", name="cnn-digits", backend="local", state=JobState.SUCCEEDED,
        spec=b.spec_data("cnn-digits"), job_dir=home / "jobs" / "cnn-digits-a1b2c3", created_at=1.0))
    for extra in ((), ("-n", namespace)):
        code, out, output = run("status", "cnn-digits", *extra, "-o", "json")
        record = last_json(out)
        assert (code, record["backend"], record["namespace"], record["job_id"]) == (
            0, "kubernetes", namespace, "cnn-digits"), output
    # the local job is reached by its whole id, or by a prefix no cluster job is recorded under
    for ref in ("cnn-digits-a1b2c3", "cnn-digits-a1"):
        code, out, _ = run("status", ref, "-o", "json")
        assert (code, last_json(out)["backend"], last_json(out)["job_id"]) == (0, "local", "cnn-digits-a1b2c3")
    # a cluster option says the job is on a cluster, even for a local job's whole id
    code, _, output = run("status", "cnn-digits-a1b2c3", "-n", namespace)
    assert (code, output.splitlines()[0]) == (2, f"error: no TrainingJob 'cnn-digits-a1b2c3' in namespace {namespace} "
                                                 "of context emulator (namespace from -n)")
    # a prefix of both a local and a recorded cluster job (neither exact) is refused, naming both kinds
    code, _, output = run("status", "cnn-dig")
    assert code == 2 and "'cnn-dig' is the prefix of this machine's local jobs and of cluster jobs" in output
    assert "(cnn-digits)" in output and "give the whole id" in output
