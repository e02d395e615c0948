"""One Settings object: the only place that reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Where the orchestrator keeps its state, and process-wide defaults.

    ``home`` holds the job store (``jobs.db``) and one directory per job (``jobs/<id>/``).
    """

    home: Path
    #: The Jobs API URL (``http://head:8265``) of a Ray cluster for the `ray` backend
    #: (``--address``, ORCHESTRATOR_RAY_ADDRESS).
    ray_address: str | None = None
    #: The GCS address (``host:6379``) of a Ray instance this process's driver joins instead of
    #: starting its own: the local backend, and `tune --backend ray` (``--ray-address``, Ray's RAY_ADDRESS).
    local_ray_address: str | None = None
    #: Kubernetes namespace and kubeconfig context for the `kubernetes` backend (None: the
    #: kubeconfig's current context, and that context's namespace, else ``default``).
    kube_namespace: str | None = None
    kube_context: str | None = None
    #: The kubeconfig file(s) (KUBECONFIG; None: the client's default, ~/.kube/config).
    kubeconfig: str | None = None
    #: Who owns the checkpoint directory when a job's identity outlives its record, such as a
    #: TrainingJob run again in a new pod (ORCHESTRATOR_CHECKPOINT_OWNER); else the job id.
    checkpoint_owner: str | None = None
    #: The default storage location of a job whose spec sets none (ORCHESTRATOR_STORAGE).
    storage: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("ORCHESTRATOR_HOME") or Path.home() / ".orchestrator").expanduser()
        return cls(
            home=home.resolve(),
            ray_address=env.get("ORCHESTRATOR_RAY_ADDRESS") or None,
            local_ray_address=env.get("RAY_ADDRESS") or None,
            kube_namespace=env.get("ORCHESTRATOR_NAMESPACE") or None,
            kube_context=env.get("ORCHESTRATOR_KUBE_CONTEXT") or None,
            kubeconfig=env.get("KUBECONFIG") or None,
            checkpoint_owner=env.get("ORCHESTRATOR_CHECKPOINT_OWNER") or None,
            storage=env.get("ORCHESTRATOR_STORAGE") or None,
        )

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with the given fields replaced; None means "keep" (unset CLI options)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def db_path(self) -> Path:
        return self.home / "jobs.db"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id
