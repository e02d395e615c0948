"""The TrainingJob's ``status``: one pydantic model, the source of its CRD schema and of the CLI view.

The operator writes the whole status each time (a merge patch with ``None`` for cleared fields);
the CLI reads it back into a :class:`JobRecord`. Field names are camelCase, as in every
Kubernetes status.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.backends.k8s.convert import job_spec_from_training_job
from orchestrator.store import JobRecord, JobState

Phase = Literal["Pending", "Starting", "Running", "Suspending", "Suspended", "Succeeded", "Failed", "Invalid"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
#: Phases after which the operator creates nothing more (Invalid ends when the spec is fixed).
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})

_STATE_OF_PHASE: dict[str, JobState] = {
    "Pending": JobState.PENDING,
    "Starting": JobState.PENDING,
    "Running": JobState.RUNNING,
    "Suspending": JobState.CANCELLING,
    "Suspended": JobState.CANCELLED,
    "Succeeded": JobState.SUCCEEDED,
    "Failed": JobState.FAILED,
    "Invalid": JobState.FAILED,
}


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Status):
    """A Kubernetes condition (metav1.Condition): ``Valid``, ``Scheduled``, ``Running``, ``Suspended``,
    ``Finished``, and when the job ends ``Complete`` (it succeeded) or ``Failed``, so that
    ``kubectl wait --for=condition=Complete trainingjob/NAME`` works."""

    type: str = Field(min_length=1, max_length=316, description="The condition, e.g. Scheduled, Complete, Failed.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="One CamelCase word, e.g. Unschedulable, Placed, Succeeded.")
    message: str = ""
    lastTransitionTime: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observedGeneration: int | None = Field(default=None, description="The spec's generation the condition is about.")


class PlacementStatus(_Status):
    """Where the scheduler put the job."""

    pool: str
    accelerator: str
    nodes: int = Field(ge=0, description="Nodes of the pool the gang takes.")
    workers: int = Field(ge=1)


class RayJobStatus(_Status):
    """The RayJob the job became, and its state as KubeRay reports it."""

    name: str
    jobStatus: str | None = Field(default=None, description="Ray job state: PENDING, RUNNING, SUCCEEDED, ...")
    deploymentStatus: str | None = Field(default=None, description="KubeRay: Initializing, Running, Complete, ...")
    dashboardURL: str | None = None
    message: str | None = None


class TrainingJobStatus(_Status):
    """What the operator knows about a TrainingJob."""

    phase: Phase = "Pending"
    message: str = Field(default="", description="One line for people: what is happening, or why not.")
    observedGeneration: int | None = None
    attempts: int = Field(default=0, ge=0, description="Runs started (1 + KubeRay retries).")
    placement: PlacementStatus | None = None
    rayJob: RayJobStatus | None = None
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    lastMetrics: dict[str, float] | None = Field(
        default=None, description="Latest epoch metrics, when the driver reports them.")
    startTime: str | None = None
    completionTime: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> TrainingJobStatus:
        """Read a status written by the operator; foreign or malformed keys are ignored."""
        raw = dict(raw or {})
        known = {k: v for k, v in raw.items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except ValueError:
            return cls()

    def to_patch(self) -> dict[str, Any]:
        """The whole status as a merge patch: fields that are unset now become ``None`` (removed)."""
        return self.model_dump(mode="json")

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (``2026-01-02T03:04:05Z``) to a Unix time."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_state(phase: str | None) -> JobState:
    """The CLI's job state for a TrainingJob phase (no status yet: pending)."""
    return _STATE_OF_PHASE.get(phase or "Pending", JobState.PENDING)


def record_from_training_job(obj: Mapping[str, Any]) -> JobRecord:
    """A TrainingJob as the CLI shows jobs: its name is the job id."""
    meta = obj.get("metadata", {})
    spec = job_spec_from_training_job(obj, strict=False)
    status = TrainingJobStatus.parse(obj.get("status"))
    namespace = meta.get("namespace", "default")
    result: dict[str, Any] = {"namespace": namespace, "phase": status.phase, "retries": max(0, status.attempts - 1)}
    if status.placement is not None:
        result["pool"] = status.placement.pool
        result["accelerator"] = status.placement.accelerator
    if status.rayJob is not None:
        result["ray_job"] = status.rayJob.name
        if status.rayJob.dashboardURL:
            result["dashboard_url"] = status.rayJob.dashboardURL
    if status.lastMetrics:
        result["metrics"] = status.lastMetrics
    state = job_state(status.phase if obj.get("status") else None)
    if (obj.get("spec") or {}).get("suspend") and not state.terminal:
        state = JobState.CANCELLING  # the operator has yet to act on the suspend
    elif status.phase == "Suspended" and not (obj.get("spec") or {}).get("suspend"):
        state = JobState.PENDING  # resumed: the operator has yet to act on it
    return JobRecord(
        id=meta.get("name", ""),
        name=str(spec.get("name") or meta.get("name", "")),
        backend="kubernetes",
        state=state,
        spec=spec,
        job_dir=Path(f"k8s/{namespace}/{meta.get('name', '')}"),
        created_at=parse_time(meta.get("creationTimestamp")) or 0.0,
        started_at=parse_time(status.startTime),
        ended_at=parse_time(status.completionTime),
        message=status.message or None,
        result=result,
        external_id=meta.get("uid"),
    )
