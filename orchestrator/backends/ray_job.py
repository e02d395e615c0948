"""The cluster side of the ``ray`` backend: what a Ray job runs on the head node.

``submit --backend ray`` sends a Ray job whose entrypoint is ``orchestrator _ray_job`` (see
:func:`orchestrator.backends.ray_cluster.entrypoint_command`); that hidden verb calls
:func:`run_driver`, which runs our driver there and writes the job's events and, at the end, its
record to the Ray job's log (``EVENT_MARK`` / ``RESULT_MARK`` lines) for the submitting side to
read back. ``orchestrator queue --backend ray`` runs :func:`print_queue_view` the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.backends.base import SubmitOptions
from orchestrator.backends.ray_cluster import EVENT_MARK, RESULT_MARK, record_to_wire
from orchestrator.errors import NotAvailableError
from orchestrator.events import Event, Step
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState


class WireEvents:
    """The driver's events as log lines of the Ray job, for the submitting CLI to read back."""

    def on_start(self, record: JobRecord, info: dict[str, Any]) -> None:
        pass

    def on_event(self, event: Event) -> None:
        match event:
            case Step():
                pass  # one line per epoch, attempt, queue change; not per step
            case _:
                # one write: no interleaving
                sys.stdout.write(EVENT_MARK + json.dumps(event.to_wire(), default=str) + "\n")
                sys.stdout.flush()

    def on_finish(self, record: JobRecord) -> None:
        pass


def cluster_lacks_framework(spec: JobSpec, job_id: str, exc: NotAvailableError) -> JobRecord:
    """The failed record of a ray-backend job whose framework the cluster's Python lacks."""
    now = time.time()
    message = (f"{exc.message} on the Ray cluster (node {os.uname().nodename}, Python {sys.executable}); "
               f"fix: {exc.fix} in the cluster's image, or point ORCHESTRATOR_RAY_PYTHON at a Python that has it")
    return JobRecord(id=job_id, name=spec.name, backend="ray", state=JobState.FAILED,
                     spec=spec.model_dump(mode="json"), job_dir=Path("."), created_at=now, ended_at=now,
                     message=message)


def _print_result(record: JobRecord) -> None:
    sys.stdout.write(RESULT_MARK + json.dumps(record_to_wire(record), default=str) + "\n")
    sys.stdout.flush()


def run_driver(settings: Settings) -> JobRecord:
    """Run a ray-backend job's driver here, on the cluster (the Ray job's entrypoint); its final record.

    The job comes from the Ray job's environment (``ORCHESTRATOR_SPEC_JSON``, ``ORCHESTRATOR_JOB_ID``).
    """
    from orchestrator.backends.local import LocalBackend
    from orchestrator.execution.driver import Driver

    spec = JobSpec.model_validate(json.loads(os.environ["ORCHESTRATOR_SPEC_JSON"]))
    # Ray's job supervisor sets RAY_ADDRESS to the cluster: the driver joins it and its queue.
    settings = settings.with_overrides(local_ray_address=os.environ.get("RAY_ADDRESS") or "auto")
    try:
        record = LocalBackend(settings).create_record(spec, SubmitOptions(), job_id=os.environ["ORCHESTRATOR_JOB_ID"],
                                                      backend="ray")
    except NotAvailableError as exc:  # the framework is checked here, where the job runs, not on the client
        failed = cluster_lacks_framework(spec, os.environ["ORCHESTRATOR_JOB_ID"], exc)
        _print_result(failed)
        return failed
    handler = logging.StreamHandler(sys.stdout)  # the driver's log is the Ray job's log
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("orchestrator").addHandler(handler)
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    logging.getLogger("orchestrator").info("driver of %s on %s, Python %s", record.id, os.uname().nodename,
                                           sys.executable)
    record = Driver(settings, record.id, WireEvents(), metrics_port=None).run()
    _print_result(record)
    return record


def print_queue_view() -> None:
    """Print the cluster queue's rows (run on the cluster by `orchestrator queue --backend ray`)."""
    import ray

    from orchestrator.execution.queue import queue_rows_of_cluster
    from orchestrator.execution.ray_local import use_local_auth_token

    use_local_auth_token()
    ray.init(address="auto", namespace="orchestrator", log_to_driver=False)
    print(RESULT_MARK + json.dumps(queue_rows_of_cluster()), flush=True)
