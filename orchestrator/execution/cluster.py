"""The warm local cluster: ``orchestrator up`` starts it, ``down`` stops it, idleness stops it too.

``up`` starts a Ray head on this machine (dashboard and metrics on 127.0.0.1) that outlives one
job, starts the pool of warm torch workers (:mod:`orchestrator.runtime.warm`) with one gang ready,
and records the cluster in ``<home>/cluster.json``. While that file names a head that answers,
every local job of the same home joins this cluster instead of starting an embedded Ray, and a
torch job on CPUs runs on a warm gang (:mod:`orchestrator.execution.warm_fit`).

Every process of the cluster is in one process group (the head is started in a new session), so
``down`` and the idle watcher stop exactly this cluster and never another Ray on the machine.
The watcher is a small process of its own (``python -m orchestrator.execution.cluster watch``):
it stops the cluster once no job of this home has been active for the idle timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import BackendError
from orchestrator.execution.ray_local import IDLE_WORKER_KEEP_MS, local_auth_token_path, ray_head_gone
from orchestrator.execution.ray_startup import free_port
from orchestrator.store import ACTIVE_STATES, JobRecord, JobStore

log = logging.getLogger("orchestrator.cluster")

CLUSTER_FILE = "cluster.json"
#: Idle minutes before the cluster stops itself (``up --idle-timeout``).
DEFAULT_IDLE_TIMEOUT_S = 1800.0
#: How often the idle watcher looks.
WATCH_INTERVAL_S = 5.0
#: Seconds the cluster's processes get to exit on SIGTERM before they are killed.
STOP_GRACE_S = 5.0
#: Tries, and seconds each, for the head's start (``ray start`` gives up on a starved machine).
HEAD_START_ATTEMPTS = 2
HEAD_START_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class WarmCluster:
    """A running warm cluster, as ``up`` recorded it."""

    address: str  # the GCS host:port jobs join
    dashboard_url: str
    pgid: int  # the process group of every Ray process of the cluster
    temp_dir: str
    started_at: float
    idle_timeout_s: float  # 0: never stops by itself
    warm_workers: int
    watcher_pid: int | None = None

    def describe(self) -> str:
        return f"warm cluster at {self.address} (orchestrator up)"


def cluster_file(home: Path) -> Path:
    return home / CLUSTER_FILE


def read_cluster(home: Path) -> WarmCluster | None:
    """The cluster recorded in ``home``, whether or not it still runs (None if none or unreadable)."""
    try:
        data = json.loads(cluster_file(home).read_text())
        return WarmCluster(**data)
    except (OSError, ValueError, TypeError):
        return None


def find_warm_cluster(home: Path) -> WarmCluster | None:
    """The warm cluster of this home if it is up (its head answers); a stale record is removed."""
    cluster = read_cluster(home)
    if cluster is None:
        return None
    if ray_head_gone(cluster.address) or not group_alive(cluster.pgid):
        _forget(home)
        return None
    return cluster


def _forget(home: Path) -> None:
    try:
        cluster_file(home).unlink()
    except FileNotFoundError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def cluster_lock(home: Path) -> Iterator[None]:
    """Held while one ``up`` looks for and starts this home's cluster: two at once start one."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / "cluster.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_dir_for(home: Path) -> str:
    """Ray's temp dir for this home's cluster: short (Ray's socket paths must stay under 108
    bytes) and its own, so the cluster's files never mix with another Ray's."""
    import hashlib

    return f"/tmp/orchestrator-ray-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}"


