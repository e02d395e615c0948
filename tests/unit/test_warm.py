"""The warm cluster's pieces without Ray: the pool's sinks and gangs, the cluster record, the idle
clock, stopping a process tree, which jobs run on warm workers, and the digits read without sklearn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.execution import cluster as cluster_mod
from orchestrator.execution.cluster import WarmCluster, find_warm_cluster, idle_since, read_cluster
from orchestrator.execution.warm_fit import warm_refusal
from orchestrator.runtime import warm as warm_mod
from orchestrator.runtime.warm import DRIVER_SILENT_S, PooledSink, WarmPool
from orchestrator.spec.loader import validate_spec_data
from orchestrator.store import JobRecord, JobState, JobStore


def _spec(**extra: Any) -> Any:
    data = {"name": "w", "model": {"type": "cnn"}, "resources": {"workers": 2, "cpus_per_worker": 0.5}, **extra}
    return validate_spec_data(data, source="test")


class _Ref:
    def __init__(self, value: Any) -> None:
        self.value = value


class _FakePoolHandle:
    """What a Ray actor handle of the pool looks like to PooledSink: ``sink_call.remote(...)``."""

    def __init__(self, pool: WarmPool) -> None:
        pool_ = pool

        class _Method:
            @staticmethod
            def remote(*args: Any) -> _Ref:
                return _Ref(pool_.sink_call(*args))

        self.sink_call = _Method()


def test_a_pooled_sink_is_called_like_a_sink_actor() -> None:
    pool = WarmPool()
    pool.open_sink("job-1", attempts_before=2)
    sink = PooledSink(_FakePoolHandle(pool), "job-1")  # type: ignore[arg-type]
    assert sink.next_attempt.remote().value == (3, 0)  # attempts of earlier runs count (resume)
    sink.push.remote([{"type": "step", "rank": 1}])
    assert sink.drain.remote().value == [{"type": "step", "rank": 1}]
    sink.request_stop.remote("cancelled")
    assert sink.stop_reason.remote().value == "cancelled"
    with pytest.raises(AttributeError):
        sink._private  # noqa: B018 - not forwarded
    import pickle

    assert pickle.loads(pickle.dumps(PooledSink("handle", "k"))).key == "k"  # travels to the workers


def test_a_silent_driver_makes_its_workers_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(warm_mod.time, "time", lambda: now[0])
    pool = WarmPool()
    pool.open_sink("job", 0)
    assert pool.sink_call("job", "stop_reason") is None
    assert pool.sink_call("job", "ping") == 1000.0
    now[0] += DRIVER_SILENT_S + 1
    assert pool.sink_call("job", "stop_reason") == "the job's driver is gone"
    with pytest.raises(RuntimeError, match="not been heard from"):
        pool.sink_call("job", "ping")
    pool.sink_call("job", "drain")  # the driver is back
    assert pool.sink_call("job", "stop_reason") is None
    assert pool.info()["recent_jobs"] == 1
    pool.close_sink("job")
    with pytest.raises(RuntimeError, match="no sink"):
        pool.sink_call("job", "push", [])


def test_the_pool_hands_out_idle_gangs_by_world_size() -> None:
    pool = WarmPool(keep=2)
    assert pool.take(2) is None
    a, b = {"workers": ["w0", "w1"], "pids": [10, 11]}, {"workers": ["w2", "w3"], "pids": [12, 13]}
    assert pool.give(a) and pool.give(b)
    assert pool.take(4) is None
    info = pool.info()
    assert info["idle_gangs"] == {"2": 2} and info["idle_workers"] == 4 and info["idle_pids"] == [[10, 11], [12, 13]]
    assert pool.take(2) is b and pool.take(2) is a and pool.take(2) is None
    assert pool.info()["reused"] == 2


def test_only_torch_jobs_on_cpus_run_on_warm_workers() -> None:
    assert warm_refusal(_spec()) is None
    assert "tensorflow" in str(warm_refusal(_spec(framework="tensorflow")))
    gpu = _spec(resources={"workers": 2, "gpus_per_worker": 1})
    assert "accelerator" in str(warm_refusal(gpu))


def _record(home: Path, **changes: Any) -> WarmCluster:
    values: dict[str, Any] = {"address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:8265", "pgid": 2**22 + 7,
                              "temp_dir": "/tmp/x", "started_at": 100.0, "idle_timeout_s": 60.0, "warm_workers": 2,
                              "watcher_pid": None, **changes}
    home.mkdir(parents=True, exist_ok=True)
    (home / "cluster.json").write_text(json.dumps(values))
    return WarmCluster(**values)


def test_a_stale_cluster_record_is_forgotten(tmp_path: Path) -> None:
    written = _record(tmp_path)  # nothing listens on port 1, no such process group
    assert read_cluster(tmp_path) == written
    assert find_warm_cluster(tmp_path) is None
    assert not (tmp_path / "cluster.json").exists()
    (tmp_path / "cluster.json").write_text("{not json")
    assert read_cluster(tmp_path) is None and find_warm_cluster(tmp_path) is None


def test_the_idle_clock_counts_from_the_last_active_job(tmp_path: Path) -> None:
    cluster = _record(tmp_path, started_at=100.0)
    assert idle_since(tmp_path, cluster) == 100.0  # no job store yet
    store = JobStore(tmp_path / "jobs.db")

    def add(name: str, state: JobState, created: float, ended: float | None) -> None:
        store.create(JobRecord(id=store.new_job_id(name), name=name, backend="local", state=state,
                               spec={"name": name}, job_dir=tmp_path / name, created_at=created, ended_at=ended))

    add("old", JobState.SUCCEEDED, 150.0, 180.0)
    add("newer", JobState.FAILED, 190.0, 250.0)
    assert idle_since(tmp_path, cluster) == 250.0
    add("queued", JobState.PENDING, 300.0, None)
    assert idle_since(tmp_path, cluster) is None  # a job is active: never idle


def test_stopping_a_cluster_kills_its_group_and_the_sessions_it_started(tmp_path: Path) -> None:
    # a head-like process in its own group whose child starts a session of its own, as Ray's workers do
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    head = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert head.stdout is not None
    child = int(head.stdout.readline())
    assert os.getpgid(child) != head.pid
    assert {head.pid, child} <= cluster_mod._cluster_pids(head.pid)
    cluster_mod._kill_group(head.pid)
    head.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline and cluster_mod.process_alive(child):
        time.sleep(0.1)
    assert not cluster_mod.process_alive(child)


def test_up_refuses_when_ray_address_is_set_and_down_says_when_nothing_is_up(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"ORCHESTRATOR_HOME": str(tmp_path), "RAY_ADDRESS": "10.0.0.1:6379"}
    result = runner.invoke(main, ["up"], env=env)
    assert result.exit_code == 2 and "RAY_ADDRESS is set" in result.output and "unset RAY_ADDRESS" in result.output
    result = runner.invoke(main, ["down"], env={"ORCHESTRATOR_HOME": str(tmp_path)})
    assert result.exit_code == 0 and "no warm cluster is up" in result.output


def test_down_refuses_while_jobs_are_active(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _record(tmp_path)
    monkeypatch.setattr(cluster_mod, "find_warm_cluster", lambda home: cluster)
    stopped: list[Path] = []
    monkeypatch.setattr(cluster_mod, "stop_cluster", lambda home: stopped.append(home) or cluster)
    store = JobStore(tmp_path / "jobs.db")
    job_id = store.new_job_id("busy")
    store.create(JobRecord(id=job_id, name="busy", backend="local", state=JobState.PENDING, spec={"name": "busy"},
                           job_dir=tmp_path / job_id, created_at=time.time()))
    runner = CliRunner()
    result = runner.invoke(main, ["down"], env={"ORCHESTRATOR_HOME": str(tmp_path)})
    assert result.exit_code == 2 and job_id in result.output and "--force" in result.output and not stopped
    result = runner.invoke(main, ["down", "--force", "--output", "json"], env={"ORCHESTRATOR_HOME": str(tmp_path)})
    assert result.exit_code == 0 and stopped
    assert json.loads(result.output.strip().splitlines()[-1]) == {
        "stopped": True, "address": cluster.address, "active_jobs": [job_id]}


def test_digits_are_read_as_scikit_learn_loads_them() -> None:
    from sklearn.datasets import load_digits

    from orchestrator.runtime.data import digits_arrays

    images, target = digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(target, digits.target)
    assert images.shape == (1797, 8, 8)


def test_a_worker_whose_driver_is_gone_ends_its_process(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(warm_mod, "_reachable", lambda sink: sink != "gone")
    monkeypatch.setattr(warm_mod.os, "_exit", lambda code: exits.append(code))
    warm_mod._exit_if_orphaned({"sink": "alive"})
    warm_mod._exit_if_orphaned({"sink": None})
    assert exits == []
    warm_mod._exit_if_orphaned({"sink": "gone"})
    assert exits == [1]


def test_one_up_at_a_time_per_home(tmp_path: Path) -> None:
    import threading

    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.wait(5)
        with cluster_mod.cluster_lock(tmp_path):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with cluster_mod.cluster_lock(tmp_path):
        entered.set()
        time.sleep(0.5)  # the second `up` waits here for the first to record its cluster
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]


def test_up_makes_the_ray_token_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)  # as `ray start` leaves it under a 022 umask
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    cluster_mod._protect_token()
    assert token.stat().st_mode & 0o777 == 0o600
