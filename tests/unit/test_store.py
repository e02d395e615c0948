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


# -- a damaged or busy store, empty and ambiguous ids, colliding ids (issue 18) -------------------------
def _cli(*args: str):
    from click.testing import CliRunner

    from orchestrator.cli import main

    return CliRunner().invoke(main, list(args))


def test_a_corrupt_store_is_a_clear_error_and_dry_runs_do_not_need_it(tmp_path: Path, home: Path) -> None:
    home.mkdir()
    db = home / "jobs.db"
    junk = b"this is not sqlite" * 100
    db.write_bytes(junk)
    spec = tmp_path / "j.yaml"
    spec.write_text("name: j\nmodel: {type: cnn}\n")
    assert _cli("submit", "--dry-run", str(spec)).exit_code == 0
    assert _cli("validate", str(spec)).exit_code == 0
    for args in (["list"], ["status", "j-1"], ["cancel", "j-1"], ["logs", "j-1"], ["resume", "j-1"]):
        result = _cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert f"the job store {db} is damaged" in result.output, result.output
        assert f"mv {db} {db}.corrupt" in result.output and "internal error" not in result.output
    assert db.read_bytes() == junk and sorted(p.name for p in home.iterdir()) == ["jobs.db"]


def test_a_truncated_store_file_is_corrupt_too(tmp_path: Path) -> None:
    from orchestrator.errors import JobStoreCorruptError

    store = JobStore(tmp_path / "jobs.db")
    make_record(store, tmp_path, "alpha")
    data = (tmp_path / "jobs.db").read_bytes()
    (tmp_path / "jobs.db").write_bytes(data[:100])
    for wal in tmp_path.glob("jobs.db-*"):
        wal.unlink()
    with pytest.raises(JobStoreCorruptError, match="move it aside"):
        JobStore(tmp_path / "jobs.db").list()


def test_a_row_no_version_wrote_is_reported_not_raised(tmp_path: Path) -> None:
    import sqlite3

    from orchestrator.errors import JobStoreError

    store = JobStore(tmp_path / "jobs.db")
    rec = make_record(store, tmp_path, "alpha")
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("UPDATE jobs SET state = 'exploded', spec_json = '{' WHERE id = ?", (rec.id,))
    with pytest.raises(JobStoreError, match="jobs.db"):
        store.get(rec.id)


