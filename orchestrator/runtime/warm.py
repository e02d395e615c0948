"""The long-lived workers of a warm local cluster (``orchestrator up``), and the pool that keeps them.

A job on a fresh Ray pays, before its first step, for a Train controller, a placement group, new
worker processes, ``import torch`` in each of them and a new process group: about 20 s even when
Ray itself is already running. A warm cluster keeps that work done. Its :class:`WarmWorker` actors
imported torch and our training code once, and a *gang* of them (one per rank) keeps its gloo
process group between jobs. A torch job on CPUs takes an idle gang of its world size from the
:class:`WarmPool`, runs the same per-worker function Ray Train runs
(:func:`orchestrator.runtime.worker.run_torch_worker`) and gives the gang back when it succeeds.
A gang that failed is never reused: the driver kills it and starts a new one for the next attempt.

Both classes run as Ray actors with no CPU reserved: an idle gang must not keep other jobs out of
the machine. The cluster's queue decides which jobs run, from what they ask for.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

#: The Ray namespace and name of the pool actor (one per warm cluster).
NAMESPACE = "orchestrator"
POOL_NAME = "orchestrator-warm-pool"
#: How long a collective may wait for a peer before it fails (Ray Train's default for torch: 30 min).
GROUP_TIMEOUT_S = 1800.0


class WarmWorker:
    """One long-lived torch worker: frameworks imported at start, its process group kept."""

    def __init__(self) -> None:
        # the imports every job's workers would otherwise pay for, in every process
        import torch  # noqa: F401
        import torch.distributed  # noqa: F401

        import orchestrator.models.torch_models  # noqa: F401
        import orchestrator.runtime.torch_loop  # noqa: F401
        import orchestrator.runtime.worker  # noqa: F401

        self._rank: int | None = None
        self._world = 0

    def endpoint(self) -> tuple[str, int]:
        """This node's address and a free port, for the gang's rendezvous (asked of rank 0)."""
        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return host, int(s.getsockname()[1])

    def join(self, master: str, port: int, rank: int, world: int) -> int:
        """Join the gang's gloo process group as ``rank`` of ``world``; returns this process's pid."""
        from datetime import timedelta

        import torch.distributed as dist

        if world > 1:
            dist.init_process_group("gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=world,
                                    timeout=timedelta(seconds=GROUP_TIMEOUT_S))
        self._rank, self._world = rank, world
        return os.getpid()

    def prime(self, directory: str) -> float:
        """Train a one-epoch digits job on the gang (all ranks, the same ``directory``), so that the
        first real job finds every module imported and every first-call cost paid (DDP, optimizer,
        checkpoint and TorchScript export); returns the seconds it took."""
        from orchestrator.runtime.data import prepare_data
        from orchestrator.spec.loader import validate_spec_data

        spec = validate_spec_data({
            "name": "warm-up", "framework": "torch", "model": {"type": "cnn"}, "data": {"source": "digits"},
            "resources": {"workers": self._world, "cpus_per_worker": 0.5}, "training": {"epochs": 1},
        }, source="warm-up")
        paths = {"job_dir": directory, "checkpoint_dir": os.path.join(directory, "checkpoints"),
                 "model_dir": os.path.join(directory, "model"), "job_id": "warm-up"}
        started = time.time()
        data = prepare_data(spec.data, spec.training.seed)
        self.run({"spec": spec, "paths": paths, "data": data, "sink": None}, 1)
        return time.time() - started

    def run(self, config: dict[str, Any], threads: int) -> dict[str, Any]:
        """Run one job's training function as this worker's rank (what Ray Train's worker runs)."""
        import torch

        from orchestrator.runtime.worker import run_torch_worker

        if self._rank is None:
            raise RuntimeError("this warm worker has not joined a gang")
        rank, world = self._rank, self._world
        # what Ray Train sets for a torch worker: threads from its CPUs, and torchrun's variables
        torch.set_num_threads(threads)
        os.environ.update({"OMP_NUM_THREADS": str(threads), "RANK": str(rank), "WORLD_SIZE": str(world),
                           "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world), "NODE_RANK": "0"})
        job_dir = config.get("paths", {}).get("job_dir")
        if job_dir and os.path.isdir(job_dir):
            os.chdir(job_dir)  # relative paths a user's function writes land with the job
        started = time.time()
        try:
            run_torch_worker(config, rank, world, torch.device("cpu"))
        except BaseException:
            _exit_if_orphaned(config)
            raise
        _exit_if_orphaned(config)  # stopped because its driver went away: nobody gives the gang back
        return {"rank": rank, "pid": os.getpid(), "seconds": time.time() - started}

    def pid(self) -> int:
        return os.getpid()


def _exit_if_orphaned(config: dict[str, Any]) -> None:
    """End this process when the job's driver is gone: nobody will use, return or kill this gang."""
    if not _reachable(config.get("sink")):
        os._exit(1)


def _reachable(sink: Any) -> bool:
    if sink is None:
        return True
    import ray

    try:
        ray.get(sink.ping.remote(), timeout=30)
    except ray.exceptions.GetTimeoutError:  # a busy machine, not an answer
        return True
    except Exception:  # noqa: BLE001 - the sink died with its driver, or the pool says the driver is gone
        return False
    return True


#: A job's driver that has not drained its events for this long is gone: its workers stop.
DRIVER_SILENT_S = 120.0


class WarmPool:
    """The warm cluster's idle gangs, by world size (a detached actor named :data:`POOL_NAME`),
    and the event sinks of the jobs running on them.

    ``take`` hands a gang out (it is then the caller's, and gone from here); ``give`` brings a
    healthy one back, and the pool keeps at most ``keep`` idle gangs of each size (it kills the rest).

    A job's :class:`orchestrator.runtime.progress.ProgressSink` lives here too (see
    :class:`PooledSink`): a sink actor of its own would need a new worker process for every job,
    seconds of Python start-up on a small machine. The pool is called from many drivers and workers
    at once (a threaded actor), so it only touches its dicts.
    """

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._idle: dict[int, list[dict[str, Any]]] = {}
        self._sinks: dict[str, Any] = {}
        self._drained: dict[str, float] = {}
        self.started_at = time.time()
        self.last_used = self.started_at
        self.reused = 0

    def take(self, world: int) -> dict[str, Any] | None:
        self.last_used = time.time()
        gangs = self._idle.get(world) or []
        if not gangs:
            return None
        self.reused += 1
        return gangs.pop()

    def give(self, gang: dict[str, Any]) -> bool:
        """Keep an idle gang; False (and the gang killed) when the pool has enough of its size."""
        import ray

        self.last_used = time.time()
        gangs = self._idle.setdefault(len(gang["workers"]), [])
        if len(gangs) >= self.keep:
            for worker in gang["workers"]:
                ray.kill(worker)
            return False
        gangs.append(gang)
        return True

    # -- job sinks ------------------------------------------------------------------------
    def open_sink(self, key: str, attempts_before: int) -> None:
        from orchestrator.runtime.progress import ProgressSink

        now = time.time()
        for old in [k for k, t in self._drained.items() if now - t > 24 * 3600]:  # long-gone drivers
            self._sinks.pop(old, None)
            self._drained.pop(old, None)
        self._sinks[key] = ProgressSink(attempts_before)
        self._drained[key] = now

    def close_sink(self, key: str) -> None:
        self._sinks.pop(key, None)
        self._drained.pop(key, None)

    def sink_call(self, key: str, method: str, *args: Any) -> Any:
        """One call of a job's sink; its driver draining counts as the driver being alive."""
        sink = self._sinks.get(key)
        silent = time.time() - self._drained.get(key, 0.0)
        if method == "drain":
            self._drained[key] = time.time()
        elif sink is None or silent > DRIVER_SILENT_S:
            if method == "stop_reason":  # the workers checkpoint and stop: nobody follows the job
                return "the job's driver is gone"
            if method == "ping":
                raise RuntimeError(f"the job's driver has not been heard from for {silent:.0f} s")
        if sink is None:
            raise RuntimeError(f"no sink {key!r} (the job's driver closed it)")
        return getattr(sink, method)(*args)

    def info(self) -> dict[str, Any]:
        return {
            "idle_gangs": {str(world): len(g) for world, g in self._idle.items() if g},
            "idle_workers": sum(len(gang["workers"]) for g in self._idle.values() for gang in g),
            "idle_pids": [gang["pids"] for g in self._idle.values() for gang in g],
            "reused": self.reused,
            "recent_jobs": sum(1 for t in self._drained.values() if time.time() - t < DRIVER_SILENT_S),
            "started_at": self.started_at,
            "last_used": self.last_used,
        }


class PooledSink:
    """A job's sink that lives in the pool actor, called as if it were a sink actor of its own:
    ``sink.push.remote(events)`` is ``pool.sink_call.remote(key, "push", events)``. It pickles,
    so it travels to the workers in the trainer's config as a sink actor handle does."""

    def __init__(self, pool: Any, key: str) -> None:
        self.pool = pool
        self.key = key

    def __getattr__(self, method: str) -> _SinkMethod:
        if method.startswith("_") or method in ("pool", "key"):
            raise AttributeError(method)
        return _SinkMethod(self.pool, self.key, method)


class _SinkMethod:
    def __init__(self, pool: Any, key: str, method: str) -> None:
        self.pool, self.key, self.method = pool, key, method

    def remote(self, *args: Any) -> Any:
        return self.pool.sink_call.remote(self.key, self.method, *args)