def start_cluster(home: Path, *, num_cpus: float | None, idle_timeout_s: float, warm_workers: int,
                  dashboard_port: int | None = None) -> WarmCluster:
    """Start the head, the pool and its first warm gang, and the idle watcher; record the cluster."""
    home.mkdir(parents=True, exist_ok=True)
    temp_dir = temp_dir_for(home)
    port = free_port()
    dash_port = dashboard_port or (8265 if _port_free(8265) else free_port())
    cmd = [
        sys.executable, "-m", "orchestrator.execution.ray_startup", "start", "--head", f"--port={port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--num-gpus=0",
        # not Ray's fixed default (10001): another Ray on this machine may hold it
        f"--ray-client-server-port={free_port()}",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus:g}")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_idle_worker_killing_time_threshold_ms": str(IDLE_WORKER_KEEP_MS)}
    env.pop("RAY_ADDRESS", None)
    log_path = home / "cluster.log"
    for attempt in range(1, HEAD_START_ATTEMPTS + 1):
        # on a very busy machine the head can miss one of Ray's own start-up deadlines: try again
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, env=env, start_new_session=True)
            try:
                stdout, _ = proc.communicate(timeout=HEAD_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
            out.write(stdout)
        if proc.returncode == 0:
            break
        _kill_group(proc.pid)
        if attempt == HEAD_START_ATTEMPTS:
            raise BackendError(f"the warm cluster's Ray head did not start (exit {proc.returncode})",
                               fix=f"see {log_path}; on a very busy machine try again")
    _protect_token()
    text = re.sub(r"\x1b\[[0-9;]*m", "", stdout.decode(errors="replace"))
    match = re.search(r"--address='?([^'\s]+)'?", text)
    address = match.group(1) if match else f"127.0.0.1:{port}"
    cluster = WarmCluster(address=address, dashboard_url=f"http://127.0.0.1:{dash_port}", pgid=proc.pid,
                          temp_dir=temp_dir, started_at=time.time(), idle_timeout_s=idle_timeout_s,
                          warm_workers=warm_workers)
    try:
        _start_pool(cluster)
        cluster = WarmCluster(**{**asdict(cluster), "started_at": time.time()})  # idle from now on
        with open(log_path, "ab") as err:
            watcher = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.execution.cluster", "watch", str(home)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env={**env, "ORCHESTRATOR_HOME": str(home)}, start_new_session=True,
            )
    except BaseException as exc:
        _kill_group(cluster.pgid)
        if isinstance(exc, Exception) and not isinstance(exc, BackendError):
            raise BackendError(f"the warm cluster's head started, but its warm workers did not: {exc}",
                               fix=f"see {log_path} and {temp_dir}/session_latest/logs; try again") from None
        raise
    cluster = WarmCluster(**{**asdict(cluster), "watcher_pid": watcher.pid})
    tmp = cluster_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2))
    os.replace(tmp, cluster_file(home))
    return cluster


def _protect_token() -> None:
    """``ray start`` writes the auth token with the umask (often 0644): whoever reads it can run code
    on the cluster. The cluster is this user's, so the token is made readable by this user only."""
    path = local_auth_token_path()
    try:
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass  # not ours to change: use_local_auth_token warns about it


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_pool(cluster: WarmCluster) -> None:
    """The pool actor (detached: it lives as long as the cluster) and its first gang."""
    import ray

    from orchestrator.execution.queue import queue_actor
    from orchestrator.execution.ray_local import start_embedded_ray
    from orchestrator.execution.warm_fit import start_gang
    from orchestrator.runtime.warm import NAMESPACE, POOL_NAME, WarmPool

    start_embedded_ray(cluster.address)
    try:
        queue_actor()  # the cluster's queue, started now: a new queue first waits for running jobs
        pool_actor: Any = ray.remote(WarmPool)
        pool = pool_actor.options(num_cpus=0, max_restarts=0, max_concurrency=64,
            name=POOL_NAME, namespace=NAMESPACE, lifetime="detached").remote()
        if cluster.warm_workers:
            import tempfile

            gang = start_gang(cluster.warm_workers)
            with tempfile.TemporaryDirectory(prefix="orchestrator-warm-up-") as directory:
                ray.get([worker.prime.remote(directory) for worker in gang["workers"]])
            ray.get(pool.give.remote(gang))
    finally:
        ray.shutdown()


