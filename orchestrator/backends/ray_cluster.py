"""The ``ray`` backend: jobs run on an existing Ray cluster, through Ray's job submission API.

``submit`` sends one Ray job per orchestrator job (submission id = our job id, so the Ray
dashboard and ``ray job`` show it under a name people recognise). Its entrypoint runs our driver
on the head node with the cluster's own Python (see :data:`CLUSTER_PYTHON`); the runtime
environment carries the validated spec and, for a user entrypoint, the folder of its file. The
driver joins the cluster, waits in the cluster's queue (:mod:`orchestrator.execution.queue`) until
the scheduler places its whole gang, and trains with Ray Train as on the local backend.

The driver writes one line per event (``ORCHESTRATOR_EVENT {json}``) and, at the end, the job's
record (``ORCHESTRATOR_RESULT {json}``) to the Ray job's log, so ``status``, ``list``, ``logs`` and
``cancel`` need only the dashboard's HTTP API: ``status`` reads Ray's job info and the newest of
those lines; ``cancel`` is Ray's stop (SIGTERM), which our driver turns into a checkpoint and a
clean stop. Ray's token auth (on by default) uses ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.base import Backend, SubmitOptions
from orchestrator.errors import BackendError, UsageError
from orchestrator.events import Epoch, Event, Queued, from_wire
from orchestrator.execution.handler import EventHandler
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState, JobTarget

EVENT_MARK = "ORCHESTRATOR_EVENT "
#: How long ``submit`` waits for a head whose job agent is not up yet (a cluster just started).
AGENT_WAIT_S = 120.0
RESULT_MARK = "ORCHESTRATOR_RESULT "

#: The entrypoint finds the Python that runs Ray on the head node (``sys.executable`` semantics,
#: not whatever ``python`` is first on a PATH): the job runs as a child of Ray's job supervisor,
#: a worker of the raylet, whose command line names the workers' interpreter
#: (``--python_worker_command=/path/to/python ...``). It walks up from the supervisor to that
#: raylet. ``ORCHESTRATOR_RAY_PYTHON`` on the submitting side names an interpreter instead.
CLUSTER_PYTHON = (
    'p=$PPID; py=""; while [ -z "$py" ] && [ -r "/proc/$p/cmdline" ]; do '
    "py=$(tr '\\0' '\\n' < /proc/$p/cmdline | sed -n 's/^--python_worker_command=\\([^ ]*\\).*/\\1/p' | head -n 1); "
    "p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status); "
    '[ "${p:-0}" -gt 1 ] || break; done; '
)

#: Ray job states, in ours.
_STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}


def _parse(text: str) -> Any:
    """One of our JSON log lines, or None where another process's output cut into it."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _wire_event(data: Any) -> Event | None:
    """The event of one ``EVENT_MARK`` line; None for one of a kind (or a shape) this version does
    not know, which readers of the log skip."""
    try:
        return from_wire(data)
    except KeyError:
        return None


def record_to_wire(record: JobRecord) -> dict[str, Any]:
    """A job record as the driver on the cluster prints it (``RESULT_MARK``)."""
    return {
        "id": record.id, "name": record.name, "state": record.state.value, "spec": record.spec,
        "job_dir": str(record.job_dir), "created_at": record.created_at, "started_at": record.started_at,
        "ended_at": record.ended_at, "message": record.message, "result": record.result,
        "progress": record.progress, "attempts": record.attempts,
    }


