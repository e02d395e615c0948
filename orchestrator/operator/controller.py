"""The controller: read the cluster, ask the scheduler, run ``reconcile``, carry out its actions.

Everything here is plain synchronous code over :class:`KubeApi` (the official client); kopf calls
it from its worker threads (see :mod:`orchestrator.operator.handlers`). It is restart-safe
because it keeps nothing that the cluster does not also say:

* the TrainingJob is re-read before each reconciliation (a handler's body may be stale);
* its RayJobs are found by label (and owner uid) before anything is created, and a RayJob's name
  is a function of the TrainingJob's, so even two racing creates cannot make two RayJobs;
* after a restart, jobs that have a RayJob take their pool back in the scheduler's book (kopf's
  resume handlers) before waiting jobs are placed.

When a job frees its pool, or the pools change, the waiting jobs are *nudged*: an annotation is
bumped on each, which makes kopf reconcile them again.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeGuard

from orchestrator.backends.k8s import (
    GROUP,
    JOB_LABEL,
    JOB_UID_LABEL,
    MANAGED_BY,
    POOLS_CONFIGMAP_LABEL,
    RAY_TOKEN_KEY,
    RETRY_ANNOTATION,
)
from orchestrator.backends.k8s.client import KubeApi
from orchestrator.backends.k8s.convert import field_path, job_spec_from_training_job
from orchestrator.backends.k8s.kuberay import RAYJOB_CRD_NAME, rayjob_crd_error
from orchestrator.backends.k8s.kueue import admission_pool, local_queue
from orchestrator.backends.k8s.manifests import (
    RuntimeConfig,
    kubernetes_issues,
    network_policy_name,
    rayjob_name,
    token_secret_name,
)
from orchestrator.backends.k8s.placement import PlacementBook, decide_once
from orchestrator.backends.k8s.pools import GKE_NODEPOOL_LABEL, cluster_from_configmaps, pools_from_nodes
from orchestrator.backends.k8s.status import format_time
from orchestrator.errors import BackendError, NotAvailableError, SpecError, TransientBackendError
from orchestrator.operator.metrics import OperatorMetrics
from orchestrator.operator.reconcile import (
    Action,
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
    pool_of,
    reconcile,
)
from orchestrator.scheduler import Place, Wait
from orchestrator.spec import validate_spec_data
from orchestrator.spec.models import JobSpec

log = logging.getLogger("orchestrator.operator")


@dataclass(frozen=True)
class OperatorConfig:
    """What ``orchestrator operator`` is told on its command line."""

    #: Namespaces whose TrainingJobs it runs; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    #: Where it reads pool ConfigMaps; None: every namespace (watched; else polled every pools_poll_s).
    pools_namespace: str | None = None
    pools_poll_s: float = 15.0
    pools_from_nodes: bool = False
    node_pool_label: str = GKE_NODEPOOL_LABEL
    #: Waiting jobs are also retried this often (besides when pools or free capacity change).
    retry_interval_s: float = 60.0
    metrics_port: int | None = 8080
    metrics_host: str = "0.0.0.0"
    #: kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz (None: off).
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    policy: str | None = None
    max_workers: int = 4
    #: Namespaces whose jobs Kueue admits (LocalQueue: the spec's resources.queue); ``runtime.kueue``: all.
    kueue_namespaces: tuple[str, ...] = ()
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def job_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _owned_by(obj: Mapping[str, Any] | None, job: Mapping[str, Any]) -> bool:
    """Does ``obj`` name this TrainingJob (its uid) among its owners?"""
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == job["metadata"].get("uid") for r in refs)


def _labelled_for(obj: Mapping[str, Any] | None, uid: str) -> TypeGuard[Mapping[str, Any]]:
    """Was ``obj`` made for the TrainingJob ``uid`` (its uid label, or an owner reference)?"""
    if obj is None:
        return False
    meta = obj.get("metadata", {})
    return bool((meta.get("labels") or {}).get(JOB_UID_LABEL) == uid
                or any(r.get("uid") == uid for r in meta.get("ownerReferences") or []))


def desired_from(job: Mapping[str, Any], config: OperatorConfig) -> Desired:
    """Validate the TrainingJob's spec once, here at the edge."""
    meta = job.get("metadata", {})
    queue = local_queue(job, None)
    try:
        data = job_spec_from_training_job(job)  # camelCase -> snake_case; injections from the annotation
        spec = validate_spec_data(data, source=f"TrainingJob {meta.get('namespace')}/{meta.get('name')}")
        issues = kubernetes_issues(spec)
        if issues:
            raise SpecError(issues)
    except SpecError as exc:
        words = "; ".join(f"{field_path(i.field_path) or '(top level)'}: {i.message}"
                          + (f" (fix: {i.fix})" if i.fix else "") for i in exc.issues)
        return Desired(job, None, words, queue)
    queue = local_queue(job, spec, everywhere=config.runtime.kueue, namespaces=config.kueue_namespaces)
    return Desired(job, spec, None, queue)


