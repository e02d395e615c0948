"""A Ray cluster of several nodes on one machine, for tests and benchmarks that lose a node.

Each node is a real ``ray start`` (through :mod:`orchestrator.execution.ray_startup`, which
survives a slow machine) with its own ``--temp-dir``, its own raylet and worker processes, a
custom resource named after it (so a test knows where a worker runs) and its own node-local
scratch folder (``ORCHESTRATOR_CACHE_DIR``). :meth:`LocalRayCluster.kill_node` SIGKILLs a node's
raylet and every process of that node: to Ray, the node is gone, as a machine that lost power.

Ray's GCS notices a dead node through its health checks; :data:`FAST_HEALTH_CHECKS` shortens
them for tests (Ray's defaults take about 30 s). Never set these in a product default.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Ray's own settings (read by the GCS at start): a dead raylet is declared dead in about 3 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class Node:
    name: str
    temp_dir: Path
    scratch: Path
    resources: dict[str, float] = field(default_factory=dict)


class LocalRayCluster:
    """A head and named nodes under ``base`` (a short path: Ray's socket paths have a length limit)."""

    def __init__(self, base: Path, env: dict[str, str] | None = None, head_port: int = 6390,
                 dashboard_port: int = 8270) -> None:
        self.base = base
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.head_port = head_port
        self.dashboard_port = dashboard_port
        self.nodes: dict[str, Node] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], node: Node) -> None:
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        node.scratch.mkdir(parents=True, exist_ok=True)
        from orchestrator.execution.ray_startup import free_port

        env = {**self.env, "ORCHESTRATOR_CACHE_DIR": str(node.scratch)}
        # every node its own agent ports: `ray start` passes its fixed defaults (the dashboard
        # agent's 52365) otherwise, and a second node on this machine could not bind them
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        cmd = [sys.executable, "-m", "orchestrator.execution.ray_startup", "start", *args, *ports,
               f"--temp-dir={node.temp_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               f"--resources={json.dumps(node.resources)}"]
        last = None
        for _ in range(3):  # a very busy machine can make a node miss its start-up window
            last = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if last.returncode == 0:
                self.nodes[node.name] = node
                return
            self._kill_processes_of(node)
        assert last is not None
        raise RuntimeError(f"ray start for node {node.name} failed:\n{last.stdout}\n{last.stderr}")

    def start_head(self, num_cpus: float = 0) -> None:
        node = Node("head", self.base / "head", self.base / "scratch-head", {"head": 1})
        from orchestrator.execution.ray_startup import free_port

        self._start(["--head", f"--port={self.head_port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={free_port()}"], node)  # not 10001: another Ray may run here

    def add_node(self, name: str, num_cpus: float) -> Node:
        node = Node(name, self.base / name, self.base / f"scratch-{name}", {name: 1})
        self._start([f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"], node)
        return node

    def alive_nodes(self, timeout: float = 300) -> list[dict[str, Any]]:
        """``ray.nodes()`` of the cluster, read by a separate driver (this process keeps no Ray)."""
        code = ("import json, ray; from orchestrator.execution.ray_local import use_local_auth_token; "
                f"use_local_auth_token(); ray.init(address={self.address!r}, log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return [n for n in json.loads(proc.stdout.strip().splitlines()[-1]) if n["alive"]]

    def node_ids(self) -> dict[str, str]:
        """Node name (its custom resource) -> Ray node id, for the nodes alive now."""
        out = {}
        for node in self.alive_nodes():
            for name in self.nodes:
                if node["resources"].get(name):
                    out[name] = node["id"]
        return out

    def _processes_of(self, node: Node) -> list[Any]:
        import psutil

        marker = str(node.temp_dir)
        found: dict[int, Any] = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if marker in cmdline:
                found[proc.pid] = proc
                try:
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
                except psutil.NoSuchProcess:
                    continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def _kill_processes_of(self, node: Node) -> int:
        killed = 0
        for proc in self._processes_of(node):
            try:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
        return killed

    def kill_node(self, name: str, *, remove_scratch: bool = True) -> int:
        """SIGKILL every process of node ``name`` (its raylet first) and delete its scratch folder;
        returns how many processes were killed."""
        import psutil

        node = self.nodes[name]
        # one snapshot first: Ray's workers renamed themselves (``ray::RayTrainWorker``), so only as
        # the raylet's children are they found; once the raylet is dead they are orphans that a
        # second scan would miss, and they would train on for seconds on a node that is "gone"
        processes = self._processes_of(node)

        def is_raylet(proc: Any) -> bool:
            try:
                return "raylet" in " ".join(proc.cmdline() or [])[:200]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return False

        ordered = sorted(processes, key=lambda proc: not is_raylet(proc))  # the raylet first
        killed = 0
        for proc in ordered:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
        killed += self._kill_processes_of(node)  # anything the node started meanwhile
        if remove_scratch:
            shutil.rmtree(node.scratch, ignore_errors=True)
        return killed

    def shutdown(self) -> None:
        """Kill every node of this cluster (never ``ray stop``: other Ray instances may run here)."""
        for node in list(self.nodes.values())[::-1]:
            self._kill_processes_of(node)
        time.sleep(1)
        for node in self.nodes.values():
            self._kill_processes_of(node)
