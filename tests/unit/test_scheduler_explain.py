"""A waiting job explains itself in words; `orchestrator queue` and `explain` show it for local jobs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.scheduler import Place, Wait
from orchestrator.scheduler.view import queue_rows
from orchestrator.settings import Settings
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState, JobStore, process_start_time
from tests.unit.sched_helpers import Harness, cluster, gang, gpu_pool


def busy_cluster() -> Harness:
    """24 A100s: 12 held by high-priority jobs, 4 high-priority 24-GPU gangs waiting."""
    h = Harness(cluster(gpu_pool(nodes=3)), "las")
    h.submit("prod-1", gang(8, priority="high"))
    h.submit("prod-2", gang(4, priority="high"))
    h.step()
    for i in range(4):
        h.submit(f"prod-wide-{i}", gang(24, priority="high"))
    h.submit("mine", gang(16))
    return h


def test_the_issue_example_word_for_word() -> None:
    h = busy_cluster()
    decision = h.scheduler.explain(h.state, "mine")
    assert isinstance(decision, Wait) and not decision.permanent
    assert decision.message == (
        "needs 16 nvidia-a100-40gb as one gang; pool a100 has 12 free; 4 jobs of higher priority queued ahead"
    )
    assert [r.code for r in decision.reasons] == ["needs", "capacity", "higher-priority"]
    assert h.state.jobs["mine"].status.value == "pending"  # explaining changes nothing


def test_explain_a_job_that_would_start() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "las")
    h.submit("ok", gang(2))
    decision = h.scheduler.explain(h.state, "ok")
    assert isinstance(decision, Place) and decision.placement.nodes == ("a100-0",)


def test_queue_view_rows() -> None:
    h = busy_cluster()
    h.clock.set(125)
    rows = {r.job_id: r for r in queue_rows(h.scheduler, h.state)}
    assert [r.state for r in rows.values()] == ["running"] * 2 + ["waiting"] * 5
    assert rows["prod-1"].detail == "on pool a100: a100-0 (8)" and rows["prod-1"].since_s == 125
    assert rows["prod-wide-1"].reasons == (
        "needs 24 nvidia-a100-40gb as one gang",
        "pool a100 has 12 free",
        "1 job queued ahead of it by policy las",
    )


def test_held_back_by_a_head_past_the_backfill_bound() -> None:
    h = Harness(cluster(gpu_pool(nodes=1)), "las", backfill_bound_s=600)
    h.submit("running", gang(4))
    h.step()
    h.submit("head", gang(8))
    h.submit("small", gang(2))
    assert [d.job_id for d in h.step(at=10).placements] == ["small"]  # backfill, within the bound
    h.submit("later", gang(2))
    result = h.step(at=700, explain=True)
    assert result.decisions == []
    assert result.waits["later"].message == (
        "needs 2 nvidia-a100-40gb as one gang; held back for head, which has waited 11m at the head of "
        "queue default, past the backfill bound of 10m; 1 job queued ahead of it by policy las"
    )


def record(home: Path, name: str, state: JobState, **resources: object) -> JobRecord:
    store = JobStore(Settings.from_env().db_path)
    spec = JobSpec.model_validate(
        {"name": name, "model": {"type": "cnn"}, "resources": resources, "training": {"batch_size": 4096}}
    )
    now = time.time()
    rec = JobRecord(
        id=f"{name}-000001",
        name=name,
        backend="local",
        state=state,
        spec=spec.model_dump(mode="json"),
        job_dir=home / "jobs" / name,
        created_at=now,
        started_at=now if state is JobState.RUNNING else None,
        driver_pid=os.getpid() if state is JobState.RUNNING else None,
        driver_started=process_start_time(os.getpid()) if state is JobState.RUNNING else None,
    )
    return store.create(rec)


def test_queue_and_explain_for_local_jobs(home: Path) -> None:
    cpus = os.cpu_count() or 1
    record(home, "train", JobState.RUNNING, workers=1, cpus_per_worker=cpus)
    record(home, "next", JobState.PENDING, workers=1, cpus_per_worker=1)
    record(home, "huge", JobState.PENDING, workers=4096, cpus_per_worker=1, queue="research")
    result = CliRunner().invoke(main, ["queue", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["job_id"]: r for r in json.loads(result.output.splitlines()[-1])["jobs"]}
    assert rows["train-000001"]["state"] == "running"
    assert rows["next-000001"]["state"] == "waiting"
    assert rows["next-000001"]["reasons"][:2] == [
        "needs 1 worker x 1 cpus as one gang",
        "pool local has 0 cpus free",
    ]
    assert rows["huge-000001"]["state"] == "unschedulable"
    assert rows["huge-000001"]["reasons"] == [
        f"needs 4096 workers x 1 cpus as one gang; pool local has {cpus} cpus in total"
    ]

    text = CliRunner().invoke(main, ["explain", "next"])
    assert text.exit_code == 0, text.output
    assert "next-000001 (1 worker x 1 cpus, queue default, priority 100)" in text.output
    assert "  - pool local has 0 cpus free" in text.output


def test_explain_unknown_job_exits_2(home: Path) -> None:
    result = CliRunner().invoke(main, ["explain", "nope"])
    assert result.exit_code == 2
    assert "no job 'nope'" in result.output
