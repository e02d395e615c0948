"""The local backend: jobs run on this machine, on a Ray instance the driver embeds.

No set-up: the driver calls ``ray.init()`` itself. In the foreground the CLI process is the
driver; with ``--detach`` a background process (``orchestrator _driver JOB``) is, and this
process returns at once. Either way the job's state lives in the job store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.backends.base import Backend, SubmitOptions
from orchestrator.errors import JobNotFoundError, UsageError
from orchestrator.execution.driver import Driver, check_framework_available, job_paths
from orchestrator.execution.handler import EventHandler
from orchestrator.execution.outputs import JobOutputs, resolve_init_from
from orchestrator.private import private_dir, private_file, write_private_text
from orchestrator.spec.loader import dump_yaml
from orchestrator.spec.models import JobSpec
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore, process_alive, require_job_id

LOG_FILE = "driver.log"


class LocalBackend(Backend):
    """Runs jobs with an embedded Ray instance; state in the SQLite job store."""

    name = "local"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.store = JobStore(settings.db_path)

    # -- plan ----------------------------------------------------------------------------
    def dry_run(self, spec: JobSpec, options: SubmitOptions) -> dict[str, Any]:
        self.refuse_owned_checkpoint_dir(spec)
        r = spec.resources
        per_worker: dict[str, Any] = dict(r.ray_resources_per_worker())
        if r.memory_bytes:
            per_worker["memory"] = r.memory_bytes  # bytes as an integer in the plan
        return {
            "backend": self.name,
            "spec": spec.model_dump(mode="json"),
            "plan": {
                "trainer": "ray.train.torch.TorchTrainer" if spec.framework == "torch"
                else "ray.train.tensorflow.TensorflowTrainer",
                "workers": r.workers,
                "resources_per_worker": per_worker,
                "total": {k: v * r.workers for k, v in per_worker.items()},
                "accelerator": r.accelerator,
                "placement": f"one embedded Ray instance on this machine ({r.placement.upper()})",
                "collective_backend": spec.sync_backend,
                "per_worker_batch_size": spec.per_worker_batch_size,
                "gradient_compression": spec.sync.compression,
                "max_failures": spec.failure.max_failures,
                "job_home": str(self.settings.jobs_dir),
            },
        }

    # -- submit --------------------------------------------------------------------------
    def refuse_owned_checkpoint_dir(self, spec: JobSpec) -> None:
        """A new job may not use a ``checkpoint.dir`` another job owns (refused before a record exists)."""
        if spec.checkpoint.dir:
            from orchestrator.runtime.checkpoints import check_owner

            check_owner(spec.checkpoint.dir, self.settings.checkpoint_owner or "<a new job>")

    def create_record(self, spec: JobSpec, options: SubmitOptions, job_id: str | None = None,
                      backend: str | None = None) -> JobRecord:
        """A pending job in the store (``job_id`` and ``backend`` given by the ray backend's driver)."""
        check_framework_available(spec)
        spec_json = spec.model_dump(mode="json")

        def make(new_id: str) -> JobRecord:
            return JobRecord(id=new_id, name=spec.name, backend=backend or self.name, state=JobState.PENDING,
                             spec=spec_json, job_dir=self.settings.job_dir(new_id), created_at=time.time())

        if job_id is None:  # the row first, under an unused id and a new directory: nothing overwritten
            record = self.store.create_new(spec.name, make)
        else:
            record = self.store.create(make(job_id))
            private_dir(record.job_dir)
        write_private_text(record.job_dir / "spec.yaml", dump_yaml(spec_json))
        return record

    def submit(
        self, spec: JobSpec, options: SubmitOptions, events: EventHandler | None = None
    ) -> JobRecord:
        self.refuse_owned_checkpoint_dir(spec)
        if spec.init_from:  # a wrong source is refused before a record exists
            resolve_init_from(spec, self.store)
        record = self.create_record(spec, options)
        return self.start(record, options, events)

    def start(
        self, record: JobRecord, options: SubmitOptions, events: EventHandler | None = None
    ) -> JobRecord:
        """Run a pending job: in this process, or in a detached driver process."""
        if options.detach:
            self._spawn_driver(record, options)
            return self.store.get(record.id)
        return Driver(
            self.settings, record.id, events, metrics_port=options.metrics_port,
            metrics_host=options.metrics_host, metrics_linger_s=options.metrics_linger_s,
        ).run()

    def _spawn_driver(self, record: JobRecord, options: SubmitOptions) -> None:
        log = private_file(record.job_dir / LOG_FILE).open("ab")
        env = dict(os.environ)
        env["ORCHESTRATOR_HOME"] = str(self.settings.home)
        metrics = ["--metrics-host", options.metrics_host]
        metrics += ["--no-metrics"] if options.metrics_port is None else ["--metrics-port", str(options.metrics_port)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "_driver", record.id, *metrics],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI exiting and its terminal closing
            env=env,
        )
        log.close()
        self.store.update(record.id, driver_pid=proc.pid)

    # -- resume --------------------------------------------------------------------------
    def resume(
        self,
        job_id: str,
        options: SubmitOptions,
        events: EventHandler | None = None,
        epochs: int | None = None,
    ) -> JobRecord:
        """Run a finished, failed, cancelled or interrupted job again from its latest checkpoint."""
        require_job_id(job_id)
        self.store.reconcile_dead_drivers()
        record = self.store.get(job_id)
        if record.state in ACTIVE_STATES:
            raise UsageError(
                f"job {record.id} is {record.state.value}; only a job that ended can be resumed",
                fix=f"wait for it, or `orchestrator cancel {record.id}` first",
            )
        spec_json = dict(record.spec)
        if epochs is not None:
            spec = JobSpec.model_validate(
                {**spec_json, "training": {**spec_json["training"], "epochs": epochs}}
            )
            spec_json = spec.model_dump(mode="json")
        self.store.transition(
            record.id,
            JobState.PENDING,
            {record.state},
            spec=spec_json,
            ended_at=None,
            message=None,
            driver_pid=None,
            driver_started=None,
        )
        return self.start(self.store.get(record.id), options, events)

    def adopt(self, outputs: JobOutputs) -> JobRecord:
        """Take a job known only by its storage folder into this store, under its own id.

        The record comes from what the job's driver last wrote there (``job.json``, the resolved
        spec); the job keeps its storage, so ``resume`` continues from the checkpoints in it.
        A job this store already knows is returned as it is.
        """
        try:
            return self.store.get(outputs.job_id)
        except JobNotFoundError:
            pass
        snapshot = outputs.snapshot()
        spec = JobSpec.model_validate(outputs.spec_data())  # the spec as the job resolved it
        state = JobState(snapshot.get("state", JobState.FAILED.value)) if snapshot.get("state") in {
            s.value for s in JobState} else JobState.FAILED
        message = snapshot.get("message")
        if state in ACTIVE_STATES:  # its driver stopped writing while the job ran (a lost machine)
            state, message = JobState.FAILED, f"its driver was last seen {state.value} (taken from {outputs.storage})"
        result = dict(snapshot.get("result") or {})
        result["storage"] = str(outputs.storage)
        record = JobRecord(
            id=outputs.job_id, name=spec.name, backend=self.name, state=state,
            spec=spec.model_dump(mode="json"), job_dir=self.settings.job_dir(outputs.job_id),
            created_at=float(snapshot.get("created_at") or time.time()),
            ended_at=float(snapshot.get("ended_at") or time.time()), message=message, result=result,
            attempts=list(snapshot.get("attempts") or []),
        )
        record = self.store.create(record)
        private_dir(record.job_dir)
        write_private_text(record.job_dir / "spec.yaml", dump_yaml(record.spec))
        return record

    # -- queries -------------------------------------------------------------------------
    def status(self, job_id: str) -> JobRecord:
        require_job_id(job_id)
        self.store.reconcile_dead_drivers()
        return self.store.get(job_id)

    def list(self, limit: int = 100) -> list[JobRecord]:
        self.store.reconcile_dead_drivers()
        return self.store.list(limit)

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        record = self.store.get(job_id)
        path = record.job_dir / LOG_FILE
        if not path.exists() and record.result.get("storage"):  # its driver ran elsewhere
            yield from JobOutputs.of_record(record).log_lines()
            return
        yield from follow_file(path, lambda: self.status(record.id).state in ACTIVE_STATES if follow else False)

    def cancel(self, job_id: str) -> JobRecord:
        require_job_id(job_id)
        self.store.reconcile_dead_drivers()
        record = self.store.get(job_id)
        if record.state.terminal:
            return record
        if record.state == JobState.PENDING and record.driver_pid is None:
            self.store.transition(record.id, JobState.CANCELLED, {JobState.PENDING},
                                  ended_at=time.time(), message="cancelled before it started")
            return self.store.get(record.id)
        self.store.transition(record.id, JobState.CANCELLING, {JobState.RUNNING, JobState.PENDING})
        if record.driver_pid and process_alive(record.driver_pid, record.driver_started):
            try:
                os.kill(record.driver_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.store.get(record.id)

    def checkpoint_dir(self, record: JobRecord) -> Path:
        return Path(job_paths(record, record.job_spec)["checkpoint_dir"])


def follow_file(path: Path, keep_following: Any, poll_s: float = 0.3) -> Iterator[str]:
    """Yield the lines of ``path``; while ``keep_following()`` is true, wait for more."""
    position = 0
    pending = ""
    while True:
        if path.exists():
            with path.open("r", encoding="utf-8", errors="replace") as fh:
                fh.seek(position)
                chunk = fh.read()
                position = fh.tell()
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                yield from lines
                continue
        if not keep_following():
            if pending:
                yield pending
            return
        time.sleep(poll_s)
