"""Job storage: where a job's outputs live so that every node and every later command reaches them.

A storage location is a URI or a path::

    s3://bucket/prefix          any S3-compatible endpoint (AWS_ENDPOINT_URL overrides it)
    gs://bucket/prefix          Google Cloud Storage
    /mnt/shared/prefix          a shared path (NFS, a ReadWriteMany volume), or file:///mnt/...

A job's outputs go under ``<storage>/<job id>/`` (see :data:`LAYOUT`). The filesystem layer is
``pyarrow.fs`` (what Ray Train itself uses for ``storage_path``/``storage_filesystem``); this module
only parses locations, builds the filesystem with the usual environment (AWS credentials, an
endpoint override, a region) and offers the few operations a job needs: put and get a file or a
folder, list, delete. Node-local disk is only a cache (:func:`cache_dir`).

Imports nothing heavy: ``pyarrow.fs`` is imported when a location is opened.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import StorageError, UsageError

#: Where each output of a job goes, relative to ``<storage>/<job id>/``.
LAYOUT = {
    "spec": "spec.yaml",
    "record": "job.json",
    "result": "result.json",
    "log": "driver.log",
    "checkpoints": "checkpoints",
    "model": "model",
    "tensorboard": "tensorboard",
    "samples": "samples",
    "ray": "ray",
}

SCHEMES = ("s3", "gs", "file")
_HELP = "a storage location is s3://bucket/prefix, gs://bucket/prefix or an absolute path (a shared volume)"


def is_uri(text: str) -> bool:
    """True for ``s3://``, ``gs://`` and ``file://`` locations (not for plain paths)."""
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


def check_location(text: str) -> str:
    """The normalised location, or ValueError saying what is wrong (spec validation uses this)."""
    text = text.strip()
    if not text:
        raise ValueError(f"empty storage location; {_HELP}")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown storage scheme {scheme!r}; {_HELP}")
        if scheme == "file":
            path = rest if rest.startswith("/") else "/" + rest
            return posixpath.normpath(path)
        bucket, _, prefix = rest.partition("/")
        if not bucket or any(c in bucket for c in "?#\\ "):
            raise ValueError(f"{text!r} names no bucket; {_HELP}")
        if any(part in ("..", ".") for part in prefix.split("/")):
            raise ValueError(f"{text!r}: '.' and '..' are not allowed in a storage prefix")
        prefix = "/".join(p for p in prefix.split("/") if p)
        return f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
    if text.startswith("~"):
        text = os.path.expanduser(text)
    if not text.startswith("/"):
        raise ValueError(f"storage path {text!r} is relative; {_HELP}")
    return posixpath.normpath(text)


def _endpoint(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(host[:port], scheme) of an S3 endpoint override from the environment, if any."""
    raw = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not raw:
        return None, None
    parsed = urlparse(raw if "://" in raw else f"https://{raw}")
    return parsed.netloc, parsed.scheme or "https"


def _attempts(env: Mapping[str, str]) -> int:
    """AWS_MAX_ATTEMPTS (the AWS SDKs' own setting), else 5: how often one S3 call is tried."""
    try:
        return max(1, min(20, int(env.get("AWS_MAX_ATTEMPTS") or 5)))
    except ValueError:
        return 5


def _filesystem(scheme: str, env: Mapping[str, str]) -> Any:
    import pyarrow.fs as pafs

    if scheme == "s3":
        endpoint, url_scheme = _endpoint(env)
        args: dict[str, Any] = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_attempts(env)),
        }
        if endpoint:
            args.update(endpoint_override=endpoint, scheme=url_scheme)
        if env.get("AWS_ACCESS_KEY_ID"):
            args.update(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
                        session_token=env.get("AWS_SESSION_TOKEN") or None)
        return pafs.S3FileSystem(**args)
    if scheme == "gs":
        args = {}
        if env.get("STORAGE_EMULATOR_HOST"):  # fake-gcs-server and the like
            parsed = urlparse(env["STORAGE_EMULATOR_HOST"])
            args.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "http",
                        anonymous=True)
        return pafs.GcsFileSystem(**args)
    return pafs.LocalFileSystem()