def stored_record(storage: str, job_id: str, backend: str) -> JobRecord | None:
    """The record a job's driver last wrote to its storage (``job.json``), if it can be read here."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.execution.outputs import JobOutputs, record_from_snapshot
    from orchestrator.storage import job_location

    try:
        snapshot = JobOutputs.at(job_location(storage, job_id)).snapshot()
    except (OrchestratorError, ValueError):  # not reachable from this machine: the log line stands in
        return None
    return record_from_snapshot(snapshot, backend) if snapshot else None


def record_from_wire(data: dict[str, Any], backend: str = "ray") -> JobRecord:
    return JobRecord(
        id=data["id"], name=data["name"], backend=backend, state=JobState(data["state"]), spec=data["spec"],
        job_dir=Path(data["job_dir"]), created_at=data["created_at"], started_at=data["started_at"],
        ended_at=data["ended_at"], message=data["message"], result=dict(data["result"]),
        progress=dict(data["progress"]), attempts=list(data["attempts"]), external_id=data["id"],
    )


def entrypoint_command(python: str | None = None) -> str:
    """The shell command Ray runs on the head node for each job."""
    if python:
        return f"exec {_quote(python)} -m orchestrator _ray_job"
    return CLUSTER_PYTHON + 'exec "${py:-python3}" -m orchestrator _ray_job'


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


#: Never uploaded with a user's code (``.gitignore`` syntax): version control, environments, caches
#: and the usual places of secrets.
ALWAYS_EXCLUDED = (
    ".git", ".hg", ".svn", ".ssh", ".gnupg", ".aws", ".kube", ".docker", ".venv", "venv", "__pycache__",
    "*.pyc", ".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", ".netrc", ".orchestrator",
)
#: Our own exclude file in the upload folder (``.gitignore`` syntax).
ORCHESTRATOR_IGNORE = ".orchestratorignore"
#: Files Ray reads itself in the uploaded folder; shown in the plan.
IGNORE_FILES = (ORCHESTRATOR_IGNORE, ".gitignore", ".rayignore")


@dataclass(frozen=True)
class UploadPlan:
    """What the ray backend ships with a user entrypoint: the folder, what it leaves out, and the
    entrypoint relative to that folder (Ray puts the folder on the workers' ``sys.path``)."""

    directory: Path
    entrypoint: str
    excludes: tuple[str, ...]


def package_root(entry: Path) -> Path:
    """The folder holding the top-level package ``entry`` belongs to (its own folder if none)."""
    root = entry.parent
    while (root / "__init__.py").is_file() and root.parent != root:
        root = root.parent
    return root


def upload_plan(spec: JobSpec, home: Path | None = None) -> UploadPlan:
    """The folder to upload for ``spec``'s entrypoint: ``code.dir``, else the entrypoint's package root.

    Refuses the home directory, ``/`` and any folder that holds the home directory (an
    entrypoint in ``~`` would ship ``~/.ssh``), and a folder that does not hold the entrypoint.
    """
    assert spec.entrypoint is not None
    file_part, func = spec.entrypoint.rsplit(":", 1)
    entry = Path(file_part).expanduser().resolve()
    if spec.code.dir:
        given = Path(spec.code.dir).expanduser()
        directory = (given if given.is_absolute() else entry.parent / given).resolve()
        if not directory.is_dir():
            raise UsageError(f"code.dir {spec.code.dir}: no such folder (resolved to {directory})",
                             fix="name the project folder that holds the entrypoint (absolute, or relative "
                                 "to the entrypoint file's folder)")
        if not entry.is_relative_to(directory):
            raise UsageError(f"code.dir {directory} does not hold the entrypoint {entry}",
                             fix="set code.dir to a folder the entrypoint file is inside of")
        chosen = "code.dir"
    else:
        directory = package_root(entry)
        chosen = "the entrypoint's folder" if directory == entry.parent else "the entrypoint's package root"
    home = (home or Path.home()).resolve()
    if home.is_relative_to(directory):
        what = "your home directory" if directory == home else "a folder that holds your home directory"
        raise UsageError(
            f"the ray backend would upload {directory} ({chosen}), which is {what}: every file in it, "
            "~/.ssh and other secrets included, would be sent to the cluster",
            fix=f"move {entry.name} into a project folder of its own (and point entrypoint at it), or set "
                "code.dir to the project folder that holds it",
        )
    excludes = list(ALWAYS_EXCLUDED) + read_ignore_file(directory / ORCHESTRATOR_IGNORE) + list(spec.code.exclude)
    relative = entry.relative_to(directory).as_posix()
    if excluded(relative, excludes):
        raise UsageError(f"the entrypoint {relative} is excluded from the upload of {directory}",
                         fix=f"remove the pattern that matches it from code.exclude or {ORCHESTRATOR_IGNORE}")
    return UploadPlan(directory, f"{relative}:{func}", tuple(dict.fromkeys(excludes)))


def read_ignore_file(path: Path) -> list[str]:
    """The patterns of a ``.gitignore``-style file (blank lines and comments dropped); none if absent."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def excluded(relative: str, patterns: list[str]) -> bool:
    """Whether a file at ``relative`` (POSIX, inside the upload) matches the ``.gitignore`` patterns,
    as Ray's own upload matches them (its copy of ``pathspec``), a parent folder's match included."""
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", patterns)
    parts = relative.split("/")
    return any(spec.match_file("/".join(parts[:i])) for i in range(1, len(parts) + 1))


class RayClusterBackend(Backend):
    """Jobs on a running Ray cluster, addressed by its dashboard URL (``http://head:8265``)."""

    name = "ray"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._client_cache: Any = None

    # -- connection ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        address = self.settings.ray_address
        if not address:
            raise UsageError(
                "the ray backend needs the address of a Ray cluster",
                fix="pass --address http://HEAD:8265 or set ORCHESTRATOR_RAY_ADDRESS",
            )
        if address.startswith("ray://"):
            raise UsageError(
                f"--address {address}: the ray backend uses the dashboard's HTTP address, not Ray Client",
                fix="use http://HEAD:8265 (the dashboard port)",
            )
        return address if "://" in address else f"http://{address}"

    def _client(self) -> Any:
        if self._client_cache is None:
            from orchestrator.execution.ray_local import use_local_auth_token

            use_local_auth_token()
            from ray.job_submission import JobSubmissionClient

            try:
                self._client_cache = JobSubmissionClient(self.address)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
                raise BackendError(
                    f"cannot reach the Ray cluster at {self.address}: {str(exc).splitlines()[0] if str(exc) else exc}",
                    fix="check the address (the dashboard port, 8265 by default), that the cluster is up, "
                        "and its auth token (~/.ray/auth_token or RAY_AUTH_TOKEN)",
                ) from None
        return self._client_cache

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.address.rstrip('/')}/#/jobs/{job_id}"

    # -- plan -----------------------------------------------------------------------------------
    def submission(self, spec: JobSpec, job_id: str) -> dict[str, Any]:
        """The exact arguments of ``JobSubmissionClient.submit_job`` for this job."""
        spec_json = spec.model_dump(mode="json")
        from orchestrator.execution.driver import GRACEFUL_STOP_TIMEOUT_S

        # Ray's job stop is SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default):
        # give the driver the time it allows its workers to checkpoint and stop, and some more
        runtime_env: dict[str, Any] = {"env_vars": {
            "ORCHESTRATOR_JOB_ID": job_id, "RAY_JOB_STOP_WAIT_TIME_S": str(int(GRACEFUL_STOP_TIMEOUT_S) + 30)}}
        if spec.entrypoint:  # ship the user's project; the job's working directory is it
            upload = upload_plan(spec)
            runtime_env["working_dir"] = str(upload.directory)
            runtime_env["excludes"] = list(upload.excludes)
            spec_json["entrypoint"] = upload.entrypoint
        runtime_env["env_vars"]["ORCHESTRATOR_SPEC_JSON"] = json.dumps(spec_json, sort_keys=True)
        return {
            "entrypoint": entrypoint_command(os.environ.get("ORCHESTRATOR_RAY_PYTHON")),
            "submission_id": job_id,
            "runtime_env": runtime_env,
            "metadata": {"orchestrator_job_id": job_id, "orchestrator_job_name": spec.name,
                         "orchestrator_framework": spec.framework},
            "entrypoint_num_cpus": 0,  # the driver only waits and relays; the gang has the CPUs
        }

    def dry_run(self, spec: JobSpec, options: SubmitOptions) -> dict[str, Any]:
        job_id = f"{spec.name}-<id>"
        plan = {"backend": self.name, "address": self.address, "dashboard_url": self.dashboard_url(job_id),
                "submit_job": self.submission(spec, job_id)}
        if spec.entrypoint:
            upload = upload_plan(spec)
            plan["upload"] = {"dir": str(upload.directory), "entrypoint": upload.entrypoint,
                              "excludes": list(upload.excludes), "also_honoured": list(IGNORE_FILES)}
        return plan

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, options: SubmitOptions, events: EventHandler | None = None) -> JobRecord:
        # the framework need not be installed here: the driver on the cluster checks it there
        job_id = f"{spec.name}-{secrets.token_hex(3)}"
        client = self._client()
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(**self.submission(spec, job_id))
                break
            except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError with the HTTP body
                # a head whose job agent is still starting answers 500 "No available agent ... try
                # again later": wait for it a while, as `ray job submit` users do by hand
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(5)
                    continue
                raise BackendError(f"the Ray cluster at {self.address} refused the job: {exc}",
                                   fix="see the message; `ray job list` on the cluster shows its jobs") from None
        self.remember(JobTarget(job_id, self.name, address=self.address))
        record = self.status(job_id)
        if events is not None:
            events.on_start(record, {"dashboard_url": self.dashboard_url(job_id), "job_dir": record.job_dir,
                                     "workers": spec.resources.workers})
        if options.detach:
            return record
        try:
            for _ in self._follow(job_id, events):
                pass
        except KeyboardInterrupt:  # Ctrl-C: ask for a checkpoint and a clean stop, then see it end
            self.cancel(job_id)
            for _ in self._follow(job_id, events):
                pass
        final = self.status(job_id)
        if events is not None:
            events.on_finish(final)
        return final

    def _follow(self, job_id: str, events: EventHandler | None) -> Iterator[str]:
        for line in self._lines(job_id, follow=True):
            if line.startswith(EVENT_MARK):
                event = _wire_event(_parse(line[len(EVENT_MARK):]))
                if events is not None and event is not None:
                    events.on_event(event)
                continue
            yield line

    # -- queries --------------------------------------------------------------------------------
    def _info(self, job_id: str) -> Any:
        try:
            return self._client().get_job_info(job_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                raise UsageError(f"no job {job_id!r} on the Ray cluster at {self.address}",
                                 fix="`orchestrator list --backend ray` shows its jobs") from None
            raise BackendError(f"the Ray cluster at {self.address} did not answer: {exc}",
                               fix="try again; check the cluster") from None

    def status(self, job_id: str) -> JobRecord:
        info = self._info(job_id)
        return self._record(info, self._logs_text(job_id))

    def _logs_text(self, job_id: str) -> str:
        try:
            return str(self._client().get_job_logs(job_id) or "")
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"the Ray cluster at {self.address} did not send the log of {job_id}: {exc}",
                               fix="try again") from None

    def _record(self, info: Any, logs: str | None) -> JobRecord:
        job_id = info.submission_id or info.job_id
        meta = info.metadata or {}
        state = _STATES.get(str(getattr(info.status, "value", info.status)), JobState.PENDING)
        saved: dict[str, Any] | None = None
        progress: dict[str, Any] = {}
        message = info.message
        newest: Event | None = None
        seen_event = False
        for line in reversed((logs or "").splitlines()):
            if line.startswith(RESULT_MARK):
                saved = _parse(line[len(RESULT_MARK):])
                if saved is not None:
                    break
            if line.startswith(EVENT_MARK):
                wire = _parse(line[len(EVENT_MARK):])
                if wire is None:
                    continue
                event = _wire_event(wire)
                if not seen_event:  # the newest line decides "queued", whatever its kind
                    newest, seen_event = event, True
                if isinstance(event, Epoch):
                    progress = {"epoch": event.epoch, **event.metrics}
                    break
        match newest:
            case Queued() if state is JobState.RUNNING:
                state, message = JobState.PENDING, f"queued: {newest.reason}"
        started = info.start_time / 1000 if info.start_time else None
        ended = info.end_time / 1000 if info.end_time else None
        spec = json.loads((info.runtime_env or {}).get("env_vars", {}).get("ORCHESTRATOR_SPEC_JSON", "{}"))
        if state.terminal and spec.get("storage"):  # the driver's record in the job's storage
            stored = stored_record(spec["storage"], job_id, self.name)
            if stored is not None and stored.state.terminal:
                stored.result = {**stored.result, "dashboard_url": self.dashboard_url(job_id)}
                return stored
        if saved is not None:
            record = record_from_wire(saved, self.name)  # the driver's own last word
            record.result = {**record.result, "dashboard_url": self.dashboard_url(job_id)}
            return record
        return JobRecord(
            id=job_id, name=meta.get("orchestrator_job_name", job_id), backend=self.name, state=state,
            spec=spec, job_dir=Path("."), created_at=started or time.time(), started_at=started, ended_at=ended,
            message=message, result={"dashboard_url": self.dashboard_url(job_id)}, progress=progress,
            external_id=job_id,
        )

    def list(self, limit: int = 100) -> list[JobRecord]:
        try:
            jobs = self._client().list_jobs()
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"the Ray cluster at {self.address} did not list its jobs: {exc}",
                               fix="try again; check the cluster") from None
        ours = [j for j in jobs if (j.metadata or {}).get("orchestrator_job_id")]
        ours.sort(key=lambda j: j.start_time or 0, reverse=True)
        return [self._record(j, None) for j in ours[:limit]]

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        for line in self._lines(job_id, follow):
            if not line.startswith((EVENT_MARK, RESULT_MARK)):
                yield line

    def _lines(self, job_id: str, follow: bool) -> Iterator[str]:
        """The Ray job's log lines; with ``follow``, new ones until the job ends."""
        seen = 0
        self._info(job_id)  # a clear error for an unknown job
        while True:
            ended = self._info(job_id).status.is_terminal() if follow else True
            text = self._logs_text(job_id)
            lines = text.splitlines()
            complete = len(lines) if ended or text.endswith("\n") else len(lines) - 1
            yield from lines[seen:complete]
            seen = max(seen, complete)
            if ended:
                return
            time.sleep(1.0)

    def cancel(self, job_id: str) -> JobRecord:
        info = self._info(job_id)
        if not info.status.is_terminal():
            try:
                self._client().stop_job(job_id)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"the Ray cluster at {self.address} did not stop {job_id}: {exc}",
                                   fix="try again; `ray job stop` on the cluster does the same") from None
        return self.status(job_id)

    def queue_rows(self) -> builtins.list[dict[str, Any]]:
        """The cluster queue's rows, read by a short Ray job (the HTTP API is all we have)."""
        entrypoint = entrypoint_command(os.environ.get("ORCHESTRATOR_RAY_PYTHON")).replace("_ray_job", "_ray_queue_view")
        rows = self._short_job(entrypoint, "queue-view", "read the queue of",
                               fix="check the cluster; `orchestrator list --backend ray` shows its jobs")
        if not rows:
            raise BackendError("could not read the cluster's queue: it printed no rows",
                               fix="check that orchestrator is installed on the cluster")
        result: builtins.list[dict[str, Any]] = rows[-1]
        return result

    def gcs_address(self) -> str:
        """The cluster's GCS address (``host:port``), as the cluster itself gives it to its jobs.

        Ray's dashboard HTTP API does not expose it, but Ray's job supervisor sets ``RAY_ADDRESS`` to
        it for every job: a short Ray job prints it. The host is the head's address inside the
        cluster's network, which a driver joining from here must be able to reach anyway.
        """
        found = self._short_job(f'echo "{RESULT_MARK}\\"$RAY_ADDRESS\\""', "gcs-address", "ask the GCS address of",
                                fix="pass the GCS address with --ray-address HEAD_IP:6379 (or RAY_ADDRESS)")
        address = found[-1] if found else None
        if not isinstance(address, str) or not address or address == "auto":
            raise BackendError(f"the Ray cluster at {self.address} did not tell its GCS address (got {address!r})",
                               fix="pass it with --ray-address HEAD_IP:6379 (or RAY_ADDRESS)")
        return address

    def _short_job(self, entrypoint: str, kind: str, what: str, fix: str) -> builtins.list[Any]:
        """Run a short Ray job that prints ``RESULT_MARK`` lines; their JSON values (the job is deleted)."""
        client = self._client()
        job_id = f"orchestrator-{kind}-{secrets.token_hex(3)}"
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=job_id, entrypoint_num_cpus=0,
                              metadata={f"orchestrator_{kind.replace('-', '_')}": "1"})
            deadline = time.time() + 300
            while not client.get_job_status(job_id).is_terminal():
                if time.time() > deadline:
                    client.stop_job(job_id)
                    raise BackendError(f"a short Ray job to {what} the cluster took over 5 minutes", fix="try again")
                time.sleep(0.5)
            text = client.get_job_logs(job_id) or ""
            client.delete_job(job_id)  # a view, not a job: leave nothing behind in `ray job list`
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError/ConnectionError
            raise BackendError(f"could not {what} the Ray cluster at {self.address}: {exc}", fix=fix) from None
        values = [_parse(line[len(RESULT_MARK):]) for line in text.splitlines() if line.startswith(RESULT_MARK)]
        if not values and text.strip():
            raise BackendError(f"could not {what} the Ray cluster at {self.address}: {text[-500:]}", fix=fix)
        return values
