"""A job's outputs in its storage: the driver's side (copy up) and every later command's (read back).

The workers put checkpoints, the exported model and sample grids into the job's storage folder
themselves (:class:`orchestrator.runtime.session.TrainSession`). The driver adds what it writes:
the resolved spec, the record (state, progress, result) as ``job.json``, ``result.json``, the job
log and the TensorBoard event files. :class:`OutputSync` sends them while the job runs (at most
every ``interval_s``, so a lost driver machine loses little) and once more at the end.

:class:`JobOutputs` is the other side: ``predict``, ``tensorboard``, ``logs`` and ``resume`` find
a job's outputs through it, from its record or from a storage location alone
(``s3://bucket/prefix/JOB_ID``, a fresh ``ORCHESTRATOR_HOME`` included), with the node-local
cache standing in for the job directory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import JobNotFoundError, StorageError, UsageError
from orchestrator.events import Checkpoint, Epoch, Event, Final
from orchestrator.execution.fanout import Sink
from orchestrator.spec.models import JobSpec
from orchestrator.storage import (
    LAYOUT,
    Storage,
    cache_dir,
    cache_key,
    check_location,
    is_job_location,
    is_uri,
)
from orchestrator.store import JobRecord, JobStore

log = logging.getLogger("orchestrator.driver")


class OutputSync(Sink):
    """Copies the driver's outputs of one job to its storage folder (a fanout sink, too)."""

    def __init__(self, storage: Storage, job_dir: Path, interval_s: float = 15.0) -> None:
        self.storage = storage
        self.job_dir = job_dir
        self.interval_s = interval_s
        self._known: dict[str, tuple[int, float]] = {}
        self._last = 0.0
        self._warned = False

    def write_spec(self, record: JobRecord) -> None:
        """The resolved spec (what the job runs with, defaults and overrides applied)."""
        self.storage.write_text(LAYOUT["spec"], yaml.safe_dump(record.spec, sort_keys=False))

    def on_event(self, event: Event) -> None:
        if isinstance(event, (Checkpoint, Epoch, Final)):
            self.sync()

    def sync(self, record: JobRecord | None = None, *, force: bool = False) -> None:
        """Send new TensorBoard events, the log and (given) the record; at most every ``interval_s``
        unless ``force``. A storage error is logged, never raised: the local copies stay."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        try:
            board = self.job_dir / "tensorboard"
            if board.is_dir():
                self.storage.put_dir(board, LAYOUT["tensorboard"], known=self._known)
            logfile = self.job_dir / "driver.log"
            if logfile.is_file():
                self.storage.put_file(logfile, LAYOUT["log"])
            if record is not None:
                self.storage.write_text(LAYOUT["record"], json.dumps(snapshot_of(record), indent=1, default=str))
        except StorageError as exc:
            if force or not self._warned:
                log.warning("%s (the job's local copies in %s are kept)", exc.message, self.job_dir)
                self._warned = True

    def finish(self, record: JobRecord) -> str | None:
        """The last copy: the result, the record, the log. Returns an error message, if any."""
        try:
            self.storage.write_text(LAYOUT["result"], json.dumps(record.result, indent=1, default=str))
        except StorageError as exc:
            log.error("%s (the job's local copies in %s are kept)", exc.message, self.job_dir)
            return exc.message
        self.sync(record, force=True)
        return None


def snapshot_of(record: JobRecord) -> dict[str, Any]:
    """What ``job.json`` holds: the record as ``status -o json`` shows it, and its result apart."""
    return {**record.to_json(), "result": record.result, "spec": record.spec}


def record_from_snapshot(data: dict[str, Any], backend: str) -> JobRecord | None:
    """The record a ``job.json`` holds (None when it is not one)."""
    from orchestrator.store import JobState

    try:
        return JobRecord(
            id=str(data["job_id"]), name=str(data["name"]), backend=backend, state=JobState(data["state"]),
            spec=dict(data["spec"]), job_dir=Path(str(data.get("job_dir") or ".")),
            created_at=float(data["created_at"]), started_at=data.get("started_at"), ended_at=data.get("ended_at"),
            message=data.get("message"), result=dict(data.get("result") or {}),
            progress=dict(data.get("progress") or {}), attempts=list(data.get("attempts") or []),
            external_id=str(data["job_id"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def model_files(storage: Storage) -> dict[str, str]:
    """The exported model's files in a job's storage, as result keys -> storage locations."""
    try:
        files = storage.list_files(LAYOUT["model"])
    except StorageError:
        return {}
    base = storage.child(LAYOUT["model"]).uri
    out: dict[str, str] = {}
    for key, name in (("model_path", "model.pt"), ("torchscript_path", "model.torchscript.pt"),
                      ("keras_path", "model.keras")):
        if name in files:
            out[key] = f"{base}/{name}"
    if any(f.startswith("saved_model/") for f in files):
        out["saved_model_path"] = f"{base}/saved_model"
    for name in ("generator.torchscript.pt", "generator_saved_model"):
        if name in files or any(f.startswith(name + "/") for f in files):
            out["generator_path"] = f"{base}/{name}"
            out["samples_dir"] = storage.child(LAYOUT["samples"]).uri
            break
    if "model.json" in files:
        out["model_dir"] = base
    return out


@dataclass
class JobOutputs:
    """Where one job's outputs are, for the commands that read them after it ran."""

    job_id: str
    #: The job's storage folder (None: everything is in the local job directory).
    storage: Storage | None
    #: The local job directory, where one exists on this machine.
    job_dir: Path | None
    record: JobRecord | None = None

    @classmethod
    def of_record(cls, record: JobRecord) -> JobOutputs:
        location = record.result.get("storage")
        storage = Storage.open(location) if location else None
        return cls(record.id, storage, record.job_dir, record)

    @classmethod
    def at(cls, location: str) -> JobOutputs:
        """A job's outputs from its storage location alone (``s3://bucket/prefix/JOB_ID``)."""
        try:
            uri = check_location(location)
        except ValueError as exc:
            raise UsageError(str(exc), fix="give a job id or a job's storage location, e.g. "
                                           "s3://bucket/prefix/JOB_ID") from None
        storage = Storage.open(uri)
        if not (storage.is_file(LAYOUT["spec"]) or storage.is_file(LAYOUT["record"])):
            raise UsageError(f"{uri} holds no job (no {LAYOUT['spec']} or {LAYOUT['record']} there)",
                             fix="give the folder of one job: <storage>/<job id>, as `orchestrator status JOB` "
                                 "shows it under storage")
        return cls(uri.rstrip("/").rsplit("/", 1)[-1], storage, None, None)

    # -- what is in it ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The record the driver last wrote to storage (``job.json``), or {} when there is none."""
        if self.storage is None:
            return {}
        try:
            data = json.loads(self.storage.read_text(LAYOUT["record"]))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def spec_data(self) -> dict[str, Any]:
        """The job's resolved spec, from its record or its storage."""
        if self.record is not None:
            return dict(self.record.spec)
        assert self.storage is not None
        data = yaml.safe_load(self.storage.read_text(LAYOUT["spec"]))
        return data if isinstance(data, dict) else {}

    def _cached(self, rel: str) -> Path:
        """A fresh local copy of the storage folder ``rel`` (the cache is only a cache)."""
        assert self.storage is not None
        target = cache_dir("outputs", cache_key(self.storage.uri), rel)
        known = {p.relative_to(target).as_posix(): p.stat().st_size for p in target.rglob("*") if p.is_file()}
        remote = self.storage.list_files(rel)
        for name, size in remote.items():
            if known.get(name) != size and ".." not in name.split("/"):
                self.storage.get_file(f"{rel}/{name}", target / name)
        return target

    def model_dir(self) -> Path:
        """A local folder with the job's exported model (``model.json`` and its files)."""
        if self.storage is not None and self.storage.is_file(f"{LAYOUT['model']}/model.json"):
            return self._cached(LAYOUT["model"])
        if self.record is not None:
            result = self.record.result
            if result.get("model_dir") and not is_uri(result["model_dir"]):
                return Path(result["model_dir"])
            if result.get("torchscript_path") and not is_uri(result["torchscript_path"]):
                return Path(result["torchscript_path"]).parent
            if self.job_dir is not None:
                return self.job_dir / "model"
        raise UsageError(f"job {self.job_id} has no saved model",
                         fix="predict with a job that succeeded, or `orchestrator resume` this one first")

    def tensorboard_dir(self) -> Path:
        """A local folder with the job's TensorBoard event files."""
        if self.storage is not None and self.storage.list_files(LAYOUT["tensorboard"]):
            return self._cached(LAYOUT["tensorboard"])
        if self.job_dir is not None:
            return self.job_dir / "tensorboard"
        raise UsageError(f"job {self.job_id} has no TensorBoard events in {self.storage}",
                         fix="events are written once the job trains its first epoch")

    def log_lines(self) -> list[str]:
        """The job's log from storage ([] when it has none there)."""
        if self.storage is None:
            return []
        try:
            return self.storage.read_text(LAYOUT["log"]).splitlines()
        except FileNotFoundError:
            return []


