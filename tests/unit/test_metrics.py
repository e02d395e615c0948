"""Metric names defined once; the job exporter and the store collector over real HTTP."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.cli.obs_cmds import local_queue_snapshot
from orchestrator.events import Checkpoint, Epoch, Step
from orchestrator.metrics import names
from orchestrator.metrics.prometheus import JobMetrics, StoreCollector, serve_registry
from orchestrator.store import JobRecord, JobState


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_names_are_unique_prefixed_and_low_cardinality() -> None:
    seen = [m.name for m in names.ALL_PROMETHEUS_METRICS]
    assert len(seen) == len(set(seen))
    for m in names.ALL_PROMETHEUS_METRICS:
        assert re.fullmatch(r"orchestrator_[a-z_]+", m.name), m.name
        assert set(m.labels) <= {"job", "framework", "queue", "pool", "accelerator", "state"}
        assert m.kind in {"gauge", "counter", "histogram"}
        assert m.kind != "counter" or m.name.endswith("_total")


def test_job_metrics_follow_worker_events_over_http() -> None:
    jm = JobMetrics("job-1", "torch")
    port = jm.serve(0)
    try:
        jm.set_state("running")
        jm.on_event(Step(epoch=1, step=7, steps=20, global_step=7, loss=1.5, time=100.0))
        jm.on_event(Epoch(epoch=1, time=101.0,
                          metrics={"val_accuracy": 0.91, "train_loss": 0.4, "samples_per_second": 1200.0}))
        jm.on_event(Checkpoint(seconds=0.2, epoch=1, global_step=20, path="/x"))
        jm.on_recovery(3.5, 12)
        got = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        jm.close()
    job = (("framework", "torch"), ("job", "job-1"))
    assert got[("orchestrator_step", job)] == 7
    assert got[("orchestrator_step_loss", job)] == 1.5
    assert got[("orchestrator_epoch", job)] == 1
    assert got[("orchestrator_validation_accuracy", job)] == 0.91
    assert got[("orchestrator_samples_per_second", job)] == 1200.0
    assert got[("orchestrator_restarts_total", job)] == 1
    assert got[("orchestrator_lost_steps_total", job)] == 12
    assert got[("orchestrator_recovery_seconds_sum", job)] == 3.5
    assert got[("orchestrator_checkpoint_write_seconds_count", job)] == 1
    assert got[("orchestrator_last_progress_timestamp_seconds", job)] == 101.0
    assert got[("orchestrator_job_state", job + (("state", "running"),))] == 1
    assert got[("orchestrator_job_state", job + (("state", "failed"),))] == 0


def record(job_id: str, state: JobState, **kw: object) -> JobRecord:
    return JobRecord(
        id=job_id, name="n", backend="local", state=state,
        spec={"framework": "torch", "resources": {"workers": 2, "cpus_per_worker": 0.5, "queue": "research"}},
        job_dir=Path("/tmp"), created_at=time.time(), **kw,  # type: ignore[arg-type]
    )


def test_store_collector_reads_the_store_at_scrape_time() -> None:
    records = [
        record("a", JobState.RUNNING, progress={"epoch": 3, "val_accuracy": 0.95},
               attempts=[{"attempt": 1}, {"attempt": 2, "lost_steps": 4}]),
        record("b", JobState.PENDING),
        record("c", JobState.SUCCEEDED),
    ]
    registry = CollectorRegistry()
    registry.register(StoreCollector(lambda: records, lambda: local_queue_snapshot(records, cpus=2)))
    server = serve_registry(registry, 0)
    try:
        got = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
    a = (("framework", "torch"), ("job", "a"))
    assert got[("orchestrator_epoch", a)] == 3
    assert got[("orchestrator_validation_accuracy", a)] == 0.95
    assert got[("orchestrator_restarts_total", a)] == 1
    assert got[("orchestrator_lost_steps_total", a)] == 4
    assert got[("orchestrator_job_state", (("framework", "torch"), ("job", "c"), ("state", "succeeded")))] == 1
    assert got[("orchestrator_queue_jobs", (("queue", "research"), ("state", "queued")))] == 1
    assert got[("orchestrator_queue_jobs", (("queue", "research"), ("state", "running")))] == 1
    assert got[("orchestrator_pool_accelerators_total", (("accelerator", "cpu"), ("pool", "local")))] == 2
    assert got[("orchestrator_pool_accelerators_allocated", (("accelerator", "cpu"), ("pool", "local")))] == 1.0


def test_the_store_collector_exports_only_jobs_inside_its_window() -> None:
    """`metrics serve --window 24h`: a job that ended two days ago is gone (its series go stale, so
    an alert about it resolves); one that ended an hour ago and an old unfinished one stay."""
    now = 1_000_000_000.0
    records = [
        record("old-failed", JobState.FAILED, ended_at=now - 48 * 3600),
        record("recent-failed", JobState.FAILED, ended_at=now - 3600),
        record("old-running", JobState.RUNNING, started_at=now - 72 * 3600),
    ]
    registry = CollectorRegistry()
    registry.register(StoreCollector(lambda: records, window_s=24 * 3600, clock=lambda: now))
    server = serve_registry(registry, 0)
    try:
        got = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
    jobs = {dict(labels).get("job") for (name, labels) in got if name == "orchestrator_job_state"}
    assert jobs == {"recent-failed", "old-running"}
    recent = (("framework", "torch"), ("job", "recent-failed"))
    assert got[("orchestrator_job_end_timestamp_seconds", recent)] == now - 3600
    assert ("orchestrator_job_end_timestamp_seconds", (("framework", "torch"), ("job", "old-running"))) not in got
    # no window: every stored record
    assert len(StoreCollector(lambda: records).recent(records)) == 3


def test_a_final_state_stamps_the_end_time_a_running_one_does_not() -> None:
    jm = JobMetrics("job-2", "torch")
    jm.set_state("running")
    labels = {"job": "job-2", "framework": "torch"}
    assert jm.registry.get_sample_value("orchestrator_job_end_timestamp_seconds", labels) is None
    jm.set_state("failed", at=1234.0)
    assert jm.registry.get_sample_value("orchestrator_job_end_timestamp_seconds", labels) == 1234.0


def test_metrics_serve_window_takes_durations() -> None:
    import click
    import pytest

    from orchestrator.cli.obs_cmds import parse_duration

    assert [parse_duration(None, None, v) for v in ("24h", "30m", "7d", "90s", "3600", "0")] == [
        86400.0, 1800.0, 604800.0, 90.0, 3600.0, 0.0]
    with pytest.raises(click.BadParameter, match="not a duration"):
        parse_duration(None, None, "soon")


def test_writing_tensorboard_events_does_not_import_tensorflow(tmp_path: Path) -> None:
    """TensorBoard's file I/O would import all of tensorflow (when installed) into the driver."""
    import subprocess
    import sys

    code = ("import sys, orchestrator.metrics.tensorboard as t\n"
            f"w = t.TensorBoardWriter({str(tmp_path)!r}); w.scalars({{'loss/train': 1.0}}, 1); w.close()\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert list(tmp_path.glob("events.out.tfevents.*"))