def test_a_lock_held_too_long_is_a_clear_transient_error(tmp_path: Path, home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from orchestrator.errors import JobStoreBusyError

    store = JobStore(home / "jobs.db")
    rec = make_record(store, home, "alpha", state=JobState.PENDING)
    monkeypatch.setattr(JobStore, "busy_timeout_s", 0.2)
    holder = sqlite3.connect(home / "jobs.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JobStoreBusyError) as err:
            JobStore(home / "jobs.db").update(rec.id, message="x")
        assert err.value.transient and "fuser" in (err.value.fix or "")
        result = _cli("cancel", rec.id)
        assert result.exit_code == 1 and "stayed locked by another orchestrator process" in result.output
        assert "fix:" in result.output and "internal error" not in result.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _cli("cancel", rec.id).exit_code == 0


@pytest.mark.parametrize("job_id", ["", " ", "\t"])
def test_an_empty_id_matches_nothing(tmp_path: Path, home: Path, job_id: str) -> None:
    store = JobStore(home / "jobs.db")
    records = [make_record(store, home, "alpha", state=JobState.PENDING) for _ in range(2)]
    with pytest.raises(UsageError, match="no job id given"):
        store.get(job_id)
    for verb in ("cancel", "status", "resume", "logs"):
        result = _cli(verb, job_id)
        assert result.exit_code == 2 and "no job id given" in result.output and "fix:" in result.output
    assert all(store.get(r.id).state == JobState.PENDING for r in records)  # nothing cancelled


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    ids = {make_record(store, tmp_path, "alpha").id for _ in range(3)}
    with pytest.raises(UsageError) as err:
        store.get("alpha")
    assert "matches 3 jobs" in err.value.message and all(i in err.value.message for i in ids)


def test_a_colliding_id_never_overwrites_another_job(tmp_path: Path, home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two submits draw the same id: the second gets a fresh one; the first job's spec.yaml is untouched."""
    from orchestrator.backends.base import SubmitOptions
    from orchestrator.backends.local import LocalBackend
    from orchestrator.settings import Settings
    from orchestrator.spec.models import JobSpec

    monkeypatch.setattr("orchestrator.backends.local.check_framework_available", lambda spec: None)
    drawn = iter(["j-aaaaaa", "j-aaaaaa", "j-bbbbbb", "j-bbbbbb", "j-cccccc"])
    monkeypatch.setattr(JobStore, "new_job_id", lambda self, name: next(drawn))
    backend = LocalBackend(Settings.from_env())
    first = backend.create_record(JobSpec.model_validate({"name": "j", "model": {"type": "cnn"}}), SubmitOptions())
    before = (first.job_dir / "spec.yaml").read_text()
    other = JobSpec.model_validate({"name": "j", "model": {"type": "rnn"}})
    second = backend.create_record(other, SubmitOptions())
    assert first.id == "j-aaaaaa" and second.id == "j-bbbbbb"
    assert (first.job_dir / "spec.yaml").read_text() == before and "rnn" not in before
    # a directory left behind without a record is not reused either
    (backend.settings.job_dir("j-bbbbbb").parent / "j-bbbbbb").mkdir(exist_ok=True)
    third = backend.create_record(other, SubmitOptions())
    assert third.id == "j-cccccc" and backend.store.get("j-aaaaaa").spec["model"]["type"] == "cnn"


def test_ids_run_out_after_a_few_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import JobStoreError

    store = JobStore(tmp_path / "jobs.db")
    monkeypatch.setattr(JobStore, "new_job_id", lambda self, name: "same-id")
    make = lambda job_id: JobRecord(id=job_id, name="same", backend="local", state=JobState.PENDING,  # noqa: E731
                                    spec={}, job_dir=tmp_path / job_id, created_at=time.time())
    store.create_new("same", make)
    with pytest.raises(JobStoreError, match="unused job id"):
        store.create_new("same", make)
    assert len(store.list()) == 1


def test_a_job_directory_that_cannot_be_made_leaves_no_record(tmp_path: Path) -> None:
    from orchestrator.errors import JobStoreError

    store = JobStore(tmp_path / "jobs.db")
    blocker = tmp_path / "jobs"
    blocker.write_text("a file where the jobs directory goes")
    make = lambda job_id: JobRecord(id=job_id, name="nodir", backend="local", state=JobState.PENDING,  # noqa: E731
                                    spec={}, job_dir=blocker / job_id, created_at=time.time())
    with pytest.raises(JobStoreError, match="cannot create the job directory") as info:
        store.create_new("nodir", make)
    assert "ORCHESTRATOR_HOME" in str(info.value.fix)
    assert store.list() == []  # the row inserted first was taken back


def test_job_progress_reads_and_writes_the_flat_stored_form(tmp_path: Path) -> None:
    from orchestrator.store import JobProgress

    progress = JobProgress(epoch=3, epochs=10, metrics={"val_accuracy": 0.5, "train_loss": 1.25})
    stored = progress.to_dict()
    assert stored == {"epoch": 3, "epochs": 10, "val_accuracy": 0.5, "train_loss": 1.25}
    assert list(stored)[:2] == ["epoch", "epochs"]  # what `status --output json` has always shown
    assert JobProgress.from_dict(stored) == progress
    store = JobStore(tmp_path / "jobs.db")
    record = make_record(store, tmp_path, "p1")
    store.update(record.id, progress=stored)
    assert store.get(record.id).job_progress == progress
    # a job that has not finished an epoch, and a sweep's progress (trial rows are not metrics)
    assert JobProgress.from_dict({"epoch": None, "epochs": 4}) == JobProgress(epoch=None, epochs=4)
    sweep = JobProgress.from_dict({"trials_done": 2, "epochs": 5, "best_trial": "t1", "trials": [{"x": 1}],
                                   "val_accuracy": 0.9, "flag": True})
    assert sweep == JobProgress(epoch=None, epochs=5, metrics={"trials_done": 2.0, "val_accuracy": 0.9})
