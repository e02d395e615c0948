"""Checkpoints on storage: atomic writes, manifests with checksums, validated restore.

Layout of a checkpoint directory::

    <dir>/ckpt-0000000120/          one complete checkpoint (global step 120)
        state.pt                    framework files, written by the caller
        manifest.json               step, epoch, sha256 and size of every file (written last)
    <dir>/.tmp-<job id>-ckpt-...    a checkpoint being written by that job (renamed when complete)
    <dir>/.orchestrator-job         the id of the job that owns the directory

A checkpoint only becomes visible through an atomic ``rename`` after all its files and the
manifest are fsynced, so a reader never sees half of one. Restore walks checkpoints newest first
and skips any whose manifest is missing or whose checksums do not match, reporting why.

``checkpoint.dir`` may be any directory, shared storage included. A manager that knows its job
(``owner``) claims the directory on first use (:data:`OWNER_FILE`) and refuses one that another
job owns, since two jobs in one directory would restore and prune each other's checkpoints; its
clean-up removes only the temporaries named with its own job id, never anything else there.

Checkpoints in object storage (``s3://``, ``gs://``) use the same layout through
:class:`StorageCheckpointManager`: there the manifest, uploaded after every other file, is the
commit, and each node reads a checkpoint into its own cache. :func:`checkpoint_manager` picks the
manager for a location.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import CheckpointError, StorageError, UsageError
from orchestrator.private import private_dir
from orchestrator.storage import Storage, cache_dir, cache_key

MANIFEST = "manifest.json"
PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
#: In a checkpoint directory: the id of the job that writes its checkpoints.
OWNER_FILE = ".orchestrator-job"
FORMAT_VERSION = 1
#: A temporary checkpoint directory: ``.tmp-<job id>-ckpt-<step>-<random>``.
_TMP_NAME = re.compile(r"^\.tmp-(?P<owner>.+)-ckpt-\d{10}-[0-9a-f]{8}$")
#: A checkpoint folder: ``ckpt-<step>`` (ten digits as written; any number of digits is read).
_CKPT_NAME = re.compile(r"ckpt-\d+")


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found on storage.

    ``path`` is always a local folder the framework code loads from: the checkpoint itself in a
    local directory, or its copy in the node-local cache for one in object storage, whose URI is
    then ``location`` (for display; None for a local checkpoint).
    """

    path: Path
    step: int
    epoch: int
    manifest: dict[str, Any] = field(hash=False, compare=False)
    location: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest.get("meta", {}))


@dataclass
class RestoreResult:
    """The checkpoint to restore from (if any) and the ones skipped on the way, with reasons."""

    checkpoint: CheckpointInfo | None
    #: (where, why): a local path, or the storage URI of a checkpoint in object storage.
    skipped: list[tuple[Path | str, str]] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    """A file's line in a manifest: its sha256 and size."""
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _new_manifest(files: dict[str, Any], *, step: int, epoch: int, meta: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "step": step,
        "epoch": epoch,
        "created_at": time.time(),
        "files": files,
        "meta": meta or {},
    }


