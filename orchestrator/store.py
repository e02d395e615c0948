"""The job store: one SQLite database under $ORCHESTRATOR_HOME, safe for concurrent CLIs.

SQLite in WAL mode with a busy timeout lets several CLI processes read and write at once;
each state change is one short transaction, and transitions are conditional
(``UPDATE ... WHERE state IN (...)``) so that, for example, a late "succeeded" cannot overwrite
a "cancelled" that another process wrote first.

The store is the one place job state lives. Job directories hold artefacts (logs, checkpoints,
models, TensorBoard events), never the state itself.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import (
    JobNotFoundError,
    JobStoreBusyError,
    JobStoreCorruptError,
    JobStoreError,
    UsageError,
)
from orchestrator.private import private_dir, private_file

if TYPE_CHECKING:
    from orchestrator.spec.models import JobSpec


class JobState(str, Enum):
    """Lifecycle of a job. Terminal states never change again, except through `resume`."""

    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)
ACTIVE_STATES = frozenset({JobState.PENDING, JobState.RUNNING, JobState.CANCELLING})


@dataclass(frozen=True)
class JobProgress:
    """A job's visible progress as the store keeps it: its latest epoch, of how many, and the metrics
    of that epoch. The stored form (:meth:`to_dict`) is flat, ``{"epoch", "epochs", **metrics}``, as
    ``status --output json`` has always shown it. A sweep's record keeps its own progress (trials)."""

    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobProgress:
        """Read the stored form; keys that are not numbers (a sweep's trial list) are not metrics."""

        def whole(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        metrics = {key: float(value) for key, value in data.items()
                   if key not in ("epoch", "epochs") and isinstance(value, (int, float)) and not isinstance(value, bool)}
        return cls(epoch=whole(data.get("epoch")), epochs=whole(data.get("epochs")), metrics=metrics)

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        return {"epoch": self.epoch, "epochs": self.epochs, **self.metrics}


@dataclass
class JobRecord:
    """One row of the job store."""

    id: str
    name: str
    backend: str
    state: JobState
    spec: dict[str, Any]
    job_dir: Path
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    driver_pid: int | None = None
    driver_started: float | None = None
    message: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    external_id: str | None = None

    @property
    def job_progress(self) -> JobProgress:
        """The record's progress, typed."""
        return JobProgress.from_dict(self.progress)

    @functools.cached_property
    def job_spec(self) -> JobSpec:
        """The typed spec of a job's record, validated once per record (reading the store is an
        edge); a sweep's record (its job plus ``tune``) has none: use ``SweepSpec.from_record_spec``."""
        from orchestrator.spec.models import JobSpec

        return JobSpec.model_validate(self.spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "name": self.name,
            "backend": self.backend,
            "state": self.state.value,
            "message": self.message,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "job_dir": str(self.job_dir),
            "progress": self.progress,
            "attempts": self.attempts,
            **self.result,
        }


@dataclass(frozen=True)
class JobTarget:
    """Where a job this machine submitted to a cluster runs: the ray backend's Jobs API URL, or the
    kubernetes backend's namespace and kubeconfig context. The job's state stays on the cluster;
    this is only the index that lets ``status JOB`` (and the other verbs) find it from the id alone.
    """

    job_id: str
    backend: str
    namespace: str | None = None
    context: str | None = None
    address: str | None = None
    created_at: float = 0.0

    def options(self) -> str:
        """The command-line options that name this place (``-b kubernetes -n NS --context CTX``)."""
        parts = [f"-b {self.backend}"]
        if self.address:
            parts.append(f"--address {self.address}")
        if self.namespace:
            parts.append(f"-n {self.namespace}")
        if self.context:
            parts.append(f"--context {self.context}")
        return " ".join(parts)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    job_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    driver_pid INTEGER,
    driver_started REAL,
    message TEXT,
    result_json TEXT NOT NULL DEFAULT '{}',
    progress_json TEXT NOT NULL DEFAULT '{}',
    attempts_json TEXT NOT NULL DEFAULT '[]',
    external_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE TABLE IF NOT EXISTS job_targets (
    id TEXT NOT NULL,
    backend TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT '',
    context TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (id, backend, namespace, context, address)
);
"""

_COLUMNS = (
    "id, name, backend, state, spec_json, job_dir, created_at, started_at, ended_at, driver_pid, "
    "driver_started, message, result_json, progress_json, attempts_json, external_id"
)


class JobStore:
    """CRUD over the jobs table. Cheap to construct (touches no file); opens a connection per operation.

    The database file is created on first use, so commands that only read a spec (``validate``,
    ``submit --dry-run``) never need it. Every SQLite failure becomes a :class:`JobStoreError`
    that names the file: a corrupt file (:class:`JobStoreCorruptError`, with how to move it aside)
    or a lock held longer than :attr:`busy_timeout_s` (:class:`JobStoreBusyError`).
    """

    #: Seconds to wait for another process's write lock before giving up.
    busy_timeout_s: float = 30.0
    #: Fresh ids tried when a new job's id is taken (6 hex characters per name: collisions happen).
    id_attempts: int = 8

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._ready = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if not self._ready:
                # the store holds every spec: owner-only, whatever the umask
                private_file(private_dir(self.db_path.parent) / self.db_path.name)
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._error(exc) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            if not self._ready:
                conn.executescript(_SCHEMA)
                self._ready = True
            yield conn
        except sqlite3.IntegrityError:
            raise  # a constraint the caller handles (a taken job id)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _error(self, exc: BaseException) -> JobStoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return JobStoreBusyError(
                f"the job store {self.db_path} stayed locked by another orchestrator process for "
                f"{self.busy_timeout_s:g} s",
                fix="retry in a moment; if it stays locked, find the process holding it with "
                f"`fuser {self.db_path}` (or `lsof {self.db_path}`) and let it finish or stop it",
            )
        if isinstance(exc, OSError) or (isinstance(exc, sqlite3.OperationalError) and "unable to open" in text):
            return JobStoreError(
                f"cannot open the job store {self.db_path}: {getattr(exc, 'strerror', None) or text}",
                fix=f"check that {self.db_path.parent} is a writable directory, or set ORCHESTRATOR_HOME "
                "to one",
            )
        if isinstance(exc, sqlite3.OperationalError) and ("readonly" in text or "disk I/O" in text
                                                          or "full" in text):
            return JobStoreError(f"the job store {self.db_path} cannot be written: {text}",
                                 fix="check the disk's free space and the file's permissions")
        moved = self.db_path.with_name(self.db_path.name + ".corrupt")
        return JobStoreCorruptError(
            f"the job store {self.db_path} is damaged and cannot be read ({text[:120]})",
            fix=f"move it aside (`mv {self.db_path} {moved}`, and its -wal and -shm files if present); "
            "a new, empty store is created on the next command and job directories are kept; "
            "nothing was deleted",
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def new_job_id(self, name: str) -> str:
        return f"{name}-{secrets.token_hex(3)}"

    def create(self, record: JobRecord) -> JobRecord:
        """Insert ``record``; its id must be new (:class:`UsageError` when it is taken)."""
        try:
            with self._transaction() as conn:
                conn.execute(
                    f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                    self._row_values(record),
                )
        except sqlite3.IntegrityError:
            raise UsageError(f"a job with id {record.id!r} already exists in {self.db_path}",
                             fix="submit it again (a new id is drawn), or pick another id") from None
        return record

    def create_new(self, name: str, make: Callable[[str], JobRecord]) -> JobRecord:
        """Insert a new job under a fresh id and create its (new, empty) job directory.

        ``make(job_id)`` builds the record. The row is inserted before anything is written: an id
        that is taken in the store, or whose directory already exists, is never reused (no other
        job's files are overwritten); another id is drawn instead, up to :attr:`id_attempts` times.
        """
        for _ in range(self.id_attempts):
            record = make(self.new_job_id(name))
            if record.job_dir.exists():
                continue
            try:
                self.create(record)
            except UsageError:
                continue
            try:
                private_dir(record.job_dir.parent)
                record.job_dir.mkdir(mode=0o700)
                os.chmod(record.job_dir, 0o700)  # mkdir's mode is masked by the umask
            except FileExistsError:  # another process made it between our check and now
                self.delete(record.id)
                continue
            except OSError as exc:  # no room, no permission: no record without its directory
                self.delete(record.id)
                raise JobStoreError(
                    f"cannot create the job directory {record.job_dir}: {exc.strerror or exc}",
                    fix=f"free space in or fix the permissions of {record.job_dir.parent} "
                    "(or set ORCHESTRATOR_HOME to a writable directory)",
                ) from None
            return record
        raise JobStoreError(f"could not find an unused job id for {name!r} in {self.id_attempts} tries",
                            fix="retry; if it keeps failing, give the job another name")

    def delete(self, job_id: str) -> None:
        """Remove one row (only a row this process just inserted; job directories are not touched)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    @staticmethod
    def _row_values(r: JobRecord) -> tuple[Any, ...]:
        return (
            r.id,
            r.name,
            r.backend,
            r.state.value,
            json.dumps(r.spec),
            str(r.job_dir),
            r.created_at,
            r.started_at,
            r.ended_at,
            r.driver_pid,
            r.driver_started,
            r.message,
            json.dumps(r.result),
            json.dumps(r.progress),
            json.dumps(r.attempts),
            r.external_id,
        )

    def _record(self, row: tuple[Any, ...]) -> JobRecord:
        try:
            return self._from_row(row)
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # a row no version of us wrote
            raise self._error(exc) from None

    @staticmethod
    def _from_row(row: tuple[Any, ...]) -> JobRecord:
        return JobRecord(
            id=row[0],
            name=row[1],
            backend=row[2],
            state=JobState(row[3]),
            spec=json.loads(row[4]),
            job_dir=Path(row[5]),
            created_at=row[6],
            started_at=row[7],
            ended_at=row[8],
            driver_pid=row[9],
            driver_started=row[10],
            message=row[11],
            result=json.loads(row[12]),
            progress=json.loads(row[13]),
            attempts=json.loads(row[14]),
            external_id=row[15],
        )

    def get(self, job_id: str) -> JobRecord:
        """Find a job by id or by a unique id prefix (never by an empty one)."""
        require_job_id(job_id)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ? OR id LIKE ? ESCAPE '\\' "
                "ORDER BY created_at DESC",
                (job_id, _like_prefix(job_id)),
            ).fetchall()
        exact = [r for r in rows if r[0] == job_id]
        if exact:
            return self._record(exact[0])
        if not rows:
            raise JobNotFoundError(
                f"no job {job_id!r} in the job store {self.db_path}",
                fix="run `orchestrator list` to see job ids",
            )
        if len(rows) > 1:
            shown = ", ".join(f"{r[0]} ({r[3]})" for r in rows[:10])
            more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
            raise UsageError(
                f"{job_id!r} matches {len(rows)} jobs: {shown}{more}",
                fix="give the whole id, or enough of it to name one job",
            )
        return self._record(rows[0])

    def list(self, limit: int = 100) -> list[JobRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._record(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields unconditionally (progress, result, attempts, pid...)."""
        self._update(job_id, fields, expected=None)

    def transition(
        self, job_id: str, new: JobState, expected: frozenset[JobState] | set[JobState], **fields: Any
    ) -> bool:
        """Move to ``new`` only if the current state is in ``expected``. True if it happened."""
        return self._update(job_id, {"state": new, **fields}, expected=expected)

    def _update(
        self, job_id: str, fields: dict[str, Any], expected: frozenset[JobState] | set[JobState] | None
    ) -> bool:
        columns: dict[str, Callable[[Any], Any]] = {
            "state": lambda v: JobState(v).value,
            "result": json.dumps,
            "progress": json.dumps,
            "attempts": json.dumps,
            "spec": json.dumps,
        }
        names = {"result": "result_json", "progress": "progress_json", "attempts": "attempts_json", "spec": "spec_json"}
        sets: builtins.list[str] = []
        values: builtins.list[Any] = []
        for key, value in fields.items():
            conv = columns.get(key)
            sets.append(f"{names.get(key, key)} = ?")
            values.append(conv(value) if conv and value is not None else value)
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"
        values.append(job_id)
        if expected is not None:
            sql += f" AND state IN ({', '.join('?' * len(expected))})"
            values += [s.value for s in expected]
        with self._transaction() as conn:
            cur = conn.execute(sql, values)
            return cur.rowcount == 1

    # -- where cluster jobs run (the ray and kubernetes backends keep no job row here) -------------

    def remember_target(self, target: JobTarget) -> None:
        """Record where a cluster job runs (idempotent: the same place again updates its time)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO job_targets (id, backend, namespace, context, address, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (target.job_id, target.backend, target.namespace or "", target.context or "", target.address or "",
                 target.created_at or time.time()),
            )

    def targets(self, job_id: str) -> builtins.list[JobTarget]:
        """The recorded places of ``job_id`` (exact id; else every id it is a prefix of), newest first."""
        require_job_id(job_id)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, backend, namespace, context, address, created_at FROM job_targets "
                "WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY created_at DESC",
                (job_id, _like_prefix(job_id)),
            ).fetchall()
        exact = [r for r in rows if r[0] == job_id]
        return [JobTarget(job_id=r[0], backend=r[1], namespace=r[2] or None, context=r[3] or None,
                          address=r[4] or None, created_at=r[5]) for r in (exact or rows)]

    def reconcile_dead_drivers(self) -> builtins.list[str]:
        """Mark jobs whose local driver process died without saying so as ``interrupted``."""
        changed: builtins.list[str] = []
        for record in self.list(limit=10_000):
            if record.state not in ACTIVE_STATES or record.backend != "local":
                continue
            if record.driver_pid is None:
                # A pending job whose driver never started within a minute is lost too.
                if time.time() - record.created_at < 60:
                    continue
            elif process_alive(record.driver_pid, record.driver_started):
                continue
            message = "the driver process exited without finishing the job (killed?)"
            if self.transition(
                record.id,
                JobState.INTERRUPTED,
                ACTIVE_STATES,
                ended_at=time.time(),
                message=message + "; `orchestrator resume` continues it from its latest checkpoint",
            ):
                changed.append(record.id)
        return changed


def require_job_id(job_id: str) -> None:
    """Refuse an empty (or blank) job id: as a prefix it would match every job."""
    if not job_id.strip():
        raise UsageError(
            "no job id given (an empty id would match every job)",
            fix="pass a job id or a unique prefix of one; `orchestrator list` shows them "
            "(in a script, check that the variable holding the id is set)",
        )


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def process_start_time(pid: int) -> float | None:
    """The process's start time (to tell a live driver from a reused pid), or None if gone."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - psutil raises several kinds for a vanished process
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """True if ``pid`` runs and is the same process that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_started = process_start_time(pid)
    if now_started is None:
        return False
    try:
        import psutil

        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except Exception:  # noqa: BLE001
        return False
    return started is None or abs(now_started - started) < 1.0
