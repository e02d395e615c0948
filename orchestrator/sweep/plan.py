"""A sweep's dry run: what would run, and on Kubernetes the one RayJob the sweep becomes.

On Kubernetes a sweep is one KubeRay RayJob: its entrypoint runs ``orchestrator tune`` on the
sweep spec (carried in the head's ``ORCHESTRATOR_SPEC_YAML`` environment variable, like a job's
spec) with ``--backend local``, which joins the RayJob's Ray cluster; its worker group has room for
``max_concurrent`` trials at once (the job's workers times ``max_concurrent``). With it go its Ray
token Secret and its NetworkPolicy (:func:`kubernetes_stream`: the three objects ``tune -b
kubernetes --dry-run -o yaml`` prints for ``kubectl apply -f -``). With ``kubernetes.local_queue``
the RayJob is created suspended with Kueue's labels, for Kueue to admit. The manifests come from the
same functions the operator uses for jobs (:mod:`orchestrator.backends.k8s.manifests`), so they
validate against KubeRay's CRD.
"""

from __future__ import annotations

from typing import Any

from orchestrator.settings import Settings
from orchestrator.spec.loader import dump_yaml
from orchestrator.sweep.models import AshaScheduler, PbtScheduler, SweepSpec


def _scheduler(sweep: SweepSpec) -> dict[str, Any]:
    sched = sweep.tune.scheduler
    out: dict[str, Any] = sched.model_dump(mode="json")
    if isinstance(sched, AshaScheduler):
        out["max_t"] = sweep.max_epochs()
        out["time_attr"] = "epoch"
    elif isinstance(sched, PbtScheduler):
        out["time_attr"] = "epoch"
    return out


def sweep_plan(sweep: SweepSpec, backend: str, settings: Settings, spec_path: str | None = None) -> dict[str, Any]:
    """The resolved plan of a sweep for ``--dry-run`` (Kubernetes: the RayJob, its token Secret and
    its NetworkPolicy)."""
    r = sweep.job.resources
    per_worker = r.ray_resources_per_worker()
    plan: dict[str, Any] = {
        "backend": backend,
        "sweep": sweep.name,
        "framework": sweep.job.framework,
        "trials": sweep.tune.total_trials,
        "max_concurrent": sweep.tune.max_concurrent,
        "metric": sweep.tune.metric,
        "mode": sweep.tune.mode,
        "search": sweep.tune.search,
        "search_space": dict(sweep.tune.search_space),
        "scheduler": _scheduler(sweep),
        "trial": {
            "trainer": "ray.train.torch.TorchTrainer" if sweep.job.framework == "torch"
            else "ray.train.tensorflow.TensorflowTrainer",
            "workers": r.workers,
            "resources_per_worker": per_worker,
            "trial_process_cpus": sweep.tune.trial_cpus,
            "epochs": sweep.job.training.epochs,
        },
        "full_budget_trial_epochs": sweep.tune.total_trials * sweep.max_epochs(),
    }
    if backend == "kubernetes":
        from orchestrator.backends.k8s.client import resolve_kube_target

        target = resolve_kube_target(settings.kube_namespace, settings.kube_context, settings.kubeconfig)
        plan.update(kubernetes_manifests(sweep, target.namespace, spec_path))
    else:
        plan["job_home"] = str(settings.jobs_dir)
    return plan


def kubernetes_manifests(sweep: SweepSpec, namespace: str, spec_path: str | None = None) -> dict[str, Any]:
    """``{"rayJob": ..., "secret": ..., "networkPolicy": ...}``: the one RayJob that runs the sweep
    (its head carries the sweep spec in ``ORCHESTRATOR_SPEC_YAML``), its Ray token Secret (a
    placeholder token) and its NetworkPolicy."""
    from orchestrator.backends.k8s import SPEC_ENV
    from orchestrator.backends.k8s.kueue import local_queue
    from orchestrator.backends.k8s.manifests import (
        TOKEN_PLACEHOLDER,
        RuntimeConfig,
        cluster_paths,
        network_policy,
        rayjob_manifest,
        token_secret,
    )
    from orchestrator.backends.k8s.pools import assumed_pool
    from orchestrator.backends.kubernetes import portable_paths

    config = RuntimeConfig()
    job = portable_paths(sweep.job, spec_path)
    # room for max_concurrent trials at once: the job's workers times max_concurrent worker pods
    concurrent = sweep.tune.max_concurrent
    capacity = job.model_copy(update={"resources": job.resources.model_copy(
        update={"workers": job.resources.workers * concurrent})})
    pool = assumed_pool(capacity)
    owner = {"metadata": {"name": sweep.name, "namespace": namespace, "uid": ""}}
    queue = local_queue(owner, job, everywhere=config.kueue)
    rayjob = rayjob_manifest(owner, capacity, pool, config, queue)
    rayjob["metadata"].pop("ownerReferences", None)  # no TrainingJob owns a sweep's RayJob
    rayjob["metadata"]["labels"]["orchestrator.dev/kind"] = "sweep"
    rayjob["spec"]["entrypoint"] = (
        "python -m orchestrator.backends.k8s.driver tune --backend local --quiet --output json"
    )
    rayjob["spec"]["backoffLimit"] = 0  # a failed sweep is resumed with `orchestrator resume`, not rerun whole
    data = {**cluster_paths(job.model_dump(mode="json"), config.workdir), "tune": sweep.tune.model_dump(mode="json")}
    [head] = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    [carried] = [e for e in head["env"] if e["name"] == SPEC_ENV]
    carried["value"] = dump_yaml(data)
    extras = []
    for obj in (token_secret(owner, TOKEN_PLACEHOLDER), network_policy(owner, config)):
        obj["metadata"].pop("ownerReferences", None)
        extras.append(obj)
    placement: dict[str, Any] = {"pool": pool.name, "from": f"assumed pool {pool.name} with room for {concurrent} "
                                                            "trials", "worker_pods": capacity.resources.workers}
    if queue:
        placement["from"] = f"Kueue LocalQueue {queue} admits it (workers shaped as pool {pool.name})"
    return {
        "placement": placement,
        "rayJob": rayjob,
        "secret": extras[0],
        "networkPolicy": extras[1],
    }


def kubernetes_stream(sweep: SweepSpec, namespace: str, spec_path: str | None = None) -> list[dict[str, Any]]:
    """The sweep's Secret (placeholder token), NetworkPolicy and RayJob, in the order ``kubectl
    apply -f -`` needs them (the RayJob's pods mount the Secret)."""
    manifests = kubernetes_manifests(sweep, namespace, spec_path)
    return [manifests["secret"], manifests["networkPolicy"], manifests["rayJob"]]