class Controller:
    """Reconciles TrainingJobs; shared by every kopf handler of one operator."""

    def __init__(self, api: KubeApi, config: OperatorConfig, *, book: PlacementBook | None = None,
                 metrics: OperatorMetrics | None = None, now: Callable[[], float] = time.time) -> None:
        self.api = api
        self.config = config
        self.book = book or PlacementBook(policy=config.policy)
        self.metrics = metrics or OperatorMetrics()
        self.now = now
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._phases: dict[str, str] = {}
        self._nudges = 0

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def check_kuberay(self) -> None:
        """At start-up: refuse to run against a KubeRay whose RayJob would drop the token Secret's
        name (see :mod:`orchestrator.backends.k8s.kuberay`)."""
        try:
            crd = self.api.get_crd(RAYJOB_CRD_NAME)
        except BackendError as exc:
            if "(HTTP 403)" not in exc.message:
                raise
            raise NotAvailableError(
                f"the operator may not read KubeRay's RayJob CRD {RAYJOB_CRD_NAME} to check its version: {exc.message}",
                fix="apply deploy/k8s/base again (ClusterRole orchestrator-operator-kuberay-crd: get on that one "
                    "CustomResourceDefinition)") from None
        error = rayjob_crd_error(crd)
        if error is not None:
            raise error
        log.info("KubeRay's RayJob CRD has authOptions.secretName")

    # -- TrainingJobs -----------------------------------------------------------------------

    def sync(self, namespace: str, name: str) -> None:
        """Reconcile one TrainingJob, read afresh (a no-op when it is gone)."""
        started = time.perf_counter()
        outcome = "error"
        try:
            with self._lock(job_key(namespace, name)):
                job = self.api.get_training_job(namespace, name)
                if job is not None and not job.get("metadata", {}).get("deletionTimestamp"):
                    self._sync(job)
            outcome = "ok"
        except BackendError as exc:
            outcome = "retry" if exc.transient else "error"
            raise
        finally:
            self.metrics.reconciled(outcome, time.perf_counter() - started)

    def _sync(self, job: Mapping[str, Any]) -> None:
        desired = desired_from(job, self.config)
        meta = job["metadata"]
        key = job_key(meta["namespace"], meta["name"])
        rayjobs = owned_rayjobs(desired, self.api.list_rayjobs(meta["namespace"], f"{JOB_LABEL}={meta['name']}"))
        nudge: list[str] = []
        decision, pool, advice = None, None, None
        cluster = self.book.cluster
        if desired.kueue_queue is not None:  # Kueue admits it: the book holds nothing for it
            if self.book.release(key):
                nudge += self.book.waiting()
            if desired.spec is not None:
                advice = self._advice(desired.spec)
            if needs_placement(desired, rayjobs):
                assert desired.spec is not None  # needs_placement checks it
                pool = admission_pool(desired.spec, cluster)
        elif needs_placement(desired, rayjobs):
            assert desired.spec is not None  # needs_placement checks it
            decision, nudge = self.book.place(key, desired.spec)
            if isinstance(decision, Place) and cluster is not None:
                pool = cluster.pool_by_name.get(decision.placement.pool)
            elif desired.spec is not None:
                self.metrics.waited(desired.spec.resources.queue)
        elif rayjobs and desired.spec is not None:
            pool_name = pool_of(rayjobs[0])
            if pool_name:
                self.book.restore(key, desired.spec, pool_name)
                pool = cluster.pool_by_name.get(pool_name) if cluster is not None else None
        observed = Observed(rayjobs=rayjobs, decision=decision, pool=pool, now=format_time(self.now()),
                            advice=advice, priority_classes=cluster.priority_classes if cluster is not None else None)
        actions = reconcile(desired, observed, self.config.runtime)
        freed = self._execute(job, actions)
        if freed:
            nudge += self.book.waiting()
        self._nudge([k for k in nudge if k != key])
        self.metrics.set_pools(self.book.usage())

    def _advice(self, spec: JobSpec) -> str | None:
        """What our scheduler sees for a Kueue job: said only when the known pools could never hold it."""
        cluster = self.book.cluster
        if cluster is None:
            return None
        decision = decide_once(cluster, spec)
        if isinstance(decision, Wait) and decision.permanent:
            return "the operator's node pools could never hold it: " + "; ".join(r.text for r in decision.reasons)
        return None

    def _execute(self, job: Mapping[str, Any], actions: list[Action]) -> bool:
        """Carry out ``actions`` in order; True when a placement was freed."""
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        key = job_key(ns, name)
        freed = False
        for action in actions:
            if isinstance(action, EnsureTokenSecret):
                self._ensure_token_secret(job, action.body)
            elif isinstance(action, ApplyNetworkPolicy):
                self._apply_network_policy(job, action.body)
            elif isinstance(action, CreateRayJob):
                self._create_rayjob(job, action.body)
            elif isinstance(action, DeleteRayJob):
                self.api.delete_rayjob(ns, action.name)
            elif isinstance(action, ReleasePlacement):
                freed = self.book.release(key) or freed
            elif isinstance(action, WriteStatus):
                self.api.patch_training_job_status(ns, name, action.status.to_patch())
                self._phases[key] = action.status.phase
                self.metrics.set_phases(self._phases)
            elif isinstance(action, EmitEvent):
                self.event(job, action.type, action.reason, action.message)
        return freed

    def _ensure_token_secret(self, job: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Create the Ray token Secret with a fresh random token, unless this job already has it
        (a resumed job keeps its token); a Secret of that name that is not this job's is an error."""
        meta = body["metadata"]
        with_token = {**body, "stringData": {RAY_TOKEN_KEY: secrets.token_urlsafe(32)}}
        if self.api.create_secret(with_token) is not None:
            log.info("created Secret %s/%s", meta["namespace"], meta["name"])
            return
        existing = self.api.get_secret(meta["namespace"], meta["name"])
        if not _owned_by(existing, job):
            self._refuse_foreign(job, "Secret", meta)

    def _apply_network_policy(self, job: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Create the job's NetworkPolicy, or set its spec when this job has it already; one of that
        name that is not this job's is an error (never overwritten: it may guard something else)."""
        meta = body["metadata"]
        if self.api.create_network_policy(body) is not None:
            return
        existing = self.api.get_network_policy(meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: create it on the next reconciliation
            raise TransientBackendError(f"the NetworkPolicy {meta['namespace']}/{meta['name']} vanished while "
                                        "it was written", retry_after=1)
        if not _owned_by(existing, job):
            self._refuse_foreign(job, "NetworkPolicy", meta)
        if existing.get("spec") != body["spec"]:
            self.api.patch_network_policy_spec(meta["namespace"], meta["name"], body["spec"])

    def _refuse_foreign(self, job: Mapping[str, Any], kind: str, meta: Mapping[str, Any]) -> NoReturn:
        """An object the job needs exists under its name but belongs to something else: never taken
        over (it may guard something else); a Warning Event ``<kind>Conflict`` and an error."""
        error = BackendError(f"a {kind} named {meta['name']} already exists in {meta['namespace']} "
                             "and does not belong to this TrainingJob",
                             fix=f"delete or rename that {kind}, or rename the TrainingJob")
        self.event(job, "Warning", f"{kind}Conflict", error.render())
        raise error

    def _create_rayjob(self, job: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        created = self.api.create_rayjob(body)
        meta = body["metadata"]
        if created is None:  # the name is taken: ours (a race) is fine, anyone else's is an error
            existing = self.api.get_rayjob(meta["namespace"], meta["name"])
            refs = (existing or {}).get("metadata", {}).get("ownerReferences") or []
            if not any(r.get("uid") == job["metadata"].get("uid") for r in refs):
                raise BackendError(f"a RayJob named {meta['name']} already exists in {meta['namespace']} "
                                   "and does not belong to this TrainingJob",
                                   fix="delete or rename that RayJob, or rename the TrainingJob")
            return
        self.metrics.rayjob_created(meta["labels"].get(f"{GROUP}/pool", ""))
        log.info("created RayJob %s/%s", meta["namespace"], meta["name"])

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        """The TrainingJob ``uid`` was deleted: delete what it owns, free its pool, nudge waiting jobs.

        Only objects that carry its uid go: a job created again under the same name before this
        deletion was handled keeps its RayJob, Secret and NetworkPolicy (and its pool)."""
        key = job_key(namespace, name)
        freed = False
        with self._lock(key):
            current = self.api.get_training_job(namespace, name)
            successor = current is not None and current.get("metadata", {}).get("uid") != uid
            if uid:
                for found in self.api.list_rayjobs(namespace, f"{JOB_LABEL}={name},{JOB_UID_LABEL}={uid}"):
                    self.api.delete_rayjob(namespace, found["metadata"]["name"], uid=found["metadata"].get("uid"))
                # owned by the TrainingJob (the garbage collector would delete them too); their
                # names are fixed, and each is deleted only when it carries this uid
                rayjob = rayjob_name(name, uid)
                secret = self.api.get_secret(namespace, token_secret_name(rayjob))
                if _labelled_for(secret, uid):
                    self.api.delete_secret(namespace, secret["metadata"]["name"], uid=secret["metadata"].get("uid"))
                policy = self.api.get_network_policy(namespace, network_policy_name(rayjob))
                if _labelled_for(policy, uid):
                    self.api.delete_network_policy(namespace, policy["metadata"]["name"],
                                                   uid=policy["metadata"].get("uid"))
            if not successor:  # the book's entry and the phase under this name are the new job's otherwise
                freed = self.book.release(key)
                self._phases.pop(key, None)
                self.metrics.set_phases(self._phases)
        if freed:
            self._nudge(self.book.waiting())
        self.metrics.set_pools(self.book.usage())

    def restore_all(self) -> int:
        """At start-up: every job that already has a RayJob takes its pool back in the book, before
        kopf's handlers place any waiting job. Returns how many were restored."""
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        restored = 0
        for namespace in namespaces:
            rayjobs = self.api.list_rayjobs(namespace, f"app.kubernetes.io/managed-by={MANAGED_BY}")
            for job in self.api.list_training_jobs(namespace):
                desired = desired_from(job, self.config)
                mine = owned_rayjobs(desired, rayjobs)
                pool = pool_of(mine[0]) if mine else None
                if desired.spec is not None and desired.kueue_queue is None and pool and desired.status.phase not in ("Succeeded", "Failed"):
                    self.book.restore(job_key(job["metadata"]["namespace"], desired.name), desired.spec, pool)
                    restored += 1
        self.metrics.set_pools(self.book.usage())
        return restored

    # -- pools and nudges -------------------------------------------------------------------

    def refresh_pools(self) -> bool:
        """Re-read the pools; when they changed, reschedule waiting jobs. True if they changed."""
        configmaps = self.api.list_configmaps(self.config.pools_namespace, f"{POOLS_CONFIGMAP_LABEL}=true")
        node_pools = pools_from_nodes(self.api.list_nodes(), self.config.node_pool_label) \
            if self.config.pools_from_nodes else []
        try:
            cluster = cluster_from_configmaps(configmaps, node_pools)
        except SpecError as exc:
            log.error("ignoring the node-pool ConfigMaps: %s", exc.render())
            return False
        if cluster == self.book.cluster:
            return False
        self.book.set_cluster(cluster)
        names = ", ".join(p.name for p in cluster.pools) if cluster else "none"
        log.info("node pools: %s", names)
        self.metrics.set_pools(self.book.usage())
        self.retry_waiting()
        return True

    def retry_waiting(self) -> int:
        """Nudge every job that waits for a pool (the periodic safety net); returns how many."""
        waiting = self.book.waiting()
        self._nudge(waiting)
        return len(waiting)

    def _nudge(self, keys: list[str]) -> None:
        """Make kopf reconcile these waiting jobs again (an annotation change is an update)."""
        for key in dict.fromkeys(keys):
            self._nudges += 1
            namespace, name = key.split("/", 1)
            patch = {"metadata": {"annotations": {RETRY_ANNOTATION: f"{format_time(self.now())}-{self._nudges}"}}}
            try:
                self.api.patch_training_job(namespace, name, patch)
            except BackendError as exc:  # the timer retries waiting jobs anyway
                log.warning("could not nudge %s: %s", key, exc)

    def event(self, job: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the TrainingJob (what `kubectl describe` shows)."""
        meta = job["metadata"]
        now = format_time(self.now())
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": job.get("apiVersion"), "kind": job.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": f"{MANAGED_BY}-operator"}, "reportingComponent": f"{GROUP}/operator",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.api.create_event(meta["namespace"], event)
        except BackendError as exc:  # an Event is a courtesy: never fail a reconciliation for it
            log.warning("could not post event %s for %s: %s", reason, meta["name"], exc)