def stop_cluster(home: Path) -> WarmCluster | None:
    """Stop this home's cluster (every process of its group, and its watcher); None if none was up."""
    cluster = read_cluster(home)
    if cluster is None:
        return None
    if cluster.watcher_pid and cluster.watcher_pid != os.getpid() and _is_watcher(cluster.watcher_pid):
        _signal(cluster.watcher_pid, signal.SIGTERM)
    _kill_group(cluster.pgid)
    _forget(home)
    return cluster


def _is_watcher(pid: int) -> bool:
    """Whether ``pid`` is still an idle watcher (not another process that got its pid since)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"orchestrator.execution.cluster" in f.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: trust the record
        return True


def _kill_group(pgid: int) -> None:
    """SIGTERM the cluster's processes, then SIGKILL what is left after the grace period.

    They are the process group's members and everything they started: Ray's worker processes
    begin sessions of their own, so the group alone would leave them running.
    """
    pids = _cluster_pids(pgid)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in _cluster_pids(pgid) | pids:
        _signal(pid, signal.SIGKILL)


def _cluster_pids(pgid: int) -> set[int]:
    """The process group's members and their descendants (from /proc; the group alone elsewhere)."""
    parent: dict[int, int] = {}
    members: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid, group = int(entry), int(fields[1]), int(fields[2])
        parent[pid] = ppid
        if group == pgid:
            members.add(pid)
    if not entries and group_alive(pgid):
        return {-pgid}  # no /proc: signal the group itself
    found = set(members)
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(-pid, sig) if pid < 0 else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_alive(pid: int) -> bool:
    if pid < 0:
        return group_alive(-pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def recent_jobs(home: Path) -> list[JobRecord]:
    """This home's newest job records (none before its first job)."""
    db = home / "jobs.db"
    return JobStore(db).list(limit=100) if db.exists() else []


def active_job_ids(home: Path) -> list[str]:
    """This home's jobs that are queued, running or stopping."""
    return [record.id for record in recent_jobs(home) if record.state in ACTIVE_STATES]


def idle_since(home: Path, cluster: WarmCluster) -> float | None:
    """When this home last had an active job (or the cluster started); None while one is active."""
    records = recent_jobs(home)
    if any(r.state in ACTIVE_STATES for r in records):
        return None
    return max([cluster.started_at, *(max(r.ended_at or 0.0, r.created_at) for r in records)])


def watch(home: Path, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Stop the cluster once it has been idle for its timeout; return when it is gone."""
    deadline = time.monotonic() + 120  # `up` records this watcher's pid just after starting it
    while (cluster := read_cluster(home)) is None or cluster.watcher_pid != os.getpid():
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)
    while True:
        cluster = read_cluster(home)
        if cluster is None or cluster.watcher_pid != os.getpid():
            return  # stopped by `down`, or another cluster took over this home
        if ray_head_gone(cluster.address):
            _kill_group(cluster.pgid)
            _forget(home)
            return
        since = idle_since(home, cluster)
        if cluster.idle_timeout_s and since is not None and time.time() - since > cluster.idle_timeout_s:
            log.warning("warm cluster idle for %.0f s: stopping it", time.time() - since)
            stop_cluster(home)
            return
        time.sleep(interval_s)


def cluster_info(cluster: WarmCluster) -> dict[str, Any]:
    """What ``up`` prints: the cluster record and its pool's state (asked of the pool actor)."""
    import ray

    from orchestrator.execution.ray_local import start_embedded_ray
    from orchestrator.runtime.warm import NAMESPACE, POOL_NAME

    info: dict[str, Any] = asdict(cluster)
    start_embedded_ray(cluster.address)
    try:
        pool = ray.get_actor(POOL_NAME, namespace=NAMESPACE)
        info["pool"] = ray.get(pool.info.remote(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - informative only
        info["pool"] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    finally:
        ray.shutdown()
    return info


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "watch":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        watch(Path(args[1]))
        return
    raise SystemExit("usage: python -m orchestrator.execution.cluster watch HOME")


if __name__ == "__main__":
    main()
