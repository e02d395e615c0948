"""``reconcile(desired, observed)``: every rule, on plain data (no API, no kopf)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.backends.k8s import JOB_UID_LABEL, KUEUE_QUEUE_LABEL, POOL_LABEL
from orchestrator.backends.k8s.manifests import RuntimeConfig
from orchestrator.backends.k8s.placement import PlacementBook
from orchestrator.backends.k8s.status import TrainingJobStatus
from orchestrator.operator.controller import OperatorConfig, desired_from
from orchestrator.operator.reconcile import (
    ApplyNetworkPolicy,
    CreateRayJob,
    DeleteRayJob,
    Desired,
    EmitEvent,
    EnsureTokenSecret,
    Observed,
    ReleasePlacement,
    WriteStatus,
    needs_placement,
    owned_rayjobs,
    rayjob_phase,
    reconcile,
)
from orchestrator.scheduler import ClusterSpec, NodePool, Reason, Wait
from orchestrator.testing import builders as b

pytestmark = pytest.mark.k8s

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
POOL = NodePool(name="a100", accelerator="nvidia-a100-40gb", nodes=2, accelerators_per_node=8)
CONFIG = RuntimeConfig()


def job(status: dict[str, Any] | None = None, *, suspend: bool = False, **spec: Any) -> dict[str, Any]:
    data = b.spec_data("j", workers=spec.pop("workers", 2), gpus=1, accelerator="nvidia-a100-40gb", **spec)
    obj = b.training_job("j", "ns", data, suspend=suspend)
    obj["metadata"].update(uid="uid-1", generation=3, creationTimestamp=NOW)
    if status is not None:
        obj["status"] = status
    return obj


def desired(obj: dict[str, Any], config: OperatorConfig | None = None) -> Desired:
    return desired_from(obj, config or OperatorConfig())


def rayjob(name: str = "j", uid: str = "uid-1", created: str = NOW, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "labels": {JOB_UID_LABEL: uid, POOL_LABEL: "a100"}}, "status": status}


def placed(obj: dict[str, Any]) -> Observed:
    decision, _ = PlacementBook(ClusterSpec(pools=[POOL])).place("ns/j", desired(obj).spec)  # type: ignore[arg-type]
    return Observed(decision=decision, pool=POOL, now=NOW)


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def written(actions: list[Any]) -> TrainingJobStatus:
    [write] = of(actions, WriteStatus)
    return write.status


def test_a_placed_job_gets_its_token_secret_and_network_policy_then_its_rayjob_and_a_starting_status() -> None:
    obj = job()
    actions = reconcile(desired(obj), placed(obj), CONFIG)
    assert [type(a) for a in actions] == [EnsureTokenSecret, ApplyNetworkPolicy, CreateRayJob, EmitEvent,
                                          WriteStatus]
    [secret], [policy] = of(actions, EnsureTokenSecret), of(actions, ApplyNetworkPolicy)
    assert secret.body["kind"] == "Secret" and "stringData" not in secret.body  # the executor adds the token
    assert policy.body["kind"] == "NetworkPolicy"
    for body in (secret.body, policy.body):
        assert body["metadata"]["ownerReferences"][0]["name"] == "j"
    [create] = of(actions, CreateRayJob)
    assert create.body["metadata"]["name"] == "j" and create.body["metadata"]["labels"][POOL_LABEL] == "a100"
    status = written(actions)
    assert (status.phase, status.attempts, status.observedGeneration) == ("Starting", 1, 3)
    assert status.placement is not None and status.placement.pool == "a100" and status.placement.nodes == 1
    assert status.rayJob is not None and status.rayJob.name == "j"
    assert status.condition("Scheduled").status == "True"  # type: ignore[union-attr]
    assert of(actions, EmitEvent) == [EmitEvent("Normal", "Scheduled", "placed on pool a100: a100-0 (2)")]


def test_a_waiting_job_says_why_in_a_condition_and_one_event() -> None:
    obj = job()
    wait = Wait("ns/j", (Reason("capacity", "pool a100 has 0 free"),))
    actions = reconcile(desired(obj), Observed(decision=wait, now=NOW), CONFIG)
    status = written(actions)
    assert status.phase == "Pending" and status.message == "waiting: pool a100 has 0 free"
    assert of(actions, EmitEvent) == [EmitEvent("Warning", "Waiting", "pool a100 has 0 free")]
    assert not of(actions, CreateRayJob)
    # asked again with the same answer: nothing new to say, nothing to write
    again = reconcile(desired(job(status.to_patch())), Observed(decision=wait, now=LATER), CONFIG)
    assert again == []


def test_a_job_that_never_fits_is_unschedulable() -> None:
    wait = Wait("ns/j", (Reason("too-large", "needs 32 nvidia-a100-40gb as one gang; pool a100 has 16 in total"),),
                permanent=True)
    actions = reconcile(desired(job()), Observed(decision=wait, now=NOW), CONFIG)
    status = written(actions)
    assert status.message.startswith("cannot be placed: needs 32")
    assert status.condition("Scheduled").reason == "Unschedulable"  # type: ignore[union-attr]
    assert of(actions, EmitEvent)[0].reason == "Unschedulable"


@pytest.mark.parametrize(("deployment", "job_status", "phase"), [
    ("", "", "Starting"), ("Initializing", "", "Starting"), ("Waiting", "", "Starting"),
    ("Running", "PENDING", "Starting"), ("Running", "RUNNING", "Running"), ("Retrying", "FAILED", "Running"),
    ("Complete", "SUCCEEDED", "Succeeded"), ("Complete", "FAILED", "Failed"), ("Complete", "STOPPED", "Failed"),
    ("Failed", "", "Failed"), ("ValidationFailed", "", "Failed"), ("Suspending", "", "Suspending"),
    ("Suspended", "", "Suspending"),
])
def test_rayjob_states_map_to_phases(deployment: str, job_status: str, phase: str) -> None:
    assert rayjob_phase(rayjob(jobDeploymentStatus=deployment, jobStatus=job_status))[0] == phase


def test_a_kueue_suspended_rayjob_is_pending_admission() -> None:
    assert rayjob_phase(rayjob(jobDeploymentStatus="Suspended"), kueue=True) == (
        "Pending", "RayJob j: Suspended (waiting for Kueue to admit it)")


def test_status_follows_the_rayjob_and_a_finished_job_frees_its_placement() -> None:
    obj = job({"phase": "Starting", "attempts": 1, "rayJob": {"name": "j"}})
    running = rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL="h:8265")
    actions = reconcile(desired(obj), Observed(rayjobs=[running], pool=POOL, now=NOW), CONFIG)
    status = written(actions)
    assert status.phase == "Running" and status.rayJob.dashboardURL == "h:8265"  # type: ignore[union-attr]
    assert status.startTime == NOW
    assert EmitEvent("Normal", "Running", "RayJob j: Running, Ray job RUNNING") in actions
    assert not of(actions, ReleasePlacement)

    done = rayjob(jobDeploymentStatus="Complete", jobStatus="FAILED", failed=2, message="exit 1")
    actions = reconcile(desired(job(status.to_patch())), Observed(rayjobs=[done], now=LATER), CONFIG)
    status = written(actions)
    assert (status.phase, status.attempts, status.completionTime) == ("Failed", 3, LATER)
    assert of(actions, ReleasePlacement) == [ReleasePlacement()]
    assert of(actions, EmitEvent)[0].type == "Warning"
    # finished: later RayJob changes (TTL cleanup) change nothing
    assert reconcile(desired(job(status.to_patch())), Observed(now=LATER), CONFIG) == []


def test_duplicates_are_deleted_keeping_the_expected_name() -> None:
    obj = job({"phase": "Running", "attempts": 1, "rayJob": {"name": "j"}})
    stray = rayjob("j-copy", created="2025-01-01T00:00:00Z", jobDeploymentStatus="Running", jobStatus="RUNNING")
    mine = rayjob("j", jobDeploymentStatus="Running", jobStatus="RUNNING")
    foreign = rayjob("other", uid="uid-2")
    actions = reconcile(desired(obj), Observed(rayjobs=[stray, foreign, mine], now=NOW), CONFIG)
    assert of(actions, DeleteRayJob) == [DeleteRayJob("j-copy")]
    assert not of(actions, CreateRayJob)


def test_suspend_deletes_the_rayjob_and_frees_the_pool_and_resume_places_it_again() -> None:
    obj = job({"phase": "Running", "attempts": 1, "rayJob": {"name": "j"}}, suspend=True)
    actions = reconcile(desired(obj), Observed(rayjobs=[rayjob(jobDeploymentStatus="Running")], now=NOW), CONFIG)
    assert of(actions, DeleteRayJob) == [DeleteRayJob("j")] and of(actions, ReleasePlacement)
    status = written(actions)
    assert status.phase == "Suspended" and status.placement is None
    assert not needs_placement(desired(job(status.to_patch(), suspend=True)), [])
    resumed = job(status.to_patch())
    assert needs_placement(desired(resumed), [])
    actions = reconcile(desired(resumed), placed(resumed), CONFIG)
    status = written(actions)
    assert status.phase == "Starting" and status.attempts == 2
    assert status.condition("Suspended").status == "False"  # type: ignore[union-attr]


def test_a_finished_job_is_not_suspended_or_restarted() -> None:
    obj = job({"phase": "Succeeded", "attempts": 1}, suspend=True)
    assert not needs_placement(desired(obj), [])
    assert reconcile(desired(obj), Observed(now=NOW), CONFIG) == []


def test_a_rayjob_deleted_behind_the_operators_back_fails_the_job() -> None:
    obj = job({"phase": "Running", "attempts": 1, "rayJob": {"name": "j"}})
    assert not needs_placement(desired(obj), [])
    actions = reconcile(desired(obj), Observed(now=NOW), CONFIG)
    status = written(actions)
    assert status.phase == "Failed" and "was deleted while the job ran" in status.message
    assert of(actions, ReleasePlacement) and not of(actions, CreateRayJob)


def test_an_invalid_spec_names_the_field_and_creates_nothing() -> None:
    obj = job(training={"epochs": 1, "batch_size": 1})
    d = desired(obj)
    assert d.spec is None and d.invalid is not None and d.invalid.startswith("training.batchSize: ")
    assert not needs_placement(d, [])
    actions = reconcile(d, Observed(now=NOW), CONFIG)
    status = written(actions)
    assert status.phase == "Invalid" and "training.batchSize" in status.message
    assert of(actions, EmitEvent)[0].reason == "InvalidSpec"
    assert not of(actions, CreateRayJob)


def test_an_invalid_edit_of_a_running_job_keeps_mirroring_its_rayjob() -> None:
    obj = job({"phase": "Running", "attempts": 1, "rayJob": {"name": "j"}}, training={"epochs": 1, "batch_size": 1})
    running = rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING")
    actions = reconcile(desired(obj), Observed(rayjobs=[running], now=NOW), CONFIG)
    assert not of(actions, DeleteRayJob) and not of(actions, CreateRayJob)


def test_owned_rayjobs_match_by_uid_label_or_owner_reference() -> None:
    d = desired(job())
    by_owner = {"metadata": {"name": "j", "ownerReferences": [{"uid": "uid-1"}]}}
    assert owned_rayjobs(d, [rayjob(uid="uid-2"), by_owner]) == [by_owner]


def test_kueue_label_on_the_trainingjob_or_operator_flag_queues_the_rayjob_suspended() -> None:
    obj = job()
    obj["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: "team-a"}
    [create] = of(reconcile(desired(obj), placed(obj), CONFIG), CreateRayJob)
    assert create.body["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a" and create.body["spec"]["suspend"]
    flagged = desired(job(), OperatorConfig(runtime=RuntimeConfig(kueue=True)))
    assert flagged.kueue_queue == "default"
    [create] = of(reconcile(desired(job()), placed(job()), CONFIG), CreateRayJob)
    assert "suspend" not in create.body["spec"]


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    obj = job()
    status = written(reconcile(desired(obj), placed(obj), CONFIG))
    running = rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING")
    later = written(reconcile(desired(job(status.to_patch())), Observed(rayjobs=[running], now=LATER), CONFIG))
    assert later.condition("Scheduled").lastTransitionTime == NOW  # type: ignore[union-attr]
    assert later.condition("Running").lastTransitionTime == LATER  # type: ignore[union-attr]
