"""The operator's decisions as a pure function: ``reconcile(desired, observed) -> actions``.

No I/O, no clock, no kopf: the caller gathers what the cluster looks like (the TrainingJob, the
RayJobs labelled for it, the scheduler's answer) and carries out the actions it gets back
(:mod:`orchestrator.operator.controller`). Every rule below is unit-tested on plain data.

Rules, in order:

1. Several RayJobs for one TrainingJob (which only a bug or a race could make): keep the one with
   the expected name (else the oldest), delete the others.
2. ``spec.suspend``: delete the RayJob, free the placement, phase ``Suspended``. A finished job
   stays finished.
3. A finished job (``Succeeded``/``Failed``) gets nothing more, not even a status write.
4. A RayJob exists: mirror its state into the status; when it ends, free the placement.
5. No RayJob, but the status names one that was running: it was deleted behind our back; the job
   fails with that message (re-running a job that may have finished is worse).
6. An invalid spec: phase ``Invalid``, the message naming the fields.
7. No RayJob: the scheduler placed it -> make sure the job's Ray token Secret and NetworkPolicy
   exist, then create the RayJob (which carries the spec); it waits -> phase ``Pending`` with the
   scheduler's reasons, as a condition and an Event. A job Kueue manages (``Desired.kueue_queue``)
   is not placed by us: its Secret, NetworkPolicy and RayJob are created at once, the RayJob
   suspended, and the job is ``Pending`` until Kueue admits it (unsuspends the RayJob).

Events are emitted only when a condition or the phase changes, so retries do not flood them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.backends.k8s import JOB_UID_LABEL, POOL_LABEL
from orchestrator.backends.k8s.kueue import kueue_priority
from orchestrator.backends.k8s.manifests import (
    RuntimeConfig,
    network_policy,
    rayjob_manifest,
    rayjob_name,
    token_secret,
)
from orchestrator.backends.k8s.status import (
    FINISHED_PHASES,
    Condition,
    PlacementStatus,
    RayJobStatus,
    TrainingJobStatus,
)
from orchestrator.scheduler import NodePool, Place, Wait
from orchestrator.spec.models import JobSpec

# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """A TrainingJob: the object as read, its validated spec (or why it is invalid)."""

    job: Mapping[str, Any]
    spec: JobSpec | None
    invalid: str | None = None
    kueue_queue: str | None = None

    @property
    def meta(self) -> Mapping[str, Any]:
        meta: Mapping[str, Any] = self.job.get("metadata", {})
        return meta

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid", ""))

    @property
    def generation(self) -> int | None:
        return self.meta.get("generation")

    @property
    def suspend(self) -> bool:
        return bool((self.job.get("spec") or {}).get("suspend"))

    @property
    def status(self) -> TrainingJobStatus:
        return TrainingJobStatus.parse(self.job.get("status"))

    @property
    def rayjob_name(self) -> str:
        return rayjob_name(self.name, self.uid)


@dataclass(frozen=True)
class Observed:
    """What the cluster and the scheduler say now."""

    rayjobs: Sequence[Mapping[str, Any]] = ()
    #: The scheduler's answer; asked only when the job needs a placement (see ``needs_placement``).
    decision: Place | Wait | None = None
    #: The pool of the placement (or of the existing RayJob), when the operator knows it.
    pool: NodePool | None = None
    #: Now, RFC 3339 (for condition transition times and start/completion times).
    now: str = ""
    #: For a Kueue job: what the operator's own pools say about it, when worth saying (never held).
    advice: str | None = None
    #: The cluster's priority classes (name -> value): a Kueue job's custom priority name maps
    #: through them to a shipped WorkloadPriorityClass.
    priority_classes: Mapping[str, int] | None = None


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureTokenSecret:
    """Create the job's Ray token Secret (``body`` has no data: the executor adds a random token)
    unless it exists; an existing one that this job owns is kept."""

    body: Mapping[str, Any]


@dataclass(frozen=True)
class ApplyNetworkPolicy:
    body: Mapping[str, Any]


@dataclass(frozen=True)
class CreateRayJob:
    body: Mapping[str, Any]


@dataclass(frozen=True)
class DeleteRayJob:
    name: str


@dataclass(frozen=True)
class ReleasePlacement:
    """Free what the job holds (or awaits) in the scheduler's book."""


@dataclass(frozen=True)
class WriteStatus:
    status: TrainingJobStatus


