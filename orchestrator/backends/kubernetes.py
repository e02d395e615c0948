"""The ``kubernetes`` backend: a job is a ``TrainingJob`` custom resource; our operator runs it.

``submit`` creates the TrainingJob and returns at once (the cluster runs the job; follow it with
``status`` and ``logs``). The job's state lives in the TrainingJob's ``status``, written by the
operator -- nothing is kept on this machine. ``cancel`` sets ``spec.suspend``: the operator deletes
the RayJob and frees the placement; ``kubectl patch`` back to ``false`` runs the job again.

``logs`` reads the driver's output from the RayJob's *submitter* pod: in KubeRay's default
``K8sJobMode`` a Kubernetes Job runs ``ray job submit`` against the Ray head, and that command
streams the driver's log until the Ray job ends. It needs only the ``pods/log`` permission the
user already has, not network access to the Ray dashboard.

``dry_run`` prints the TrainingJob and what the operator would create for it: the RayJob (which
carries the spec), the Ray token Secret (with a placeholder token) and the NetworkPolicy.
``dry_run_manifests`` gives those three as a list ``kubectl apply -f -`` accepts (``submit
--dry-run -o yaml``). It reads the pool ConfigMaps from the cluster when it can; otherwise it
assumes a pool that just fits the job (and says so).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from orchestrator.backends.base import Backend, SubmitOptions
from orchestrator.backends.k8s import JOB_LABEL, POOLS_CONFIGMAP_LABEL
from orchestrator.backends.k8s.client import KubeApi, KubeTarget, load_api_client, resolve_kube_target
from orchestrator.backends.k8s.kueue import admission_pool, kueue_priority, local_queue
from orchestrator.backends.k8s.manifests import (
    TOKEN_PLACEHOLDER,
    RuntimeConfig,
    kubernetes_issues,
    network_policy,
    rayjob_manifest,
    rayjob_name,
    token_secret,
    training_job_manifest,
)
from orchestrator.backends.k8s.placement import decide_once
from orchestrator.backends.k8s.pools import assumed_pool, cluster_from_configmaps
from orchestrator.backends.k8s.status import TrainingJobStatus, record_from_training_job
from orchestrator.errors import BackendError, JobNotFoundError, OrchestratorError, SpecError, UsageError
from orchestrator.execution.handler import EventHandler
from orchestrator.scheduler import ClusterSpec, Place
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobTarget


def portable_paths(spec: JobSpec, spec_path: str | None) -> JobSpec:
    """Undo the local resolution of file paths inside the spec's directory (they name files in the
    image, relative to its working directory, on the cluster)."""
    if not spec_path:
        return spec
    base = os.path.dirname(os.path.abspath(spec_path))

    def portable(path: str) -> str:
        inside = os.path.commonpath([base, os.path.abspath(path)]) == base
        return os.path.relpath(path, base) if inside else path

    updates: dict[str, Any] = {}
    if not spec.data.is_builtin and "://" not in spec.data.source:
        updates["data"] = spec.data.model_copy(update={"source": portable(spec.data.source)})
    if spec.entrypoint:
        file_part, func = spec.entrypoint.rsplit(":", 1)
        updates["entrypoint"] = f"{portable(file_part)}:{func}"
    if spec.checkpoint.dir:
        updates["checkpoint"] = spec.checkpoint.model_copy(update={"dir": portable(spec.checkpoint.dir)})
    return spec.model_copy(update=updates) if updates else spec


class KubernetesBackend(Backend):
    """Jobs as TrainingJobs in ``settings.kube_namespace`` of ``settings.kube_context`` (unset: the
    kubeconfig's current context and that context's namespace, else ``default``)."""

    name = "kubernetes"

    #: Where the dry run reads pool ConfigMaps: the operator's namespace in deploy/k8s.
    pools_namespace = "orchestrator-system"

    def __init__(self, settings: Settings, api: KubeApi | None = None,
                 runtime: RuntimeConfig | None = None) -> None:
        super().__init__(settings)
        self._api = api
        self._target: KubeTarget | None = None
        self.runtime = runtime or RuntimeConfig()

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self.target  # noqa: B018 - a context the kubeconfig lacks: our message, not the client's
            self._api = KubeApi(load_api_client(self.settings.kube_context, self.settings.kubeconfig))
        return self._api

    @property
    def target(self) -> KubeTarget:
        """The namespace and context (resolved once: -n, else the context's namespace, else default)."""
        if self._target is None:
            self._target = resolve_kube_target(self.settings.kube_namespace, self.settings.kube_context,
                                               self.settings.kubeconfig)
        return self._target

    @property
    def namespace(self) -> str:
        return self.target.namespace

    # -- dry run ----------------------------------------------------------------------------

    def _cluster_pools(self) -> tuple[ClusterSpec | None, str]:
        """The pools the operator would see (None when they cannot be read), and where from."""
        where = f"node-pool ConfigMaps in namespace {self.pools_namespace}"
        try:
            cluster = cluster_from_configmaps(
                self.api.list_configmaps(self.pools_namespace, f"{POOLS_CONFIGMAP_LABEL}=true"))
        except OrchestratorError as exc:
            return None, f"{where} not readable ({exc.message})"
        return cluster, where if cluster is not None else f"no {where}"

    @staticmethod
    def check(spec: JobSpec, options: SubmitOptions) -> None:
        """Refuse a spec that is valid but cannot run as a TrainingJob (see ``kubernetes_issues``)."""
        issues = kubernetes_issues(spec)
        if issues:
            raise SpecError(issues, source=options.spec_path)

    def dry_run(self, spec: JobSpec, options: SubmitOptions) -> dict[str, Any]:
        self.check(spec, options)
        job = training_job_manifest(portable_paths(spec, options.spec_path), self.namespace)
        cluster, source = self._cluster_pools()
        plan: dict[str, Any] = {"trainingJob": job}
        owner = {**job, "metadata": {**job["metadata"], "uid": ""}}
        queue = local_queue(job, spec, everywhere=self.runtime.kueue)
        if queue:  # as the operator does: Kueue's quota decides; the pools only shape the workers
            pool = admission_pool(spec, cluster)
            known = cluster is not None and pool.name in cluster.pool_by_name
            plan["placement"] = {"pool": pool.name, "accelerator": pool.accelerator, "kueue": queue,
                                 "from": f"Kueue LocalQueue {queue} admits it; workers shaped as "
                                         + (f"pool {pool.name} ({source})" if known else f"assumed pool {pool.name}")}
            plan["rayJob"] = rayjob_manifest(owner, spec, pool, self.runtime, queue,
                                             cluster.priority_classes if cluster is not None else None)
            note = kueue_priority(spec.resources.priority,
                                  known=cluster.priority_classes if cluster is not None else None)[1]
            if note:
                plan["placement"]["priority"] = note
            plan["secret"] = token_secret(owner, TOKEN_PLACEHOLDER)
            plan["networkPolicy"] = network_policy(owner, self.runtime)
            return plan
        if cluster is None:
            pool = assumed_pool(spec)
            cluster, source = ClusterSpec(pools=[pool]), f"assumed pool {pool.name}: {source}"
        decision = decide_once(cluster, spec)
        if isinstance(decision, Place):
            pool = cluster.pool_by_name[decision.placement.pool]
            plan["placement"] = {"pool": pool.name, "accelerator": pool.accelerator,
                                 "nodes": len(decision.placement.shares), "from": source}
            plan["rayJob"] = rayjob_manifest(owner, spec, pool, self.runtime)
        else:
            plan["placement"] = {"pool": None, "from": source, "waits": [r.text for r in decision.reasons]}
            plan["rayJob"] = None
        plan["secret"] = token_secret(owner, TOKEN_PLACEHOLDER)
        plan["networkPolicy"] = network_policy(owner, self.runtime)
        return plan

    def dry_run_manifests(self, spec: JobSpec, options: SubmitOptions) -> list[dict[str, Any]]:
        """What the operator would create, applicable as it is: the Secret (placeholder token),
        the NetworkPolicy and the RayJob, without owner references (no TrainingJob owns them)."""
        plan = self.dry_run(spec, options)
        if plan["rayJob"] is None:
            raise BackendError(f"no pool can run {spec.name} now ({plan['placement']['from']}): "
                               + "; ".join(plan["placement"]["waits"]),
                               fix="see the plan with --dry-run -o text, or change the job's resources")
        out = []
        for obj in (plan["secret"], plan["networkPolicy"], plan["rayJob"]):
            meta = {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}
            out.append({**obj, "metadata": meta})
        return out

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, options: SubmitOptions, events: EventHandler | None = None) -> JobRecord:
        self.check(spec, options)
        body = training_job_manifest(portable_paths(spec, options.spec_path), self.namespace)
        if self.api.get_training_job(self.namespace, spec.name) is not None:
            raise UsageError(
                f"a TrainingJob named {spec.name!r} already exists in namespace {self.namespace}",
                fix=f"pick another spec name (--set name=...), or delete it: kubectl delete tj {spec.name} "
                    f"-n {self.namespace}",
            )
        created = self.api.create_training_job(body)
        record = record_from_training_job(created)
        self.remember(JobTarget(record.id, self.name, namespace=self.namespace, context=self.target.context))
        return record

    def _get(self, job_id: str) -> dict[str, Any]:
        obj = self.api.get_training_job(self.namespace, job_id)
        if obj is None:
            where = f"namespace {self.namespace}" + (f" of context {self.target.context}" if self.target.context else "")
            raise JobNotFoundError(f"no TrainingJob {job_id!r} in {where} (namespace from {self.target.namespace_from})",
                                   fix="list them with: orchestrator list --backend kubernetes -n NAMESPACE")
        return obj

    def training_job(self, job_id: str) -> dict[str, Any]:
        """The TrainingJob object, status included (:class:`JobNotFoundError` when there is none)."""
        return self._get(job_id)

    def status(self, job_id: str) -> JobRecord:
        return record_from_training_job(self._get(job_id))

    def list(self, limit: int = 100) -> list[JobRecord]:
        records = [record_from_training_job(o) for o in self.api.list_training_jobs(self.namespace)]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records[:limit]

    def cancel(self, job_id: str) -> JobRecord:
        """Suspend the job (the operator deletes its RayJob; unsuspend to run it again)."""
        self._get(job_id)
        patched = self.api.patch_training_job(self.namespace, job_id, {"spec": {"suspend": True}})
        if patched is None:
            raise JobNotFoundError(f"TrainingJob {job_id!r} was deleted meanwhile")
        return record_from_training_job(patched)

    def resume(self, job_id: str, options: SubmitOptions, events: EventHandler | None = None,
               epochs: int | None = None) -> JobRecord:
        """Run a suspended (cancelled) job again: ``spec.suspend`` back to false; the operator creates a
        new RayJob, which continues from the job's latest checkpoint. Returns at once, as ``submit`` does."""
        if epochs is not None:
            raise UsageError("--epochs does not apply to the kubernetes backend",
                             fix=f"orchestrator resume {job_id} (the TrainingJob's spec sets its epochs)")
        job = self._get(job_id)
        record = record_from_training_job(job)
        if not (job.get("spec") or {}).get("suspend"):
            if record.state.terminal:
                raise UsageError(
                    f"TrainingJob {job_id} is {record.state.value} (phase {record.result.get('phase')}); the operator "
                    "runs a finished TrainingJob no more",
                    fix=f"submit its spec again under another name (--set name=...), or delete it first: kubectl "
                        f"delete tj {job_id} -n {self.namespace}")
            raise UsageError(f"TrainingJob {job_id} is {record.state.value}, not suspended: nothing to resume",
                             fix=f"orchestrator status {job_id}")
        patched = self.api.patch_training_job(self.namespace, job_id, {"spec": {"suspend": False}})
        if patched is None:
            raise JobNotFoundError(f"TrainingJob {job_id!r} was deleted meanwhile")
        return record_from_training_job(patched)

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The driver's log, read from the RayJob's submitter pod (see the module docstring)."""
        job = self._get(job_id)
        status = TrainingJobStatus.parse(job.get("status"))
        name = status.rayJob.name if status.rayJob else rayjob_name(job_id, job["metadata"].get("uid", ""))
        pods = self.api.list_pods(self.namespace, f"job-name={name}")
        if not pods:
            pods = self.api.list_pods(self.namespace, f"{JOB_LABEL}={job_id}")
        if not pods:
            raise BackendError(
                f"no driver pod for {job_id} yet (phase {status.phase})",
                fix="wait until the RayJob is running: orchestrator status --backend kubernetes " + job_id,
            )
        newest = max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""))
        yield from self.api.pod_log(self.namespace, newest["metadata"]["name"], follow=follow)
