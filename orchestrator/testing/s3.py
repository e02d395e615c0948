"""An S3-compatible server for tests and benchmarks: moto in server mode on 127.0.0.1.

``moto[server]`` (the ``test`` extra) is a real HTTP server speaking the S3 API, so the code under
test talks to it exactly as it would to S3 or MinIO: through ``AWS_ENDPOINT_URL``.

* :func:`start_moto_thread` -- in this process (``ThreadedMotoServer``): quick, for unit tests;
* :func:`start_moto_process` -- a ``moto_server`` child process: for benchmarks, and for tests
  where other processes (Ray workers, several nodes) read and write the same buckets, since a
  server thread would share this interpreter's lock with the code it serves.

Both return an :class:`S3Server`: its ``env`` (endpoint, credentials, region) goes into
``os.environ`` or a subprocess's environment, and :meth:`S3Server.create_bucket` makes a bucket.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UsageError

HOST = "127.0.0.1"
#: Credentials moto accepts (any); set so that no real credentials are ever picked up.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
#: The variables :func:`patched_environ` clears and restores (any of them would redirect S3 calls).
ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            *CREDENTIALS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 server."""

    port: int
    _stop: Callable[[], None] = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this server as its S3 (``AWS_ENDPOINT_URL`` and test keys)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **CREDENTIALS}

    def client(self) -> Any:
        """A boto3 S3 client for this server (for arranging and inspecting buckets in tests)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default); returns ``s3://<bucket>``."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted (as S3 itself lists them)."""
        bucket = bucket.removeprefix("s3://").split("/", 1)[0]
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        self._stop()


def _wait_ready(port: int, timeout_s: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            break
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.05)
    raise UsageError(
        f"the moto S3 server on {HOST}:{port} did not start within {timeout_s:.0f} s",
        fix="install the test extra (`pip install 'train-orchestrator[test]'`, which brings moto[server]) "
        "and check that the port is free",
    )


def _require_moto() -> None:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise UsageError(
            "an S3 test server needs the moto package",
            fix="pip install 'train-orchestrator[test]' (or: pip install 'moto[server]')",
        ) from None


def start_moto_thread(port: int | None = None, *, timeout_s: float = 30.0) -> S3Server:
    """moto's ``ThreadedMotoServer`` in this process on 127.0.0.1 (a free port by default)."""
    _require_moto()
    from moto.server import ThreadedMotoServer

    # The server logs every request through werkzeug's logger whatever ``verbose`` says.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = port or free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    _wait_ready(port, timeout_s, lambda: True)
    return S3Server(port=port, _stop=server.stop)


def start_moto_process(port: int | None = None, *, timeout_s: float = 60.0) -> S3Server:
    """``moto_server`` as a child process on 127.0.0.1 (a free port by default); stop() ends it."""
    _require_moto()
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in a test run reaches pytest, which stops it in order
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        _wait_ready(port, timeout_s, lambda: proc.poll() is None)
    except BaseException:
        stop()
        raise
    return S3Server(port=port, _stop=stop)


@contextmanager
def patched_environ(values: Mapping[str, str], keys: tuple[str, ...] = ENV_KEYS) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` (and clear the other ``keys``); restore all on exit."""
    saved = {key: os.environ.get(key) for key in (*keys, *values)}
    try:
        for key in keys:
            os.environ.pop(key, None)
        os.environ.update(values)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def moto_s3(*, process: bool = False, set_env: bool = True) -> Iterator[S3Server]:
    """A moto S3 server for the duration of a ``with`` block, its settings in ``os.environ``."""
    server = start_moto_process() if process else start_moto_thread()
    try:
        if set_env:
            with patched_environ(server.env):
                yield server
        else:
            yield server
    finally:
        server.stop()
