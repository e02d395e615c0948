"""Data sets of files: find the files a ``data.source`` names and their format (no data is read).

A data set of files is a directory, a glob (``data/train-*.parquet``) or a storage prefix
(``s3://bucket/digits``, ``gs://...``) holding Parquet, CSV, ``.npz``/``.npy`` shards or an image
folder (one sub-directory per class, PNG/JPEG). :func:`list_source` lists it through
:mod:`orchestrator.storage`'s ``pyarrow.fs`` filesystem, sorted by path (the stable order every
split and shard plan starts from), skipping hidden and bookkeeping files (``.*``, ``_*``, e.g.
``_SUCCESS``). ``orchestrator validate`` calls it (a spec naming no files fails there, with the
fix); the runtime (:mod:`orchestrator.runtime.datasets`) reads the files with Ray Data.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import StorageError, UsageError
from orchestrator.storage import Storage, is_uri

#: File extensions of each format (lower case).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv",),
    "npz": (".npz",),
    "npy": (".npy",),
    "images": (".png", ".jpg", ".jpeg"),
}
_GLOB = "*?["


class SourceError(ValueError):
    """A data set of files that cannot be used: ``message`` (naming the file), and the ``fix``."""

    def __init__(self, message: str, fix: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.path = path


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: its path in the filesystem, its path relative to the source, its size."""

    path: str
    rel: str
    size: int


@dataclass(frozen=True)
class SourceListing:
    """The files of a data set in a stable (sorted) order, their format, and the filesystem to read them."""

    source: str
    format: str
    files: tuple[DataFile, ...]
    fs: Any = field(repr=False, compare=False)
    #: Image folders: the class names (sub-directories), sorted; label i is classes[i].
    classes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def label_of(self, file: DataFile) -> int:
        """An image's class index (its top sub-directory)."""
        return self.classes.index(file.rel.split("/", 1)[0])


def format_of(name: str) -> str | None:
    """The format a file name's extension says, or None."""
    lower = name.lower()
    for fmt, exts in EXTENSIONS.items():
        if lower.endswith(exts):
            return fmt
    return None


def _split_glob(source: str) -> tuple[str, str | None]:
    """(the location before the first glob component, the pattern relative to it or None)."""
    if not any(c in source for c in _GLOB):
        return source, None
    scheme = ""
    rest = source
    if "://" in source:
        scheme, rest = source.split("://", 1)
        scheme += "://"
    parts = rest.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB))
    base = "/".join(parts[:first]) or ("/" if rest.startswith("/") else ".")
    return scheme + base, "/".join(parts[first:])


def list_source(source: str, fmt: str = "auto", env: Mapping[str, str] | None = None) -> SourceListing:
    """The data files ``source`` names (an absolute path, glob or storage URI); raises SourceError."""
    location, pattern = _split_glob(source)
    if not is_uri(location):
        location = os.path.abspath(os.path.expanduser(location))
    try:
        store = Storage.open(location, env)
        import pyarrow.fs as pafs

        info = store.fs.get_file_info(store.root)
        if info.type == pafs.FileType.File:
            entries = {posixpath.basename(store.root): int(info.size or 0)}
            store = Storage(uri=store.uri, fs=store.fs, root=posixpath.dirname(store.root) or "/")
        else:
            entries = store.list_files()
    except (StorageError, UsageError) as exc:
        raise SourceError(f"cannot list {source}: {exc.message}", exc.fix or "check data.source") from None
    names = sorted(n for n in entries if not any(p.startswith((".", "_")) for p in n.split("/")))
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise SourceError(f"no files match {source}",
                          "check data.source: a directory, a glob such as data/*.parquet, or an s3:// or "
                          "gs:// prefix that holds the data files")
    if fmt == "auto":
        kinds = {format_of(n) for n in names}
        known = sorted(k for k in kinds if k is not None)
        if not known:
            raise SourceError(
                f"unknown data format: none of the {len(names)} files under {source} ends in "
                + ", ".join(e for exts in EXTENSIONS.values() for e in exts) + f" (e.g. {names[0]})",
                "set data.format (parquet, csv, npz, npy, images) or point data.source at the data files")
        if len(known) > 1:
            raise SourceError(f"{source} mixes formats ({', '.join(known)})",
                              f"set data.format to one of them, or a glob naming one kind (e.g. *{EXTENSIONS[known[0]][0]})")
        fmt = known[0]
    # an explicit format reads the files with its extensions, or every file when none has one
    names = [n for n in names if format_of(n) == fmt] or names
    files = tuple(DataFile(store.path(n), n, entries[n]) for n in names)
    classes: tuple[str, ...] = ()
    if fmt == "images":
        flat = [f.rel for f in files if "/" not in f.rel]
        if flat:
            raise SourceError(f"{source}/{flat[0]}: an image folder holds one sub-directory per class, "
                              "and this image is directly in it",
                              "move each image into a folder named after its class (e.g. 3/img-001.png)",
                              path=flat[0])
        classes = tuple(sorted({f.rel.split("/", 1)[0] for f in files}))
        if len(classes) < 2:
            raise SourceError(f"{source} has one class folder ({classes[0]}); a classifier needs two or more",
                              "add a sub-directory per class")
    for f in files:
        if f.size == 0:
            raise SourceError(f"{_where(store, f)}: the file is empty (0 bytes)",
                              "delete it or write it again", path=f.path)
    return SourceListing(source=source, format=fmt, files=files, fs=store.fs, classes=classes)


def _where(store: Storage, f: DataFile) -> str:
    return f"{store.uri.rstrip('/')}/{f.rel}" if "://" in store.uri else f.path


def resolve_source(source: str, base: str) -> str:
    """A data set's source with a relative local path made absolute against ``base`` (the spec's folder)."""
    if "://" in source:
        return source
    expanded = os.path.expanduser(source)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))