@dataclass(frozen=True)
class Storage:
    """One storage location: a ``pyarrow.fs`` filesystem and a root inside it."""

    #: The location as users write it (``s3://bucket/prefix`` or ``/shared/path``).
    uri: str
    #: The ``pyarrow.fs.FileSystem`` (picklable: it travels to Ray workers as it is).
    fs: Any = field(repr=False, compare=False)
    #: The root as the filesystem names it (``bucket/prefix`` or ``/shared/path``).
    root: str

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, env: Mapping[str, str] | None = None) -> Storage:
        """The storage at ``location`` (raises UsageError for a malformed one)."""
        try:
            uri = check_location(location)
        except ValueError as exc:
            raise UsageError(str(exc), fix=f"set storage to {_HELP}") from None
        env = os.environ if env is None else env
        if "://" in uri:
            scheme, rest = uri.split("://", 1)
        else:
            scheme, rest = "file", uri
        try:
            fs = _filesystem(scheme, env)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises plain errors for a bad config
            raise StorageError(f"cannot open storage {uri}: {exc}",
                               fix="check the credentials and endpoint in the environment "
                                   "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)") from None
        return cls(uri=uri, fs=fs, root=rest if scheme != "file" else uri)

    @property
    def is_local(self) -> bool:
        """True for a path on this machine's filesystem (a shared volume included)."""
        return "://" not in self.uri

    @property
    def local_path(self) -> Path | None:
        return Path(self.root) if self.is_local else None

    def child(self, *parts: str) -> Storage:
        """The storage one or more folders down (``job_storage.child("model")``)."""
        rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if not rel:
            return self
        return Storage(uri=f"{self.uri.rstrip('/')}/{rel}", fs=self.fs, root=f"{self.root.rstrip('/')}/{rel}")

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` under the root."""
        rel = rel.strip("/")
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def __str__(self) -> str:
        return self.uri

    # -- errors -------------------------------------------------------------------------
    def _fail(self, what: str, rel: str, exc: BaseException) -> StorageError:
        where = f"{self.uri.rstrip('/')}/{rel.strip('/')}" if rel else self.uri
        return StorageError(
            f"storage: cannot {what} {where}: {exc}",
            fix="check that the bucket or volume exists and is reachable from this machine, and the "
            "credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL "
            "for an S3-compatible server, GOOGLE_APPLICATION_CREDENTIALS for gs://)",
        )

    # -- operations ---------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        try:
            return bool(self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("look up", rel, exc) from None

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        try:
            return bool(self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("look up", rel, exc) from None

    def read_bytes(self, rel: str) -> bytes:
        """The whole object; FileNotFoundError when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                raise FileNotFoundError(f"{self.uri}/{rel}") from None
            raise self._fail("read", rel, exc) from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one object whole. On S3/GCS an object appears whole or not at all; on a path,
        a temporary file is renamed into place, so a reader never sees half of it."""
        target = self.path(rel)
        try:
            if self.is_local:
                _replace_local(Path(target), lambda tmp: tmp.write_bytes(data))
                return
            with self.fs.open_output_stream(target) as fh:
                fh.write(data)
        except OSError as exc:
            raise self._fail("write", rel, exc) from None

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def put_file(self, local: Path, rel: str) -> None:
        """Upload one local file to ``rel`` (whole, as :meth:`write_bytes`)."""
        target = self.path(rel)
        try:
            if self.is_local:
                _replace_local(Path(target), lambda tmp: shutil.copyfile(local, tmp))
                return
            with open(local, "rb") as src, self.fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        except OSError as exc:
            raise self._fail("write", rel, exc) from None

    def get_file(self, rel: str, local: Path) -> None:
        """Download one object to ``local`` (written to a temporary name, then renamed)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, open(tmp, "wb") as dst:
                while True:
                    block = src.read(8 << 20)
                    if not block:
                        break
                    dst.write(block)
            os.replace(tmp, local)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail("read", rel, exc) from None

    def list_files(self, rel: str = "") -> dict[str, int]:
        """Every file under ``rel`` (recursively), as path relative to ``rel`` -> size in bytes."""
        import pyarrow.fs as pafs

        base = self.path(rel).rstrip("/")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", rel, exc) from None
        out = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                name = info.path[len(base):].lstrip("/")
                if not _is_temporary(name):
                    out[name] = int(info.size or 0)
        return out

    def list_dirs(self, rel: str = "") -> list[str]:
        """The names of the folders directly under ``rel`` (empty when there is none)."""
        import pyarrow.fs as pafs

        base = self.path(rel).rstrip("/")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", rel, exc) from None
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos if i.type == pafs.FileType.Directory)

    def delete(self, rel: str) -> None:
        """Remove a file, or a folder and everything in it (nothing there: nothing to do)."""
        import pyarrow.fs as pafs

        target = self.path(rel)
        try:
            info = self.fs.get_file_info(target)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(target)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail("delete", rel, exc) from None

    def put_dir(self, local: Path, rel: str, *, known: dict[str, tuple[int, float]] | None = None) -> int:
        """Upload every file under ``local`` to ``rel``; returns how many were sent.

        ``known`` (path -> (size, mtime) of what was sent before) makes repeated calls send only
        new or changed files (TensorBoard event files grow; a sync sends them again).
        """
        sent = 0
        for path in sorted(local.rglob("*")):
            if not path.is_file() or _is_temporary(path.name):
                continue
            name = path.relative_to(local).as_posix()
            st = path.stat()
            stamp = (st.st_size, st.st_mtime)
            if known is not None and known.get(name) == stamp:
                continue
            self.put_file(path, f"{rel.strip('/')}/{name}" if rel.strip("/") else name)
            if known is not None:
                known[name] = stamp
            sent += 1
        return sent

    def get_dir(self, rel: str, local: Path) -> int:
        """Download every file under ``rel`` into ``local`` (same relative paths); returns how many."""
        files = self.list_files(rel)
        for name in files:
            if ".." in name.split("/"):
                continue  # never write outside ``local``
            self.get_file(f"{rel.strip('/')}/{name}" if rel.strip("/") else name, local / name)
        return len(files)

    # -- Ray Train ----------------------------------------------------------------------
    def ray_storage(self) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``."""
        return self.root, self.fs


def _replace_local(path: Path, fill: Callable[[Path], object]) -> None:
    """Write ``path`` whole: ``fill`` writes a temporary file beside it, which is fsynced and
    renamed into place, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fill(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _is_temporary(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and (base.endswith(".tmp") or base.endswith(".part"))


def is_job_location(ref: str) -> bool:
    """True when a command's JOB argument is a storage location rather than a job id."""
    return is_uri(ref) or ref.startswith(("/", "~"))


def job_location(storage: str, job_id: str) -> str:
    """The folder of one job's outputs under a storage location."""
    return f"{check_location(storage).rstrip('/')}/{job_id}"


def cache_dir(*parts: str) -> Path:
    """A node-local cache folder (ORCHESTRATOR_CACHE_DIR, else the temp dir), created owner-only.

    Everything here can be deleted at any time: storage holds the originals.
    """
    base = Path(os.environ.get("ORCHESTRATOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"orchestrator-cache-{os.getuid()}")
    path = base.joinpath(*[p.replace("/", "_") for p in parts]) if parts else base
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def cache_key(uri: str) -> str:
    """A short stable folder name for a storage location in the cache."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def walk(local: Path) -> Iterator[Path]:
    """Files under ``local`` (sorted), for callers that upload selectively."""
    yield from (p for p in sorted(local.rglob("*")) if p.is_file())
