"""The RayJob entrypoint on the Ray head: ``python -m orchestrator.backends.k8s.driver VERB ARGS...``.

The operator carries the resolved spec inside the RayJob, in the head container's
``ORCHESTRATOR_SPEC_YAML`` variable (no ConfigMap to write, watch or delete). This writes it to a
private file and replaces itself with ``orchestrator VERB FILE ARGS...`` (same process, so the exit
code and signals are the driver's). Standard library only: it runs before anything else loads.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence

from orchestrator.backends.k8s import SPEC_ENV


def spec_file(environ: Mapping[str, str], directory: str | None = None) -> str:
    """Write the carried spec to a new file only this user can read; returns its path."""
    text = environ.get(SPEC_ENV)
    if not text:
        raise SystemExit(f"error: {SPEC_ENV} is not set: this entrypoint runs in a Ray head pod made by "
                         "the orchestrator operator (fix: submit the job with orchestrator submit --backend kubernetes)")
    folder = tempfile.mkdtemp(prefix="orchestrator-spec-", dir=directory)
    path = os.path.join(folder, "spec.yaml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def command(argv: Sequence[str], path: str) -> list[str]:
    """``python -m orchestrator VERB PATH ARGS...`` for ``argv`` = ``[VERB, ARGS...]``."""
    if not argv:
        raise SystemExit("usage: python -m orchestrator.backends.k8s.driver VERB [ARGS...]")
    verb, *rest = argv
    return [sys.executable, "-m", "orchestrator", verb, path, *rest]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    path = spec_file(os.environ)
    cmd = command(args, path)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
