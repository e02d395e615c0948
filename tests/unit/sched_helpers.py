"""Builders for scheduler tests: small clusters, gang requests, and a stepping harness."""

from __future__ import annotations

from typing import Any

from orchestrator.scheduler import (
    ClusterSpec,
    ClusterState,
    GangRequest,
    ManualClock,
    PassResult,
    Policy,
    Scheduler,
    Toleration,
)
from orchestrator.scheduler.cluster import cluster_from_data


def cluster(*pools: dict[str, Any], queues: list[dict[str, Any]] | None = None, **extra: Any) -> ClusterSpec:
    return cluster_from_data({"name": "test", "pools": list(pools), "queues": queues or [], **extra})


def gpu_pool(
    name: str = "a100", nodes: int = 2, per_node: int = 8, accelerator: str = "nvidia-a100-40gb", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "accelerator": accelerator,
        "nodes": nodes,
        "accelerators_per_node": per_node,
        **extra,
    }


def gang(
    gpus: int,
    accelerator: str | tuple[str, ...] = "nvidia-a100-40gb",
    *,
    per_worker: float = 1.0,
    queue: str = "default",
    priority: int | str | None = None,
    tolerations: tuple[str, ...] = (),
    **extra: Any,
) -> GangRequest:
    kinds = (accelerator,) if isinstance(accelerator, str) else accelerator
    return GangRequest(
        workers=int(gpus / per_worker),
        accelerators_per_worker=per_worker,
        accelerators=kinds,
        queue=queue,
        priority=priority,
        tolerations=tuple(Toleration.parse(t) for t in tolerations),
        **extra,
    )


class Harness:
    """A cluster state, a manual clock and a scheduler; ``step`` runs a pass and applies it."""

    def __init__(self, spec: ClusterSpec, policy: str | Policy = "las", **kwargs: Any) -> None:
        self.clock = ManualClock(0.0)
        self.state = ClusterState(spec)
        self.scheduler = Scheduler(spec, policy, self.clock, **kwargs)

    def submit(self, job_id: str, request: GangRequest, duration: float | None = None) -> None:
        self.state.submit(job_id, request, self.clock.now(), duration=duration)

    def step(self, at: float | None = None, explain: bool = False) -> PassResult:
        if at is not None:
            self.clock.set(at)
        result = self.scheduler.schedule(self.state, explain=explain)
        self.state.apply(result.decisions, self.clock.now())
        return result

    def placed(self, result: PassResult) -> dict[str, tuple[tuple[int, int], ...]]:
        return {d.job_id: d.placement.shares for d in result.placements}

    def free(self, pool: str) -> list[float]:
        return list(self.state.capacity.pools[pool].free)