@dataclass(frozen=True)
class EmitEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


Action = EnsureTokenSecret | ApplyNetworkPolicy | CreateRayJob | DeleteRayJob | ReleasePlacement | WriteStatus | EmitEvent


@dataclass
class _Plan:
    """The actions being collected, and the status being built."""

    old: TrainingJobStatus
    status: TrainingJobStatus
    actions: list[Action] = field(default_factory=list)

    def update(self, **fields: Any) -> None:
        self.status = self.status.model_copy(update=fields)

    def condition(self, kind: str, ok: bool, reason: str, message: str, now: str) -> None:
        """Set a condition; its transition time moves only when its status flips."""
        value: Literal["True", "False"] = "True" if ok else "False"
        old = self.status.condition(kind)
        when = old.lastTransitionTime if old is not None and old.status == value else now
        new = Condition(type=kind, status=value, reason=reason, message=message, lastTransitionTime=when or None,
                        observedGeneration=self.status.observedGeneration)
        others = [c for c in self.status.conditions if c.type != kind]
        self.update(conditions=sorted([*others, new], key=lambda c: c.type))

    def ended(self, succeeded: bool, reason: str, message: str, now: str) -> None:
        """The job ended: ``Finished``, and ``Complete`` or ``Failed`` (what ``kubectl wait
        --for=condition=Complete`` reads), as a Kubernetes Job reports its end."""
        self.condition("Finished", True, reason, message, now)
        self.condition("Complete" if succeeded else "Failed", True, reason, message, now)

    def event_if_changed(self, kind: str, event_type: str, reason: str) -> None:
        """Emit an Event when condition ``kind`` differs from what the old status said."""
        new, old = self.status.condition(kind), self.old.condition(kind)
        if new is None:
            return
        if old is None or (old.status, old.reason, old.message) != (new.status, new.reason, new.message):
            self.actions.append(EmitEvent(event_type, reason, new.message or reason))

    def finish(self) -> list[Action]:
        if self.status != self.old:
            self.actions.append(WriteStatus(self.status))
        return self.actions


# -- the function ---------------------------------------------------------------------------------


