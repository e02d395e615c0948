"""A job's fit on a warm cluster's long-lived workers (see :mod:`orchestrator.runtime.warm`).

:class:`WarmTrainer` has the one method of Ray Train's trainers the driver uses, ``fit()``, and
keeps Ray Train's contract for failures: when any rank fails (an exception, a dead process) the
whole worker group is replaced and the job goes on from its newest checkpoint, up to
``failure.max_failures`` times, with the failure reported to the driver as Ray Train's controller
reports it. The session's own attempt counting, backoff and exact resume work unchanged, since they
live in the workers and the driver's sink, not in Ray Train.

Only torch jobs on CPUs run here; everything else (TensorFlow's MultiWorkerMirroredStrategy, which
cannot be set up twice in one process, GPUs, TPU slices) goes to Ray Train on the same cluster.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.events import Failure
from orchestrator.runtime.warm import NAMESPACE, POOL_NAME, PooledSink, WarmWorker
from orchestrator.spec.models import JobSpec

log = logging.getLogger("orchestrator.driver")


def warm_refusal(spec: JobSpec) -> str | None:
    """Why a spec cannot run on warm workers (None: it can)."""
    r = spec.resources
    if spec.framework != "torch":
        return f"framework {spec.framework} runs on Ray Train (only torch jobs use warm workers)"
    if r.uses_gpu or r.uses_tpu:
        return "accelerator jobs run on Ray Train (warm workers are CPU workers)"
    return None


def pooled_sink(job_id: str, attempts_before: int) -> PooledSink:
    """The job's event sink, in the warm pool's process (no new process to start)."""
    import uuid

    import ray

    pool = ray.get_actor(POOL_NAME, namespace=NAMESPACE)
    key = f"{job_id}-{uuid.uuid4().hex[:8]}"
    ray.get(pool.open_sink.remote(key, attempts_before), timeout=60)
    return PooledSink(pool, key)


def start_gang(world: int) -> dict[str, Any]:
    """``world`` new warm workers (detached: they outlive the job that started them), joined in one
    process group. Called by ``up`` for the first gang and by a job that finds no idle one."""
    import ray

    from orchestrator.execution.ray_startup import PATIENT_ENVIRONMENT

    actor: Any = ray.remote(num_cpus=0, max_restarts=0)(WarmWorker)
    workers: list[Any] = [actor.options(namespace=NAMESPACE, lifetime="detached",
                             runtime_env={"env_vars": dict(PATIENT_ENVIRONMENT)}).remote()
               for _ in range(world)]
    try:
        master, port = ray.get(workers[0].endpoint.remote())
        pids = ray.get([w.join.remote(master, port, rank, world) for rank, w in enumerate(workers)])
    except BaseException:
        kill_gang({"workers": workers})
        raise
    return {"workers": workers, "pids": pids, "created_at": time.time()}


def kill_gang(gang: dict[str, Any]) -> None:
    import ray

    for worker in gang["workers"]:
        try:
            ray.kill(worker)
        except Exception:  # noqa: BLE001 - already dead
            pass


def _gang_alive(gang: dict[str, Any]) -> bool:
    import ray

    try:
        ray.get([worker.pid.remote() for worker in gang["workers"]], timeout=60)
    except Exception:  # noqa: BLE001 - a dead actor, whatever the error says
        return False
    return True


class WarmFitError(RuntimeError):
    """The job failed on warm workers more often than ``failure.max_failures`` allows."""


class WarmTrainer:
    """Runs one job's per-worker function on a warm gang, with Ray Train's restart semantics."""

    def __init__(self, spec: JobSpec, config: dict[str, Any], sink: Any) -> None:
        self.spec = spec
        self.config = config
        self.sink = sink

    def fit(self) -> dict[str, Any]:
        import ray

        pool = ray.get_actor(POOL_NAME, namespace=NAMESPACE)
        world = self.spec.resources.workers
        threads = max(1, int(self.spec.resources.cpus_per_worker))
        failures = 0
        while True:
            taken: Any = ray.get(pool.take.remote(world), timeout=60)
            if taken is not None and not _gang_alive(taken):  # died while idle (the OOM killer, a kill -9)
                kill_gang(taken)
                taken = None
            gang = taken if taken is not None else start_gang(world)
            refs = [worker.run.remote(self.config, threads) for worker in gang["workers"]]
            errors, first = self._wait(refs)
            if not errors:
                ray.get(pool.give.remote(gang), timeout=60)
                return {"pids": gang["pids"]}
            kill_gang(gang)  # a gang that failed may be stuck in a collective: never reuse it
            self.sink.push.remote([Failure(errors=errors).to_wire()])
            failures += 1
            if failures > self.spec.failure.max_failures:
                raise WarmFitError(str(first)) from first
            log.warning("worker group failed (%s); restarting it (%d of %d restarts)",
                        "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items())),
                        failures, self.spec.failure.max_failures)

    @staticmethod
    def _wait(refs: list[Any]) -> tuple[dict[int, str], BaseException | None]:
        """Wait for every rank; at the first failure, stop waiting: ({rank: error}, the exception)."""
        import ray

        from orchestrator.runtime.progress import one_line

        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        errors: dict[int, str] = {}
        first: BaseException | None = None
        while pending and not errors:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a rank's failure, whatever it was
                    errors[rank_of[ref]] = one_line(exc)
                    first = first or exc
        return errors, first
