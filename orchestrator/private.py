"""Owner-only files and directories for what the orchestrator writes.

The job store holds every job's spec (``spec.yaml``, the ``jobs.db`` rows) and logs that repeat
it; checkpoints hold the weights. Other users of the machine have no business reading them, so
what we create is ``0700`` (directories) or ``0600`` (files), whatever the process umask.
Existing paths keep the mode they have: a directory the user made and shares on purpose stays so.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str) -> Path:
    """``mkdir -p`` where every directory this call creates is owner-only."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another process: it chose its mode
            continue
        os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask; this is exact
    return path


def private_file(path: Path | str) -> Path:
    """Create ``path`` empty and owner-only if it does not exist (its contents are left alone)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
    return path


def write_private_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path``; a file this creates is owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
