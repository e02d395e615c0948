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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import CheckpointError, UsageError
from orchestrator.private import private_dir

MANIFEST = "manifest.json"
PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
#: In a checkpoint directory: the id of the job that writes its checkpoints.
OWNER_FILE = ".orchestrator-job"
FORMAT_VERSION = 1
#: A temporary checkpoint directory: ``.tmp-<job id>-ckpt-<step>-<random>``.
_TMP_NAME = re.compile(r"^\.tmp-(?P<owner>.+)-ckpt-\d{10}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found on storage."""

    path: Path
    step: int
    epoch: int
    manifest: dict[str, Any] = field(hash=False, compare=False)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest.get("meta", {}))


@dataclass
class RestoreResult:
    """The checkpoint to restore from (if any) and the ones skipped on the way, with reasons."""

    checkpoint: CheckpointInfo | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
                    files[str(item.relative_to(tmp))] = {
                        "sha256": _sha256(item),
                        "bytes": item.stat().st_size,
                    }
            manifest = {
                "format": FORMAT_VERSION,
                "step": step,
                "epoch": epoch,
                "created_at": time.time(),
                "files": files,
                "meta": meta or {},
            }
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
        for name, entry in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{path}: file {name} is missing")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise CheckpointError(
                    f"{path}: file {name} is {size} bytes, the manifest says {entry['bytes']} (truncated?)"
                )
            if _sha256(file) != entry["sha256"]:
                raise CheckpointError(f"{path}: file {name} fails its sha256 checksum (corrupted)")
        return CheckpointInfo(path, int(manifest["step"]), int(manifest["epoch"]), manifest)

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
    shown = owner[:80] or "(empty)"
    raise UsageError(
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
