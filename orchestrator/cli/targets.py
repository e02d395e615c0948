"""Where a job runs: the ``--backend/--address/--namespace/--context`` options, and finding a job's
backend from its id alone.

A job submitted to a cluster (backends ray and kubernetes) leaves an entry in this machine's job
store (:class:`orchestrator.store.JobTarget`): its backend, the Ray Jobs API URL, or the namespace and
kubeconfig context. ``status JOB`` (and ``logs``, ``cancel``, ``resume``, ``explain``) look the id up
there when no ``--backend`` is given; options given on the command line override what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from orchestrator.backends.base import Backend, backend_names, get_backend
from orchestrator.cli.common import settings_of
from orchestrator.errors import JobNotFoundError, UsageError
from orchestrator.settings import Settings
from orchestrator.store import JobStore, JobTarget

BACKEND_OPTION = click.option(
    "--backend", "-b", default=None, type=click.Choice(backend_names()),
    help="Where the job runs (default: where this machine submitted it, else local).",
)


def target_options(func: Any) -> Any:
    """--backend plus where that backend is: --address (ray), --namespace/--context (kubernetes)."""
    func = click.option("--context", "kube_context", default=None, metavar="CTX",
                        help="kubeconfig context (backend kubernetes; default: the job's, else "
                             "ORCHESTRATOR_KUBE_CONTEXT, else the current context).")(func)
    func = click.option("--namespace", "-n", "kube_namespace", default=None, metavar="NS",
                        help="Kubernetes namespace (backend kubernetes; default: the job's, else "
                             "ORCHESTRATOR_NAMESPACE, else the context's namespace, else default).")(func)
    func = click.option("--address", "ray_address", default=None, metavar="URL",
                        help="The Ray cluster's Jobs API, e.g. http://head:8265 (backend ray; default: the "
                             "job's, else ORCHESTRATOR_RAY_ADDRESS).")(func)
    return BACKEND_OPTION(func)


@dataclass(frozen=True)
class Where:
    """The backend a command talks to, with its settings, and the record it came from (if any)."""

    backend: str
    settings: Settings
    recorded: JobTarget | None = None


def _recorded(settings: Settings, job_id: str, backend: str | None, address: str | None, namespace: str | None,
              context: str | None) -> JobTarget | None:
    """The recorded place of ``job_id`` on ``backend`` (any cluster backend when None); where several
    are recorded, the one the options given agree with. None if none."""
    if not settings.db_path.exists():  # nothing submitted from here yet: create no store to read
        return None

    def places(targets: list[JobTarget]) -> set[tuple[str | None, ...]]:
        return {(t.job_id, t.backend, t.namespace, t.context, t.address) for t in targets}

    found = [t for t in JobStore(settings.db_path).targets(job_id) if backend is None or t.backend == backend]
    if len(places(found)) > 1:  # the same id in two places: the options given may tell which
        found = [t for t in found if address in (None, t.address) and namespace in (None, t.namespace)
                 and context in (None, t.context)] or found
    if len(places(found)) > 1:
        shown = "; ".join(f"{t.job_id}: {t.options()}" for t in found[:6])
        raise UsageError(f"{job_id!r} names {len(places(found))} jobs submitted from this machine: {shown}",
                         fix="give the whole id and say where it runs (the options shown)")
    return found[0] if found else None


def _local_match(settings: Settings, job_id: str) -> str | None:
    """"exact" when this machine's job store has a job ``job_id``; "prefix" when it is the prefix of
    one or more of them; else None."""
    if not settings.db_path.exists():
        return None
    try:
        record = JobStore(settings.db_path).get(job_id)
    except JobNotFoundError:
        return None
    except UsageError:
        return "prefix"  # an ambiguous prefix: the local backend's `get` says which jobs it matches
    return "exact" if record.id == job_id else "prefix"


def _goes_local(settings: Settings, job_id: str, cluster_options: bool) -> bool:
    """Whether a command about ``job_id`` with no --backend is about this machine's own job: on an
    exact local id, or on a prefix of local ids when no cluster job is recorded under it. Any of
    --address/-n/--context says the job is on a cluster, and an exact recorded cluster id wins over
    a local prefix match; a prefix that matches both local and cluster jobs is refused."""
    if cluster_options:
        return False
    local = _local_match(settings, job_id)
    if local is None:
        return False
    if local == "exact":
        return True
    recorded = JobStore(settings.db_path).targets(job_id)
    if not recorded:
        return True
    if any(t.job_id == job_id for t in recorded):
        return False
    shown = ", ".join(sorted({t.job_id for t in recorded})[:6])
    raise UsageError(f"{job_id!r} is the prefix of this machine's local jobs and of cluster jobs submitted "
                     f"from here ({shown})",
                     fix="give the whole id (`orchestrator list` shows the local ones), or -b local")


def locate(ctx: click.Context, job_id: str | None, backend: str | None, ray_address: str | None,
           kube_namespace: str | None, kube_context: str | None) -> Where:
    """Which backend (and where) a command about ``job_id`` goes to.

    An explicit ``--backend`` wins; else a job of this machine's store is local (see
    :func:`_goes_local`: an exact id, or a prefix no cluster job is recorded under, and no cluster
    option given); else the recorded place of a cluster job; else the backend the options imply.
    Options given override what was recorded for the same backend.
    """
    settings = settings_of(ctx)
    recorded: JobTarget | None = None
    if job_id is not None and backend != "local":
        if backend is None and _goes_local(settings, job_id,
                                           _cluster_options(ray_address, kube_namespace, kube_context)):
            backend = "local"
        else:
            recorded = _recorded(settings, job_id, backend, ray_address, kube_namespace, kube_context)
            if recorded is None and backend is None and not _cluster_options(ray_address, kube_namespace,
                                                                               kube_context):
                raise JobNotFoundError(
                    f"no job {job_id!r} in the job store {settings.db_path}, nor among the cluster jobs "
                    "submitted from this machine",
                    fix="`orchestrator list` shows this machine's jobs; for a job submitted elsewhere, say where "
                        "it runs: -b ray --address http://HEAD:8265, or -b kubernetes -n NAMESPACE [--context CTX]",
                )
    if recorded is not None:
        backend = backend or recorded.backend
        ray_address = ray_address or recorded.address
        if kube_context is None and recorded.context is not None:
            kube_context = recorded.context
            from orchestrator.backends.k8s.client import resolve_kube_target

            # a context the kubeconfig lost: say it was the job's (the backend checks given ones)
            resolve_kube_target(kube_namespace or recorded.namespace, kube_context, settings.kubeconfig,
                                recorded=True)
        kube_namespace = kube_namespace or recorded.namespace
    if backend is None:
        backend = _implied_backend(ray_address, kube_namespace, kube_context)
    settings = settings.with_overrides(ray_address=ray_address, kube_namespace=kube_namespace,
                                       kube_context=kube_context)
    return Where(backend, settings, recorded)


def _cluster_options(ray_address: str | None, kube_namespace: str | None, kube_context: str | None) -> bool:
    return any(v is not None for v in (ray_address, kube_namespace, kube_context))


def _implied_backend(ray_address: str | None, kube_namespace: str | None, kube_context: str | None) -> str:
    """No --backend and no record: --address means ray, -n/--context kubernetes; else local."""
    if ray_address is not None and (kube_namespace is not None or kube_context is not None):
        raise UsageError("--address (backend ray) and -n/--context (backend kubernetes) name two backends",
                         fix="give --backend ray or --backend kubernetes")
    if ray_address is not None:
        return "ray"
    if kube_namespace is not None or kube_context is not None:
        return "kubernetes"
    return "local"


def backend_for(ctx: click.Context, backend: str | None, ray_address: str | None, kube_namespace: str | None,
                kube_context: str | None, job_id: str | None = None) -> Backend:
    """The backend a command uses: see :func:`locate`."""
    where = locate(ctx, job_id, backend, ray_address, kube_namespace, kube_context)
    return get_backend(where.backend, where.settings)
