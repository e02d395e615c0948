"""The SQLite job store: records, conditional transitions, concurrency, dead drivers."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import JobNotFoundError, UsageError
from orchestrator.store import ACTIVE_STATES, JobRecord, JobState, JobStore, process_start_time


def make_record(store: JobStore, tmp_path: Path, name: str = "job", **kw) -> JobRecord:
    job_id = store.new_job_id(name)
    return store.create(
        JobRecord(
            id=job_id, name=name, backend="local", state=kw.pop("state", JobState.PENDING),
            spec={"name": name, "training": {"epochs": 1}}, job_dir=tmp_path / job_id,
            created_at=kw.pop("created_at", time.time()), **kw,
        )
    )


def test_create_get_and_prefix(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    rec = make_record(store, tmp_path, "alpha")
    make_record(store, tmp_path, "beta")
    assert store.get(rec.id).name == "alpha"
    assert store.get("alph").id == rec.id
    with pytest.raises(JobNotFoundError):
        store.get("gamma")
    make_record(store, tmp_path, "alpha")
    with pytest.raises(UsageError, match="matches 2 jobs"):
        store.get("alpha-")


def test_like_wildcards_in_ids_are_literal(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    make_record(store, tmp_path, "abc")
    with pytest.raises(JobNotFoundError):
        store.get("a_c")
    with pytest.raises(JobNotFoundError):
        store.get("%")


def test_conditional_transition(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    rec = make_record(store, tmp_path)
    assert store.transition(rec.id, JobState.RUNNING, {JobState.PENDING})
    assert store.transition(rec.id, JobState.CANCELLED, ACTIVE_STATES, message="stop")
    # a late "succeeded" must not overwrite the cancel
    assert not store.transition(rec.id, JobState.SUCCEEDED, {JobState.RUNNING})
    got = store.get(rec.id)
    assert got.state == JobState.CANCELLED and got.message == "stop"


def test_json_fields_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    rec = make_record(store, tmp_path)
    store.update(rec.id, result={"metrics": {"val_accuracy": 0.97}}, attempts=[{"attempt": 1}],
                 progress={"epoch": 3})
    got = store.get(rec.id)
    assert got.result["metrics"]["val_accuracy"] == 0.97
    assert got.attempts == [{"attempt": 1}]
    assert got.to_json()["metrics"]["val_accuracy"] == 0.97
    assert got.to_json()["state"] == "pending"


def _hammer(db: str, worker: int, n: int) -> None:
    store = JobStore(Path(db))
    for i in range(n):
        rec = JobRecord(id=f"w{worker}-{i}", name="x", backend="local", state=JobState.PENDING,
                        spec={}, job_dir=Path("/tmp"), created_at=time.time())
        store.create(rec)
        store.transition(rec.id, JobState.RUNNING, {JobState.PENDING})
        store.update(rec.id, progress={"epoch": i})


def test_concurrent_writers_do_not_corrupt_the_store(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    JobStore(db)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(db), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = JobStore(db).list(limit=1000)
    assert len(records) == 100
    assert all(r.state == JobState.RUNNING for r in records)


def test_dead_driver_is_marked_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start_time(proc.pid)
    rec = make_record(store, tmp_path, state=JobState.RUNNING, driver_pid=proc.pid, driver_started=started)
    assert store.reconcile_dead_drivers() == []
    proc.kill()
    proc.wait()
    assert store.reconcile_dead_drivers() == [rec.id]
    got = store.get(rec.id)
    assert got.state == JobState.INTERRUPTED
    assert "orchestrator resume" in (got.message or "")


def test_reused_pid_is_not_mistaken_for_the_driver(tmp_path: Path) -> None:
    import os

    store = JobStore(tmp_path / "jobs.db")
    # our own pid, but a start time that does not match: the original driver is gone
    rec = make_record(store, tmp_path, state=JobState.RUNNING, driver_pid=os.getpid(), driver_started=1.0)
    assert store.reconcile_dead_drivers() == [rec.id]


def test_pending_job_without_driver_expires(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    fresh = make_record(store, tmp_path)
    stale = make_record(store, tmp_path, created_at=time.time() - 3600)
    assert store.reconcile_dead_drivers() == [stale.id]
    assert store.get(fresh.id).state == JobState.PENDING