def _check_files(folder: Path, manifest: dict[str, Any], *, shown: str) -> None:
    """Every file of ``manifest`` in ``folder`` with its size and sha256, else CheckpointError
    (``shown``: the checkpoint as the message names it)."""
    for name, entry in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{shown}: file {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"{shown}: file {name} is {size} bytes, the manifest says {entry['bytes']} (truncated?)"
            )
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{shown}: file {name} fails its sha256 checksum (corrupted)")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _checked_name(name: str) -> str:
    """``name`` if it names a checkpoint folder (``ckpt-<digits>``), else CheckpointError."""
    if not _CKPT_NAME.fullmatch(name):
        raise CheckpointError(f"{name!r} is not the name of a checkpoint (ckpt-<step>)")
    return name


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` saying the disk or the quota is full in ``exc`` or its causes, else None."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class CheckpointManager:
    """Writes, lists, validates and prunes checkpoints in one directory."""

    def __init__(self, directory: Path | str, keep: int = 3, owner: str | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        #: The id of the job writing here; None for a reader (listing, copying checkpoints).
        self.owner = owner
        self._claimed = False

    def claim(self) -> None:
        """Make this manager's job the owner of the directory, or refuse one another job owns.

        The first use writes :data:`OWNER_FILE` (created exclusively, so two jobs starting at
        once cannot both win); later uses by the same job (a restart, ``orchestrator resume``)
        find their own id there.
        """
        if self.owner is None or self._claimed:
            return
        check_owner(self.directory, self.owner, create=True)
        self._claimed = True

    def save(
        self,
        write: Callable[[Path], None],
        *,
        step: int,
        epoch: int,
        meta: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write a checkpoint atomically. ``write(tmpdir)`` puts the framework files there."""
        private_dir(self.directory)
        self.claim()
        final = self.directory / f"{PREFIX}{step:010d}"
        tag = f"{self.owner}-" if self.owner else ""
        tmp = self.directory / f"{TMP_PREFIX}{tag}{final.name}-{uuid.uuid4().hex[:8]}"
        # Weights are the user's: owner-only, whatever the writer's umask, in a directory that is
        # owner-only itself (the job's, or one we created); a checkpoint.dir the user shares with
        # a group on purpose keeps sharing what is written into it (the umask decides).
        private = stat.S_IMODE(self.directory.stat().st_mode) & 0o077 == 0
        try:
            tmp.mkdir(mode=0o700 if private else 0o777)  # inside the try: a full disk can refuse it
            write(tmp)
            files = {}
            for item in sorted(tmp.rglob("*")):
                if item.is_file():
                    if private:
                        os.chmod(item, 0o600)
                    with item.open("rb+") as fh:
                        os.fsync(fh.fileno())
                    files[item.relative_to(tmp).as_posix()] = _file_entry(item)
            manifest = _new_manifest(files, step=step, epoch=epoch, meta=meta)
            manifest_path = tmp / MANIFEST
            manifest_path.write_text(json.dumps(manifest, indent=1))
            if private:
                os.chmod(manifest_path, 0o600)
            with manifest_path.open("rb+") as fh:
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if final.exists():  # same step written again (e.g. after a restart): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.directory)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave half a checkpoint behind
            full = disk_full_error(exc)
            if full is not None:  # retrying cannot help: say where and what to do
                raise CheckpointError(
                    f"no space left on device writing checkpoint step {step} to {self.directory} "
                    f"({full.strerror or full})",
                    fix=f"free space in {self.directory} or set checkpoint.dir to a volume with room "
                    "(a lower checkpoint.keep keeps fewer); then `orchestrator resume JOB` continues from "
                    "the latest complete checkpoint",
                ) from exc
            raise
        self.prune()
        return CheckpointInfo(final, step, epoch, manifest)

    def _candidates(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(PREFIX) and entry.is_dir():
                try:
                    found.append((int(entry.name[len(PREFIX) :]), entry))
                except ValueError:
                    continue
        return sorted(found, reverse=True)

    def read_manifest(self, path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no manifest (an incomplete checkpoint)") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: unknown manifest format")
        return manifest

    def verify(self, path: Path) -> CheckpointInfo:
        """Check every file against the manifest; raise CheckpointError saying what is wrong."""
        manifest = self.read_manifest(path)
        _check_files(path, manifest, shown=str(path))
        return CheckpointInfo(path, int(manifest["step"]), int(manifest["epoch"]), manifest)

    def fetch(self, name: str) -> CheckpointInfo:
        """The checkpoint ``name`` (``ckpt-0000000120``) of this directory, verified."""
        return self.verify(self.directory / _checked_name(name))

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints with a readable manifest, newest first (checksums not verified)."""
        out = []
        for _, path in self._candidates():
            try:
                manifest = self.read_manifest(path)
            except CheckpointError:
                continue
            out.append(CheckpointInfo(path, int(manifest["step"]), int(manifest["epoch"]), manifest))
        return out

    def latest_valid(self) -> RestoreResult:
        """The newest checkpoint that passes verification; skipped ones come with reasons."""
        result = RestoreResult(None)
        for _, path in self._candidates():
            try:
                result.checkpoint = self.verify(path)
                return result
            except CheckpointError as exc:
                result.skipped.append((path, exc.message))
        return result

    def prune(self) -> None:
        """Keep the ``keep`` newest complete checkpoints; remove older ones."""
        complete = [p for _, p in self._candidates() if (p / MANIFEST).is_file()]
        for old in complete[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)

    def cleanup_orphans(self, older_than_s: float = 0.0) -> builtins.list[Path]:
        """Remove temporary checkpoint directories this job left when a writer died mid-write.

        Only ``.tmp-<this job's id>-ckpt-<step>-<random>`` directories go: another job's
        temporaries and anything else a user keeps in the directory stay. A manager without an
        owner removes nothing.
        """
        removed: builtins.list[Path] = []
        if self.owner is None or not self.directory.is_dir():
            return removed
        self.claim()
        now = time.time()
        for entry in self.directory.iterdir():
            found = _TMP_NAME.match(entry.name)
            if found is None or found["owner"] != self.owner:
                continue
            if entry.is_dir() and not entry.is_symlink() and now - entry.stat().st_mtime >= older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed


def check_owner(directory: Path | str, job_id: str, *, create: bool = False) -> None:
    """Refuse a checkpoint directory that another job owns; with ``create``, claim it for ``job_id``.

    Raises :class:`UsageError` naming the directory, the owning job and the fix. A directory
    without an owner file (new, or written before owners were recorded) is free.
    """
    directory = Path(directory)
    marker = directory / OWNER_FILE
    if create:
        try:
            private_dir(directory)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint.dir {directory}: cannot create it or its owner file ({exc.strerror or exc})",
                fix="set checkpoint.dir to a directory this user can write (on a cluster: storage mounted "
                "on every node), or leave it out to use the job's directory",
            ) from None
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(job_id + "\n")
            return
    try:
        owner = marker.read_text(encoding="utf-8", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):  # nothing there (yet): nobody owns it
        return
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint.dir {directory}: cannot read its owner file {marker} ({exc.strerror or exc})",
            fix=f"make {marker} readable, or set checkpoint.dir to a directory of this job's own",
        ) from None
    if owner == job_id:
        return
    if not owner:
        # Another job is between creating the file and writing its id, or such a claim was cut
        # short. A check alone lets it pass (the claim decides); a claim replaces the empty file
        # atomically and reads it back, so of two jobs racing here exactly one finds its own id.
        if not create:
            return
        _replace_owner(marker, job_id)
        owner = marker.read_text(encoding="utf-8", errors="replace").strip()
        if owner == job_id:
            return
    raise _owned_elsewhere(str(directory), owner, str(marker))


def _owned_elsewhere(directory: str, owner: str, marker: str) -> UsageError:
    """The refusal of a checkpoint directory (a path or a storage URI) that job ``owner`` owns."""
    shown = owner[:80] or "(empty)"
    return UsageError(
        f"checkpoint.dir {directory} belongs to job {shown} ({marker}); two jobs in one checkpoint "
        "directory would restore and delete each other's checkpoints",
        fix=f"set checkpoint.dir to a directory of this job's own (or leave it out: the job's directory); "
        f"to continue job {shown}, `orchestrator resume {shown}`; if that job is gone and its checkpoints "
        f"should be taken over, delete {marker}",
    )


def _replace_owner(marker: Path, job_id: str) -> None:
    tmp = marker.with_name(f"{marker.name}.{job_id}.{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(job_id + "\n")
        os.replace(tmp, marker)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"checkpoint.dir {marker.parent}: cannot write its owner file ({exc.strerror or exc})",
            fix="set checkpoint.dir to a directory this user can write, or leave it out",
        ) from None


# -- checkpoints in object storage ------------------------------------------------------------

#: In the node-local cache: a checkpoint its writer stages, one being downloaded, one thrown away.
_STAGE, _FETCH, _TRASH = ".stage-", ".fetch-", ".trash-"
_CACHE_LOCK = ".lock"


class StorageCheckpointManager:
    """Checkpoints in object storage (``s3://``, ``gs://``), with a node-local cache.

    The layout is the local one (``ckpt-<step>/`` with ``manifest.json``, :data:`OWNER_FILE`).
    An object store has no rename, so the manifest, uploaded after every other file, is the
    commit: a folder without one is incomplete (its writer died mid-upload) and never chosen.

    The writer stages a checkpoint in the node-local cache, uploads it, and keeps the staged
    copy as that node's cached copy. A reader (:meth:`fetch`, :meth:`latest_valid`) reuses a cached
    copy whose files match the manifest in storage, else downloads into a temporary folder, checks
    every file and renames it into place (under a lock, so ranks sharing a node download once).
    :attr:`CheckpointInfo.path` is the cached folder, so framework code loads from a local path as
    it always did; :attr:`CheckpointInfo.location` is the checkpoint's URI.

    A storage that cannot be reached raises :class:`StorageError` (never "no checkpoint": a job
    that restarted from scratch would overwrite its own progress).
    """

    def __init__(self, storage: Storage, keep: int = 3, owner: str | None = None, cache: Path | None = None) -> None:
        self.storage = storage
        self.keep = keep
        #: The id of the job writing here; None for a reader.
        self.owner = owner
        self._cache = Path(cache) if cache is not None else None
        self._claimed = False

    @property
    def location(self) -> str:
        """The storage URI of the checkpoint folder."""
        return self.storage.uri

    @property
    def cache(self) -> Path:
        """This node's cache of these checkpoints (created on first use; may be deleted any time)."""
        if self._cache is None:
            self._cache = cache_dir("checkpoints", cache_key(self.storage.uri))
        else:
            self._cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._cache

    def uri(self, name: str) -> str:
        """The storage URI of checkpoint ``name``."""
        return f"{self.storage.uri.rstrip('/')}/{name}"

    # -- ownership ------------------------------------------------------------------------
    def claim(self) -> None:
        """Make this manager's job the owner of the storage folder, or refuse another job's."""
        if self.owner is None or self._claimed:
            return
        check_storage_owner(self.storage, self.owner, create=True)
        self._claimed = True

    # -- writing --------------------------------------------------------------------------
    def save(
        self,
        write: Callable[[Path], None],
        *,
        step: int,
        epoch: int,
        meta: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write a checkpoint: ``write(folder)`` puts the framework files in a local folder, which is
        uploaded with its manifest last; then older checkpoints beyond ``keep`` are deleted."""
        self.claim()
        if self.owner is not None:  # a claim read back can lose a race found only now
            check_storage_owner(self.storage, self.owner)
        name = f"{PREFIX}{step:010d}"
        cache = self.cache
        staging = cache / f"{_STAGE}{name}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(mode=0o700)
            write(staging)
            files = {
                item.relative_to(staging).as_posix(): _file_entry(item)
                for item in sorted(staging.rglob("*"))
                if item.is_file()
            }
            manifest = _new_manifest(files, step=step, epoch=epoch, meta=meta)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            full = disk_full_error(exc)
            if full is not None:
                raise _cache_full(cache, f"staging checkpoint step {step}", full) from exc
            raise
        try:
            self._upload(staging, name, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with _locked(cache):
            final = _replace_dir(staging, cache / name)
        self.prune()
        return CheckpointInfo(final, step, epoch, manifest, location=self.uri(name))

    def _upload(self, staging: Path, name: str, manifest: dict[str, Any]) -> None:
        try:
            if self.storage.exists(name):  # the same step written again (after a restart): replace it
                self.storage.delete(f"{name}/{MANIFEST}")  # first: from here on it is incomplete
                self.storage.delete(name)
            for rel in sorted(manifest["files"]):
                self.storage.put_file(staging / rel, f"{name}/{rel}")
            self.storage.put_file(staging / MANIFEST, f"{name}/{MANIFEST}")  # last: the commit
        except StorageError as exc:
            raise StorageError(
                f"checkpoint step {manifest['step']} was not saved to {self.uri(name)} (what was uploaded "
                f"is an incomplete checkpoint, never restored): {exc.message}",
                fix=exc.fix,
            ) from None

    def prune(self) -> None:
        """Keep the ``keep`` newest complete checkpoints; delete older ones (manifest first) and
        their cached copies."""
        complete = [name for name, has_manifest in self._scan() if has_manifest]
        for name in complete[self.keep :]:
            self.storage.delete(f"{name}/{MANIFEST}")
            self.storage.delete(name)
            with _locked(self.cache):
                _remove_dir(self.cache / name)

    def cleanup_orphans(self, older_than_s: float = 0.0) -> builtins.list[str]:
        """Delete checkpoint folders without a manifest (a writer died mid-upload); returns their URIs.

        Only a manager with an owner (the job that writes here) removes anything; stale staging
        and download folders in this node's cache go too.
        """
        removed: builtins.list[str] = []
        if self.owner is None:
            return removed
        self.claim()
        for name, has_manifest in self._scan():
            if has_manifest or (older_than_s > 0 and self._age_s(name) < older_than_s):
                continue
            self.storage.delete(name)
            removed.append(self.uri(name))
        cache = self.cache
        with _locked(cache):
            for entry in cache.iterdir():
                if entry.name.startswith((_STAGE, _FETCH, _TRASH)):
                    _remove_dir(entry)
        return removed

    def _age_s(self, name: str) -> float:
        import pyarrow.fs as pafs

        infos = self.storage.fs.get_file_info(pafs.FileSelector(self.storage.path(name), recursive=True))
        newest = max((i.mtime.timestamp() for i in infos if i.mtime is not None), default=0.0)
        return time.time() - newest

    # -- reading --------------------------------------------------------------------------
    def _scan(self) -> builtins.list[tuple[str, bool]]:
        """(name, has a manifest) of every checkpoint folder in storage, newest first."""
        has: dict[str, bool] = {}
        for rel in self.storage.list_files():
            top, _, rest = rel.partition("/")
            if rest and _CKPT_NAME.fullmatch(top):
                has[top] = has.get(top, False) or rest == MANIFEST
        return sorted(has.items(), key=lambda item: int(item[0][len(PREFIX) :]), reverse=True)

    def read_manifest(self, path: Path | str) -> dict[str, Any]:
        """The manifest in storage of checkpoint ``path`` (a name, a cached folder or a URI)."""
        name = _checked_name(PurePosixPath(str(path)).name)
        shown = self.uri(name)
        try:
            raw = self.storage.read_bytes(f"{name}/{MANIFEST}")
        except FileNotFoundError:
            raise CheckpointError(f"{shown}: no manifest (an incomplete checkpoint)") from None
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise CheckpointError(f"{shown}: unreadable manifest ({exc})") from None
        if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION
                or not isinstance(manifest.get("files"), dict)):
            raise CheckpointError(f"{shown}: unknown manifest format")
        return manifest

    def list(self) -> builtins.list[CheckpointInfo]:
        """Checkpoints with a readable manifest, newest first (nothing downloaded or verified:
        ``path`` is where :meth:`fetch` puts the cached copy)."""
        out = []
        for name, has_manifest in self._scan():
            if not has_manifest:
                continue
            try:
                manifest = self.read_manifest(name)
            except CheckpointError:
                continue
            out.append(self._info(name, manifest))
        return out

    def _info(self, name: str, manifest: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(self.cache / name, int(manifest["step"]), int(manifest["epoch"]), manifest,
                              location=self.uri(name))

    def verify(self, path: Path | str) -> CheckpointInfo:
        """A verified local copy of checkpoint ``path`` (a name, a cached folder or a URI).

        Reuses this node's cached copy when every file matches the manifest in storage, else
        downloads it; raises CheckpointError saying what is wrong with the checkpoint.
        """
        name = _checked_name(PurePosixPath(str(path)).name)
        manifest = self.read_manifest(name)
        cache = self.cache
        final = cache / name
        with _locked(cache):
            if not _cached_copy_matches(final, manifest):
                self._download(name, manifest, final)
                self._trim_cache(keep=name)
        return self._info(name, manifest)

    def fetch(self, name: str) -> CheckpointInfo:
        """The checkpoint ``name`` (``ckpt-0000000120``), verified, in this node's cache."""
        return self.verify(name)

    def latest_valid(self) -> RestoreResult:
        """The newest checkpoint that passes verification; skipped ones come with reasons."""
        result = RestoreResult(None)
        for name, _ in self._scan():
            try:
                result.checkpoint = self.verify(name)
                return result
            except CheckpointError as exc:
                result.skipped.append((self.uri(name), exc.message))
        return result

    def _download(self, name: str, manifest: dict[str, Any], final: Path) -> None:
        shown = self.uri(name)
        cache = final.parent
        need = sum(int(entry.get("bytes", 0)) for entry in manifest["files"].values())
        free = shutil.disk_usage(cache).free
        if free < need:
            raise _cache_full(cache, f"downloading checkpoint {shown} ({need / 1e6:.1f} MB)",
                              OSError(errno.ENOSPC, f"{free / 1e6:.1f} MB free"))
        tmp = cache / f"{_FETCH}{name}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(mode=0o700)
            for rel in manifest["files"]:
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise CheckpointError(f"{shown}: the manifest names a file outside the checkpoint ({rel})")
                try:
                    self.storage.get_file(f"{name}/{rel}", tmp / rel)
                except FileNotFoundError:
                    raise CheckpointError(f"{shown}: file {rel} is missing") from None
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _check_files(tmp, manifest, shown=shown)
            _replace_dir(tmp, final)
        except BaseException as exc:
            _remove_dir(tmp)
            full = disk_full_error(exc)
            if full is not None:
                raise _cache_full(cache, f"downloading checkpoint {shown}", full) from exc
            raise

    def _trim_cache(self, keep: str) -> None:
        """Drop cached checkpoints beyond the ``keep`` newest (a reader's node never prunes storage)."""
        cached = sorted(
            (e.name for e in self.cache.iterdir() if _CKPT_NAME.fullmatch(e.name) and e.name != keep),
            key=lambda n: int(n[len(PREFIX) :]),
            reverse=True,
        )
        for old in cached[max(self.keep - 1, 0) :]:
            _remove_dir(self.cache / old)


def check_storage_owner(storage: Storage, job_id: str, *, create: bool = False) -> None:
    """:func:`check_owner` for a checkpoint folder in object storage (an :data:`OWNER_FILE` object).

    A claim writes the object when there is none and reads it back. Object stores offer no
    exclusive create here, so two jobs claiming in the same instant can both pass; the later one's
    id is what stays, and the other job's next save (:meth:`StorageCheckpointManager.save` checks
    again) is refused.
    """
    marker = f"{storage.uri.rstrip('/')}/{OWNER_FILE}"
    try:
        owner = storage.read_text(OWNER_FILE).strip()
    except FileNotFoundError:
        owner = ""
    if owner == job_id:
        return
    if not owner:
        if not create:
            return
        storage.write_text(OWNER_FILE, job_id + "\n")
        owner = storage.read_text(OWNER_FILE).strip()
        if owner == job_id:
            return
    raise _owned_elsewhere(storage.uri, owner, marker)


def checkpoint_manager(
    location: str | Path,
    *,
    keep: int = 3,
    owner: str | None = None,
    cache: Path | None = None,
) -> CheckpointManager | StorageCheckpointManager:
    """The manager for checkpoints at ``location``: a path (a shared volume included; its rename
    is atomic) gets :class:`CheckpointManager`, ``s3://`` and ``gs://`` get
    :class:`StorageCheckpointManager` (``cache``: its node-local cache, by default under
    :func:`orchestrator.storage.cache_dir`)."""
    text = str(location)
    if "://" not in text:
        return CheckpointManager(text, keep=keep, owner=owner)
    storage = Storage.open(text)  # a malformed location: UsageError
    if storage.local_path is not None:  # file:///...
        return CheckpointManager(storage.local_path, keep=keep, owner=owner)
    return StorageCheckpointManager(storage, keep=keep, owner=owner, cache=cache)


def _cache_full(cache: Path, what: str, full: OSError) -> CheckpointError:
    return CheckpointError(
        f"no space left on device {what} in the node-local cache {cache} ({full.strerror or full})",
        fix=f"free space in {cache}, or set ORCHESTRATOR_CACHE_DIR to a local volume with room (the "
        "cache holds copies only: storage keeps the checkpoints); then `orchestrator resume JOB` continues "
        "from the latest complete checkpoint",
    )


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """An exclusive lock on this node's cache folder (processes on one node take turns)."""
    import fcntl

    fd = os.open(cache / _CACHE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_dir(path: Path) -> None:
    """Remove a folder: renamed aside first, so nobody sees half of it under its name."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f"{_TRASH}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _replace_dir(new: Path, final: Path) -> Path:
    """Rename ``new`` to ``final``, removing what was there; returns ``final``."""
    _remove_dir(final)
    os.rename(new, final)
    return final


def _cached_copy_matches(folder: Path, manifest: dict[str, Any]) -> bool:
    """True when ``folder`` holds every file of ``manifest`` (size and sha256) and the manifest."""
    try:
        if json.loads((folder / MANIFEST).read_text()) != manifest:
            return False
        _check_files(folder, manifest, shown=str(folder))
    except (OSError, ValueError, CheckpointError):
        return False
    return True
