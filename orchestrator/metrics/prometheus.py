"""Prometheus exposition: a job's live metrics (served by `submit`) and the job store's view.

Metric names, types and labels come from :mod:`orchestrator.metrics.names` only. A job's
driver feeds :class:`JobMetrics` from the workers' event stream, so one scrape of the driver's
``/metrics`` covers every worker. :class:`StoreCollector` reads the job store at scrape time
(``orchestrator metrics serve``), so it never keeps a second copy of job state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.events import Checkpoint, Epoch, Event, Step
from orchestrator.metrics import names

_STATES = ("pending", "running", "cancelling", "succeeded", "failed", "cancelled", "interrupted")
_FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _strip_suffix(metric: names.PromMetric) -> str:
    # prometheus_client adds "_total" to counters itself
    return metric.name[: -len("_total")] if metric.kind == "counter" and metric.name.endswith("_total") else metric.name


def make_metric(metric: names.PromMetric, registry: CollectorRegistry) -> Any:
    """Create the prometheus_client object for one of our metric definitions."""
    kinds: dict[str, Callable[..., Any]] = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
    kwargs: dict[str, Any] = {"registry": registry, "labelnames": metric.labels}
    if metric.kind == "histogram":
        kwargs["buckets"] = _SECONDS_BUCKETS
    return kinds[metric.kind](_strip_suffix(metric), metric.help, **kwargs)


class JobMetrics:
    """Per-job metrics in their own registry, updated from worker events by the driver."""

    def __init__(self, job: str, framework: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.labels = {"job": job, "framework": framework}
        self._m = {m.name: make_metric(m, self.registry) for m in _job_metrics()}
        self._server: Any = None

    def _get(self, metric: names.PromMetric, **extra: str) -> Any:
        return self._m[metric.name].labels(**self.labels, **extra)

    def set_state(self, state: str, at: float | None = None) -> None:
        for s in _STATES:
            self._get(names.JOB_STATE, state=s).set(1.0 if s == state else 0.0)
        if state in _FINAL_STATES:
            self._get(names.JOB_ENDED).set(time.time() if at is None else at)

    def on_event(self, event: Event) -> None:
        match event:
            case Step():
                self._get(names.JOB_STEP).set(event.global_step)
                self._get(names.JOB_STEP_LOSS).set(event.loss)
                self._get(names.JOB_LAST_PROGRESS).set(event.time)
            case Epoch():
                self._get(names.JOB_EPOCH).set(event.epoch)
                for key, value in event.metrics.items():
                    metric = names.EPOCH_GAUGES.get(key)
                    if metric is not None:
                        self._get(metric).set(value)
                self._get(names.JOB_LAST_PROGRESS).set(event.time)
            case Checkpoint():
                self._get(names.JOB_CHECKPOINT_SECONDS).observe(event.seconds)

    def on_recovery(self, recovery_seconds: float | None, lost_steps: int) -> None:
        """A restart completed: count it, with its recovery time and the steps redone."""
        self._get(names.JOB_RESTARTS).inc()
        if recovery_seconds is not None:
            self._get(names.JOB_RECOVERY_SECONDS).observe(recovery_seconds)
        if lost_steps > 0:
            self._get(names.JOB_LOST_STEPS).inc(lost_steps)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on ``host:port`` (0 picks a free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _job_metrics() -> Iterable[names.PromMetric]:
    return (m for m in names.ALL_PROMETHEUS_METRICS if m.labels[: len(names.JOB_LABELS)] == names.JOB_LABELS)


class StoreCollector(Collector):
    """Collects job metrics from the job store on every scrape (`orchestrator metrics serve`).

    ``records`` returns the current job records; ``queue_snapshot`` (optional) returns
    per-queue counts and per-pool capacity from the scheduler. Jobs that ended more than
    ``window_s`` seconds ago are not exported (None: every record): their series go stale, so an
    alert about one resolves, and the exposition stays as small as the recent past.
    """

    def __init__(
        self,
        records: Callable[[], list[Any]],
        queue_snapshot: Callable[[], dict[str, Any]] | None = None,
        window_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.queue_snapshot = queue_snapshot
        self.window_s = window_s
        self.clock = clock

    def recent(self, records: Iterable[Any]) -> list[Any]:
        """The records inside the window: unfinished, or ended within ``window_s``."""
        if self.window_s is None:
            return list(records)
        since = self.clock() - self.window_s
        return [r for r in records if r.ended_at is None or r.ended_at >= since]

    def collect(self) -> Iterator[Metric]:
        records = self.recent(self.records())
        families = {m.name: _family(m) for m in names.ALL_PROMETHEUS_METRICS if m.kind != "histogram"}
        for r in records:
            job = [r.id, r.spec.get("framework", "torch")]
            for s in _STATES:
                families[names.JOB_STATE.name].add_metric(job + [s], 1.0 if r.state.value == s else 0.0)
            progress = r.job_progress
            if progress.epoch is not None:
                families[names.JOB_EPOCH.name].add_metric(job, float(progress.epoch))
            for key, metric in names.EPOCH_GAUGES.items():
                if key in progress.metrics:
                    families[metric.name].add_metric(job, progress.metrics[key])
            restarts = max(0, len(r.attempts) - 1)
            families[names.JOB_RESTARTS.name].add_metric(job, float(restarts))
            lost = sum(int(a.get("lost_steps") or 0) for a in r.attempts)
            families[names.JOB_LOST_STEPS.name].add_metric(job, float(lost))
            if r.ended_at is not None and r.state.value in _FINAL_STATES:
                families[names.JOB_ENDED.name].add_metric(job, float(r.ended_at))
        if self.queue_snapshot is not None:
            snap = self.queue_snapshot()
            for (queue, state), count in snap.get("queue_jobs", {}).items():
                families[names.QUEUE_JOBS.name].add_metric([queue, state], float(count))
            for queue, seconds in snap.get("oldest_wait", {}).items():
                families[names.QUEUE_OLDEST_WAIT.name].add_metric([queue], float(seconds))
            for (pool, accel), (total, allocated) in snap.get("pools", {}).items():
                families[names.POOL_ACCELERATORS.name].add_metric([pool, accel], float(total))
                families[names.POOL_ALLOCATED.name].add_metric([pool, accel], float(allocated))
            for queue, count in snap.get("preemptions", {}).items():
                families[names.PREEMPTIONS.name].add_metric([queue], float(count))
        yield from (f for f in families.values() if f.samples)


def _family(metric: names.PromMetric) -> CounterMetricFamily | GaugeMetricFamily:
    if metric.kind == "counter":
        return CounterMetricFamily(_strip_suffix(metric), metric.help, labels=metric.labels)
    return GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)


def serve_registry(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Serve any registry on host:port; returns the HTTP server (call .shutdown() to stop)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