#: Model settings that change no weight's shape: a job may start from weights trained with others.
_SHAPELESS = {"dropout", "generator_learning_rate", "discriminator_learning_rate", "label_smoothing"}


def resolve_init_from(spec: JobSpec, store: JobStore) -> Storage:
    """The ``model/`` folder ``spec.init_from`` names (a job id in ``store``, or a job's storage
    location), checked against ``spec``: same framework, same architecture. Raises UsageError."""
    ref = spec.init_from
    assert ref is not None
    if is_job_location(ref):
        outputs = JobOutputs.at(ref)
    else:
        try:
            outputs = JobOutputs.of_record(store.get(ref))
        except JobNotFoundError:
            raise UsageError(f"init_from: no job {ref!r} in this job store",
                             fix="give a job id that `orchestrator list` shows, or the job's storage location "
                                 "(s3://bucket/prefix/JOB_ID)") from None
    if outputs.storage is not None:
        source = outputs.storage.child(LAYOUT["model"])
    elif outputs.job_dir is not None:
        source = Storage.open(str(outputs.job_dir / "model"))
    else:  # pragma: no cover - a location always has storage
        raise UsageError(f"init_from {ref}: no model")
    try:
        meta = json.loads(source.read_text("model.json"))
    except FileNotFoundError:
        raise UsageError(f"init_from {ref}: that job has no saved model ({source.uri}/model.json is missing)",
                         fix="start from a job that succeeded (`orchestrator status JOB` shows its model)") from None
    problems = []
    if meta.get("framework") != spec.framework:
        problems.append(f"it was trained with {meta.get('framework')}, this job uses {spec.framework}")
    ours = spec.model.model_dump(mode="json") if spec.model else {"entrypoint": spec.entrypoint}
    theirs = meta.get("model") or {}
    if ours.get("type") == "gan" or theirs.get("type") == "gan":
        problems.append("a gan exports only its generator; init_from needs a classifier or regressor")
    differ = sorted(k for k in set(ours) | set(theirs) if k not in _SHAPELESS and ours.get(k) != theirs.get(k))
    if differ:
        problems.append("the model differs in " + ", ".join(f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)"
                                                         for k in differ[:4]))
    if problems:
        raise UsageError(f"init_from {ref}: {'; '.join(problems)}",
                         fix="start from a job with the same framework and model section (only dropout may differ)")
    return source


def check_init_data(source: Storage, sample_shape: tuple[int, ...], num_classes: int | None) -> None:
    """The data must give the saved model's input shape and classes (after data preparation)."""
    meta = json.loads(source.read_text("model.json"))
    if tuple(meta.get("sample_shape") or ()) != tuple(sample_shape) or meta.get("num_classes") != num_classes:
        raise UsageError(
            f"init_from: the saved model takes samples shaped {tuple(meta.get('sample_shape') or ())} with "
            f"{meta.get('num_classes')} classes; this job's data gives {tuple(sample_shape)} with {num_classes}",
            fix="fine-tune on data of the same shape and classes (data.source, preprocessing)",
        )
