"""The operator's own Prometheus metrics (names from :mod:`orchestrator.metrics.names`), served on
``/metrics`` by ``orchestrator operator --metrics-port``. Labels are low-cardinality only: phase
(``state``), pool, accelerator, queue -- never a job name."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry

from orchestrator.backends.k8s.status import PHASES
from orchestrator.metrics import names
from orchestrator.metrics.prometheus import make_metric, serve_registry

_MINE = (names.OPERATOR_RECONCILES, names.OPERATOR_RECONCILE_SECONDS, names.OPERATOR_TRAININGJOBS,
         names.OPERATOR_RAYJOBS_CREATED, names.OPERATOR_PLACEMENT_WAITS, names.OPERATOR_POOLS,
         names.POOL_ACCELERATORS, names.POOL_ALLOCATED)


class OperatorMetrics:
    """Counters and gauges the controller updates; one registry per operator."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._m = {m.name: make_metric(m, self.registry) for m in _MINE}
        self._server: Any = None
        self.set_phases({})

    def _metric(self, metric: names.PromMetric) -> Any:
        return self._m[metric.name]

    def reconciled(self, outcome: str, seconds: float) -> None:
        self._metric(names.OPERATOR_RECONCILES).labels(state=outcome).inc()
        self._metric(names.OPERATOR_RECONCILE_SECONDS).observe(seconds)

    def rayjob_created(self, pool: str) -> None:
        self._metric(names.OPERATOR_RAYJOBS_CREATED).labels(pool=pool).inc()

    def waited(self, queue: str) -> None:
        self._metric(names.OPERATOR_PLACEMENT_WAITS).labels(queue=queue).inc()

    def set_phases(self, phases: dict[str, str]) -> None:
        """Phase of each known job (key -> phase): exported as a count per phase."""
        counts = Tally(phases.values())
        for phase in PHASES:
            self._metric(names.OPERATOR_TRAININGJOBS).labels(state=phase).set(counts.get(phase, 0))

    def set_pools(self, usage: dict[str, tuple[str, float, float]]) -> None:
        """Per pool: (accelerator, total, allocated)."""
        self._metric(names.OPERATOR_POOLS).set(len(usage))
        for pool, (accelerator, total, allocated) in usage.items():
            self._metric(names.POOL_ACCELERATORS).labels(pool=pool, accelerator=accelerator).set(total)
            self._metric(names.POOL_ALLOCATED).labels(pool=pool, accelerator=accelerator).set(allocated)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics; returns the port (0 picks a free one)."""
        self._server = serve_registry(self.registry, port, host)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
