"""Ray start-up that survives a slow machine.

Ray 2.60's raylet gives its dashboard agent and runtime-env agent a fixed 15 s to write their
port files (``node_manager.cc``: "Timed out waiting for file .../metrics_agent_port_<node>"), and
then aborts; ``ray.init``/``ray start`` give the node a fixed 30 s to register. The agents are
Python processes whose imports alone take 30-40 s on a shared 2-CPU VM, so Ray cannot start there
at all (``RAY_agent_register_timeout_ms`` is not consulted for this wait in 2.60).

:func:`patient_start_up` fixes both without changing what runs:

* the four agent ports are chosen before the raylet starts (free ports, or the ones given), passed
  to it explicitly, and published in the session directory under the names the raylet waits for,
  with the same contents the agents write once they are up (a plain port number). The raylet goes
  on at once; the agents bind those ports when their imports finish, and Ray's clients retry
  until then;
* the wait for the node to register with the GCS is ``ORCHESTRATOR_RAY_START_TIMEOUT_S``
  (default 600 s) instead of 30 s;
* the same patience for the worker processes, through Ray's own settings (unless already set):
  a worker process has 600 s instead of 60 s to register with its raylet (past that the raylet
  starts another, forever, on a machine where importing Ray takes a minute), and a Ray Train
  worker group 600 s instead of 60 s to start.

It patches two functions of ``ray._private.services`` in this process (idempotently), so it
applies to ``ray.init()`` here and to ``python -m orchestrator.execution.ray_startup start ...``,
which is ``ray start`` with the patch (what the integration tests and benchmarks use).
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

#: Seconds a starting node may take to register with the GCS (Ray's own limit is 30 s).
START_TIMEOUT_S = float(os.environ.get("ORCHESTRATOR_RAY_START_TIMEOUT_S", "600"))

#: start_raylet's agent port parameters; each is also the name of the file the raylet waits for.
AGENT_PORTS = (
    "metrics_agent_port",
    "metrics_export_port",
    "dashboard_agent_listen_port",
    "runtime_env_agent_port",
)

_PATCHED = "_orchestrator_patient"

#: Ray settings read from the environment by the raylet (started after this) and by Ray Train.
PATIENT_ENVIRONMENT = {
    "RAY_worker_register_timeout_seconds": str(int(START_TIMEOUT_S)),
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(int(START_TIMEOUT_S)),
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_port(session_dir: str, name: str, node_id: str, port: int) -> str:
    """Write ``<session_dir>/<name>_<node_id>`` atomically, as the Ray agent itself would."""
    path = os.path.join(session_dir, f"{name}_{node_id}")
    tmp = f"{path}.orchestrator-tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)
    return path


def _wrap_start_raylet(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def start_raylet(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        session_dir, node_id = bound.arguments["session_dir"], str(bound.arguments["node_id"])
        for name in AGENT_PORTS:
            port = bound.arguments.get(name)
            if not port:  # None or 0: Ray would let the agent pick one and wait to read it
                port = free_port()
                bound.arguments[name] = port
            publish_port(session_dir, name, node_id, int(port))
        return original(*bound.args, **bound.kwargs)

    setattr(start_raylet, _PATCHED, True)
    return start_raylet


def _wrap_get_node(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_node(gcs_address: str, node_id: str) -> Any:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:  # not registered yet; Ray's own loop gives up after 30 s
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    setattr(get_node, _PATCHED, True)
    return get_node


def set_patient_environment() -> dict[str, str]:
    """Ray's worker start-up timeouts for a slow machine, where not set already; returns them."""
    return {name: os.environ.setdefault(name, value) for name, value in PATIENT_ENVIRONMENT.items()}


def patient_start_up() -> None:
    """Patch this process's Ray start-up (see the module docstring). Safe to call repeatedly."""
    set_patient_environment()
    from ray._private import services

    if not getattr(services.start_raylet, _PATCHED, False):
        services.start_raylet = _wrap_start_raylet(services.start_raylet)
    if not getattr(services.get_node, _PATCHED, False):
        services.get_node = _wrap_get_node(services.get_node)


def main(argv: list[str] | None = None) -> None:
    """``ray <argv>`` (e.g. ``start --head ...``) with :func:`patient_start_up` applied."""
    patient_start_up()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    ray_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
