"""Shared fixtures: an isolated ORCHESTRATOR_HOME per test, paths to the repo and shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.testing.s3 import S3Server, patched_environ, start_moto_thread

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

_exit_status = pytest.StashKey[int]()


@contextmanager
def mounted_tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``mount`` (``options`` such as ``size=1m``), unmounted afterwards.

    Mounting needs root (CAP_SYS_ADMIN), which CI's container has; elsewhere the test is skipped.
    """
    mount.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh job store for one test (ORCHESTRATOR_HOME)."""
    path = tmp_path / "orchestrator-home"
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(path))
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_exit_status] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without the interpreter's teardown once pytest has written everything.

    After the whole suite (torch, Ray, kopf, the trace replays' millions of objects), Python's
    final garbage collection in ``Py_FinalizeEx`` ran for more than 13 minutes on a 2-CPU VM after the
    summary line was printed (seen with gdb: ``gc_collect_main`` from ``finalize_modules``). Every
    fixture and plugin has finished by now, so only that teardown is skipped.
    ``ORCHESTRATOR_TEST_FAST_EXIT=0`` turns this off; it applies only to the pytest command, never
    to a ``pytest.main()`` call inside another program.
    """
    status = config.stash.get(_exit_status, None)
    if status is None or os.environ.get("ORCHESTRATOR_TEST_FAST_EXIT", "1") == "0":
        return
    if Path(sys.argv[0]).name not in ("pytest", "py.test", "__main__.py") or "pytest" not in sys.argv[0]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session; its endpoint and test credentials are
    in ``os.environ`` (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/SECRET, AWS_REGION) until it stops."""
    pytest.importorskip("moto.server", reason="the S3 test server needs moto[server] (the test extra)")
    server = start_moto_thread()
    try:
        with patched_environ(server.env):
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server: ``s3://<bucket>``."""
    return s3_server.create_bucket()


@pytest.fixture(scope="session")
def example_jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of jobs/ and examples/ with the data the data-set examples read, written by the documented
    generator (``orchestrator data generate``): the folder holding the copied jobs/."""
    import shutil

    from orchestrator.runtime.datagen import write_example_data

    root = tmp_path_factory.mktemp("examples")
    for folder in ("jobs", "examples"):
        shutil.copytree(REPO / folder, root / folder)
    write_example_data(root)
    return root