def owned_rayjobs(desired: Desired, rayjobs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The RayJobs that belong to this TrainingJob (by uid label or owner reference), oldest first."""
    def ours(rj: Mapping[str, Any]) -> bool:
        meta = rj.get("metadata", {})
        if (meta.get("labels") or {}).get(JOB_UID_LABEL) == desired.uid:
            return True
        return any(ref.get("uid") == desired.uid for ref in meta.get("ownerReferences") or [])

    def age(rj: Mapping[str, Any]) -> tuple[bool, str, str]:
        meta = rj.get("metadata", {})
        return (meta.get("name") != desired.rayjob_name, meta.get("creationTimestamp", ""), meta.get("name", ""))

    return sorted((rj for rj in rayjobs if ours(rj)), key=age)


def needs_placement(desired: Desired, rayjobs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the scheduler must be asked: a valid, unsuspended, unfinished job without a RayJob
    (and not one whose RayJob vanished while it ran)."""
    status = desired.status
    return (desired.spec is not None and not desired.suspend and not owned_rayjobs(desired, rayjobs)
            and status.phase not in FINISHED_PHASES and not _vanished(status))


def _vanished(status: TrainingJobStatus) -> bool:
    return status.rayJob is not None and status.phase in ("Starting", "Running")


def kueue_waiting(queue: str | None) -> str:
    return "waiting for Kueue to admit it" + (f" in LocalQueue {queue}" if queue else "")


def rayjob_phase(rayjob: Mapping[str, Any], kueue: bool = False, queue: str | None = None) -> tuple[str, str]:
    """(phase, words) of a RayJob from KubeRay's ``jobDeploymentStatus`` and ``jobStatus``; a Kueue
    job's RayJob that is still suspended (``spec.suspend``) waits for Kueue's admission."""
    st = rayjob.get("status") or {}
    deployment, job = st.get("jobDeploymentStatus") or "", st.get("jobStatus") or ""
    detail = st.get("message") or st.get("reason") or ""
    held = kueue and bool((rayjob.get("spec") or {}).get("suspend"))
    if held and deployment not in ("Complete", "Failed", "ValidationFailed"):
        phase, detail = "Pending", detail or kueue_waiting(queue)
    elif deployment == "Complete":
        phase = "Succeeded" if job == "SUCCEEDED" else "Failed"
    elif deployment in ("Failed", "ValidationFailed"):
        phase = "Failed"
    elif deployment in ("Running", "Retrying"):
        phase = "Running" if job == "RUNNING" or deployment == "Retrying" else "Starting"
    elif deployment in ("Suspending", "Suspended"):
        phase = "Pending" if kueue else "Suspending"
        detail = detail or (kueue_waiting(queue) if kueue else "")
    else:  # "", Initializing, Waiting, New
        phase = "Starting"
    words = f"RayJob {rayjob.get('metadata', {}).get('name')}: {deployment or 'New'}"
    words += f", Ray job {job}" if job else ""
    return phase, words + (f" ({detail})" if detail else "")


def reconcile(desired: Desired, observed: Observed, config: RuntimeConfig) -> list[Action]:
    """What to do about one TrainingJob now (see the module docstring for the rules)."""
    plan = _Plan(desired.status, desired.status.model_copy(update={"observedGeneration": desired.generation}))
    ours = owned_rayjobs(desired, observed.rayjobs)
    for extra in ours[1:]:  # rule 1
        name = extra["metadata"]["name"]
        plan.actions.append(DeleteRayJob(name))
        plan.actions.append(EmitEvent("Warning", "DuplicateRayJob", f"deleted duplicate RayJob {name}"))
    current = ours[0] if ours else None
    finished = plan.old.phase in FINISHED_PHASES

    if desired.suspend and not finished:  # rule 2
        return _suspend(plan, current, observed.now)
    if finished:  # rule 3
        return []
    if current is not None:  # rule 4
        return _mirror(plan, desired, current, observed)
    if _vanished(plan.old):  # rule 5
        assert plan.old.rayJob is not None
        message = f"RayJob {plan.old.rayJob.name} was deleted while the job ran; resubmit to run it again"
        plan.update(phase="Failed", message=message, completionTime=observed.now or None)
        plan.ended(False, "RayJobDeleted", message, observed.now)
        plan.actions.append(ReleasePlacement())
        plan.event_if_changed("Finished", "Warning", "RayJobDeleted")
        return plan.finish()
    if desired.spec is None:  # rule 6
        message = f"invalid spec: {desired.invalid}"
        plan.update(phase="Invalid", message=message)
        plan.condition("Valid", False, "InvalidSpec", message, observed.now)
        plan.actions.append(ReleasePlacement())
        plan.event_if_changed("Valid", "Warning", "InvalidSpec")
        return plan.finish()
    plan.condition("Valid", True, "SpecValid", "", observed.now)
    return _start_or_wait(plan, desired, desired.spec, observed, config)


def _suspend(plan: _Plan, current: Mapping[str, Any] | None, now: str) -> list[Action]:
    if current is not None:
        plan.actions.append(DeleteRayJob(current["metadata"]["name"]))
    plan.actions.append(ReleasePlacement())
    message = "suspended: set spec.suspend to false to run it again (from its latest checkpoint)"
    plan.update(phase="Suspended", message=message, placement=None)
    plan.condition("Suspended", True, "Suspended", message, now)
    plan.event_if_changed("Suspended", "Normal", "Suspended")
    return plan.finish()


def _mirror(plan: _Plan, desired: Desired, rayjob: Mapping[str, Any], observed: Observed) -> list[Action]:
    queue = desired.kueue_queue
    phase, words = rayjob_phase(rayjob, kueue=queue is not None, queue=queue)
    st = rayjob.get("status") or {}
    meta = rayjob.get("metadata", {})
    attempts = max(plan.old.attempts, 1 + int(st.get("failed") or 0))
    plan.update(phase=phase, message=words, attempts=attempts, rayJob=RayJobStatus(
        name=meta["name"], jobStatus=st.get("jobStatus") or None,
        deploymentStatus=st.get("jobDeploymentStatus") or None, dashboardURL=st.get("dashboardURL") or None,
        message=st.get("message") or None))
    if plan.status.placement is None and observed.pool is not None:
        pool = observed.pool
        plan.update(placement=PlacementStatus(pool=pool.name, accelerator=pool.accelerator, nodes=0,
                                              workers=desired.spec.resources.workers if desired.spec else 1))
    if plan.old.condition("Suspended") is not None:
        plan.condition("Suspended", False, "Resumed", "", observed.now)
    if queue is not None and phase not in FINISHED_PHASES:  # Kueue admits (unsuspends) or holds it
        admitted = not (rayjob.get("spec") or {}).get("suspend")
        words_k = (f"admitted by Kueue (LocalQueue {queue})" if admitted
                   else _kueue_words(queue, observed, desired.spec))
        if not admitted:
            plan.update(message=words_k)
        plan.condition("Scheduled", admitted, "Admitted" if admitted else "AwaitingAdmission", words_k,
                       observed.now)
        plan.event_if_changed("Scheduled", "Normal", "Admitted" if admitted else "AwaitingAdmission")
    if plan.old.startTime is None and (phase == "Running" or phase in FINISHED_PHASES):
        plan.update(startTime=st.get("startTime") or observed.now or None)
    plan.condition("Running", phase == "Running", phase, words, observed.now)
    if phase in FINISHED_PHASES:
        plan.update(completionTime=st.get("endTime") or observed.now or None)
        plan.ended(phase == "Succeeded", phase, words, observed.now)
        plan.actions.append(ReleasePlacement())
        plan.event_if_changed("Finished", "Normal" if phase == "Succeeded" else "Warning", phase)
    elif plan.old.phase != phase:
        plan.actions.append(EmitEvent("Normal", phase, words))
    return plan.finish()


def _kueue_words(queue: str, observed: Observed, spec: JobSpec | None) -> str:
    note = kueue_priority(spec.resources.priority, known=observed.priority_classes)[1] if spec else None
    return kueue_waiting(queue) + "".join(f"; {w}" for w in (note, observed.advice) if w)


def _start_or_wait(plan: _Plan, desired: Desired, spec: JobSpec, observed: Observed,
                   config: RuntimeConfig) -> list[Action]:
    decision = observed.decision
    queue = desired.kueue_queue
    if queue is not None and observed.pool is not None:  # Kueue admits it: create it suspended, hold nothing
        words = _kueue_words(queue, observed, spec)
        plan.actions.append(EnsureTokenSecret(token_secret(desired.job)))
        plan.actions.append(ApplyNetworkPolicy(network_policy(desired.job, config)))
        plan.actions.append(CreateRayJob(rayjob_manifest(desired.job, spec, observed.pool, config, queue,
                                                         observed.priority_classes)))
        plan.update(phase="Pending", message=words, attempts=plan.old.attempts + 1,
                    rayJob=RayJobStatus(name=desired.rayjob_name), placement=None)
        plan.condition("Scheduled", False, "AwaitingAdmission", words, observed.now)
        if plan.old.condition("Suspended") is not None:
            plan.condition("Suspended", False, "Resumed", "", observed.now)
        plan.event_if_changed("Scheduled", "Normal", "AwaitingAdmission")
        return plan.finish()
    if isinstance(decision, Place) and observed.pool is not None:
        pool = observed.pool
        placement = decision.placement
        words = f"placed on {placement.describe()}"
        plan.actions.append(EnsureTokenSecret(token_secret(desired.job)))
        plan.actions.append(ApplyNetworkPolicy(network_policy(desired.job, config)))
        plan.actions.append(CreateRayJob(rayjob_manifest(desired.job, spec, pool, config, desired.kueue_queue)))
        plan.update(phase="Starting", message=words, attempts=plan.old.attempts + 1,
                    rayJob=RayJobStatus(name=desired.rayjob_name),
                    placement=PlacementStatus(pool=pool.name, accelerator=pool.accelerator,
                                              nodes=len(placement.shares), workers=spec.resources.workers))
        plan.condition("Scheduled", True, "Placed", words, observed.now)
        if plan.old.condition("Suspended") is not None:
            plan.condition("Suspended", False, "Resumed", "", observed.now)
        plan.event_if_changed("Scheduled", "Normal", "Scheduled")
        return plan.finish()
    if isinstance(decision, Wait):
        reason = "Unschedulable" if decision.permanent else "Waiting"
        words = "; ".join(r.text for r in decision.reasons) or "waiting for room"
        plan.update(phase="Pending", message=f"{'cannot be placed' if decision.permanent else 'waiting'}: {words}",
                    placement=None)
        plan.condition("Scheduled", False, reason, words, observed.now)
        plan.event_if_changed("Scheduled", "Warning", reason)
    return plan.finish()


def pool_of(rayjob: Mapping[str, Any]) -> str | None:
    """The pool a RayJob was placed on (our label)."""
    return (rayjob.get("metadata", {}).get("labels") or {}).get(POOL_LABEL)
