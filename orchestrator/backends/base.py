"""The backend interface and the registry that picks a backend by name.

A backend turns a validated :class:`JobSpec` into running work. Every backend has a dry run
(``dry_run`` returns the exact request it would send) separate from ``submit`` (TorchX's
``dryrun`` / ``schedule`` split), and answers ``status``, ``logs`` and ``cancel`` by job id.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.execution.handler import EventHandler
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobTarget


@dataclass(frozen=True)
class SubmitOptions:
    """How to submit: in the foreground with live events, or detached."""

    detach: bool = False
    spec_path: str | None = None
    #: Port of the job's Prometheus endpoint: 0 picks a free one, None serves none.
    metrics_port: int | None = 0
    metrics_host: str = "127.0.0.1"
    #: Keep /metrics up this long after the job ends, so a scraper sees the final values.
    metrics_linger_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """What every backend offers."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def dry_run(self, spec: JobSpec, options: SubmitOptions) -> dict[str, Any]:
        """The exact request ``submit`` would make, as plain data. Starts nothing."""

    def dry_run_manifests(self, spec: JobSpec, options: SubmitOptions) -> list[dict[str, Any]]:
        """The objects a dry run would create, as a stream ``kubectl apply -f -`` accepts; only
        backends that create cluster objects have them."""
        raise UsageError(f"backend {self.name} creates no cluster objects: --output yaml is for "
                         "--backend kubernetes", fix="use --output text or json for this backend's plan")

    @abstractmethod
    def submit(
        self, spec: JobSpec, options: SubmitOptions, events: EventHandler | None = None
    ) -> JobRecord:
        """Start the job; in the foreground, block until it ends and return the final record."""

    @abstractmethod
    def status(self, job_id: str) -> JobRecord: ...

    @abstractmethod
    def list(self, limit: int = 100) -> list[JobRecord]: ...

    @abstractmethod
    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]: ...

    @abstractmethod
    def cancel(self, job_id: str) -> JobRecord: ...

    def remember(self, target: JobTarget) -> None:
        """Note in this machine's job store where a cluster job runs, so that later commands find it
        from its id alone. The job runs whether or not this works (a warning says when it does not)."""
        from orchestrator.errors import JobStoreError
        from orchestrator.store import JobStore

        try:
            JobStore(self.settings.db_path).remember_target(target)
        except JobStoreError as exc:
            logging.getLogger("orchestrator").warning(
                "job %s runs, but where it runs was not recorded (%s): later commands need %s",
                target.job_id, exc.message, target.options())

    def resume(
        self,
        job_id: str,
        options: SubmitOptions,
        events: EventHandler | None = None,
        epochs: int | None = None,
    ) -> JobRecord:
        """Run a job that ended again from its latest checkpoint (``epochs``: train up to this many).

        A backend that can resume overrides this; the others refuse, saying what to do instead.
        """
        raise UsageError(
            f"the {self.name} backend cannot resume a job ({job_id})",
            fix=f"submit its spec again (`orchestrator submit SPEC --backend {self.name}`); with "
                "checkpoint.dir set to the job's checkpoints it continues from the latest one",
        )


_REGISTRY: dict[str, str] = {
    "local": "orchestrator.backends.local:LocalBackend",
    "ray": "orchestrator.backends.ray_cluster:RayClusterBackend",
    "kubernetes": "orchestrator.backends.kubernetes:KubernetesBackend",
}


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str, settings: Settings) -> Backend:
    """Instantiate a backend by name (modules load only when chosen)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise UsageError(
            f"unknown backend {name!r}", fix=f"use one of: {', '.join(backend_names())}"
        )
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls(settings)
    return backend
