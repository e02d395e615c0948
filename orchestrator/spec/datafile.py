"""Cheap checks of an ``.npz`` data file from its headers: no array is loaded.

``submit``, ``--dry-run``, ``tune`` and ``predict --input`` call :func:`inspect_npz` before
anything runs (and before a job record exists); the runtime's loader calls it again before
``numpy.load``. It reads the zip directory and, of each wanted array, only the ``.npy`` header
(magic, version, dtype, shape), so a multi-gigabyte file is checked in milliseconds, and a file
that would fail later (a corrupt or truncated archive, an empty file, a single ``.npy`` renamed
``.npz``, pickled objects, a header declaring more data than the archive holds) fails here with
what is wrong and how to fix it.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The most array data (uncompressed) a data file may declare: 16 GiB.
MAX_DATA_BYTES = 16 * 1024**3
#: Files up to this size are also read through once to verify every member's CRC (a few ms per MiB).
CRC_CHECK_BYTES = 64 * 1024**2
_NPY_MAGIC = b"\x93NUMPY"
_SAVE_HINT = "save it with numpy.savez(path, x=features, y=labels)"


class DataFileError(ValueError):
    """A data file that cannot be used: ``message`` says what is wrong, ``fix`` how to mend it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class ArrayInfo:
    """One array of an .npz file, as its header declares it."""

    shape: tuple[int, ...]
    dtype: Any  # numpy.dtype

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0


def inspect_npz(path: str | os.PathLike[str], keys: Sequence[str] = ("x", "y"), *,
                save_hint: str = _SAVE_HINT) -> dict[str, ArrayInfo]:
    """The header of each array in ``keys`` (all must exist); raises :class:`DataFileError`.

    Checks: a regular, non-empty file; a readable zip archive (not a bare ``.npy``); each key
    present; each array numeric (no pickled objects), at least one-dimensional, with rows; its
    declared size matching what the archive holds and at most :data:`MAX_DATA_BYTES`; and, given
    both ``x`` and ``y``, one label per row of ``x``.
    """
    where = Path(path)
    _check_file(where)
    try:
        with where.open("rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
        if head == _NPY_MAGIC:
            raise DataFileError("is a single array, not an .npz archive of named arrays (a .npy file renamed?)", save_hint)
        with zipfile.ZipFile(where) as archive:
            infos = _headers(archive, keys, save_hint)
            if where.stat().st_size <= CRC_CHECK_BYTES:
                broken = archive.testzip()
                if broken is not None:
                    raise DataFileError(f"array {_short(broken, 40)} fails its checksum: the file is corrupt",
                                        "write the file again with numpy.savez")
    except DataFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, RuntimeError, MemoryError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DataFileError(f"cannot read the .npz file ({_short(reason)}); it may be corrupt or truncated",
                            save_hint) from None
    if "x" in infos and "y" in infos:
        _check_pair(infos["x"], infos["y"])
    return infos


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataFileError("file not found", f"check the path (resolved to {path})") from None
    except (OSError, ValueError) as exc:
        raise DataFileError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}",
                            "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataFileError("is a directory, not an .npz file", "point at the .npz file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise DataFileError("is not a regular file (a pipe or a device); nothing was read from it",
                            "save the arrays to an .npz file and point at that")
    if st.st_size == 0:
        raise DataFileError("the file is empty (0 bytes)", _SAVE_HINT)


def _headers(archive: zipfile.ZipFile, keys: Sequence[str], save_hint: str) -> dict[str, ArrayInfo]:
    from numpy.lib import format as npy

    members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    missing = [k for k in keys if k not in members]
    if missing:
        have = ", ".join(_short(name, 20) for name in list(members)[:8]) or "none"
        raise DataFileError(f"the .npz file has no array named {', '.join(missing)} (it has {have})", save_hint)
    out: dict[str, ArrayInfo] = {}
    for key in keys:
        info = members[key]
        with archive.open(info) as member:
            version = npy.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(member)
            else:
                raise DataFileError(f"array {key} uses .npy format version {version}, which is not read",
                                    save_hint)
            header_bytes = member.tell()
        out[key] = _check_array(key, tuple(int(n) for n in shape), dtype, info.file_size - header_bytes)
    return out


def _check_array(key: str, shape: tuple[int, ...], dtype: Any, available: int) -> ArrayInfo:
    import numpy as np

    if dtype.hasobject:
        raise DataFileError(f"array {key} holds Python objects (it would need pickle, which is never loaded)",
                            f"save {key} as a numeric array, e.g. numpy.asarray({key}, dtype='float32')")
    if not np.issubdtype(dtype, np.number):
        raise DataFileError(f"array {key} has dtype {_short(str(dtype))}; numeric arrays only",
                            f"convert {key} to a float or int array")
    if not shape:
        raise DataFileError(f"array {key} is a single value, not one row per sample",
                            f"give {key} one row per sample")
    count = 1
    for side in shape:
        count *= side
    declared = count * dtype.itemsize
    if declared > MAX_DATA_BYTES:
        raise DataFileError(
            f"array {key} declares shape {_short(str(shape))}: {declared:,} bytes, more than the "
            f"{MAX_DATA_BYTES // 1024**3} GiB a data file may hold",
            "use a smaller data set (or a sample of it)",
        )
    if declared != available:
        raise DataFileError(
            f"array {key} declares shape {_short(str(shape))} ({declared:,} bytes) but the file holds "
            f"{max(available, 0):,} bytes of it: the file is truncated or corrupt",
            "write the file again with numpy.savez",
        )
    if shape[0] == 0:
        raise DataFileError(f"array {key} holds no samples (0 rows): the data set is empty",
                            "give at least a few hundred rows")
    return ArrayInfo(shape, dtype)


def _check_pair(x: ArrayInfo, y: ArrayInfo) -> None:
    if len(x.shape) < 2:
        raise DataFileError(f"x is shaped {x.shape}: one value per sample, no features",
                            "give x shaped (samples, features...), e.g. (1000, 64) or (1000, 8, 8)")
    if x.rows != y.rows:
        raise DataFileError(f"x has {x.rows} rows but y has {y.rows}", "give one label per row of x")
    if len(y.shape) > 2 or (len(y.shape) == 2 and y.shape[1] != 1):
        raise DataFileError(f"y is shaped {_short(str(y.shape))}; one label or one target per row is supported",
                            "give class labels (0, 1, 2, ...) rather than one-hot rows, or one regression target")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
