"""Observability end to end: a real Prometheus scrapes a real training run (with one injected
worker failure, so restart metrics exist) and `orchestrator metrics serve`; every dashboard and
rule expression runs against it; TensorBoard serves the events; the Ray dashboard lists the job.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.metrics import names
from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, wait_for

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DASHBOARDS = REPO / "dashboards"
RULES = DASHBOARDS / "prometheus" / "rules.yml"

#: Expressions that cannot have data in this test, with the reason. They must still parse.
NO_DATA_IN_TEST = {
    "orchestrator_preemptions_total": "no scheduler preempts anything in a single local job",
    "orchestrator_scheduling_decision_seconds": "the local backend runs no scheduling passes",
}
#: For alerts (their conditions are false in a healthy test), a probe that must return data.
ALERT_PROBES = {
    "OrchestratorJobFailingRepeatedly": "increase(orchestrator_restarts_total[30m])",
    "OrchestratorJobFailed": 'orchestrator_job_state{state="failed"}',
    "OrchestratorTrainingStalled": "time() - orchestrator_last_progress_timestamp_seconds",
    "OrchestratorQueueWaitTooLong": "orchestrator_queue_oldest_wait_seconds",
    "OrchestratorAcceleratorsAllocatedButIdle": "sum by (pool) (orchestrator_pool_accelerators_allocated)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(base: str, expr: str, at: float | None = None) -> dict[str, Any]:
    params = {"query": expr}
    if at is not None:
        params["time"] = str(at)
    url = f"{base}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        return json.loads(urllib.request.urlopen(url, timeout=30).read())
    except urllib.error.HTTPError as exc:  # 400 on a syntax error: return the body for the assert
        return json.loads(exc.read())


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((DASHBOARDS / "grafana").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            out.append((rule.get("record") or rule["alert"], "record" if "record" in rule else "alert", rule["expr"]))
    return out


def metric_names_in(expr: str) -> set[str]:
    found = set(re.findall(r"\borchestrator_[a-z_]+", expr))
    base = set()
    for name in found:
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in {m.name for m in names.ALL_PROMETHEUS_METRICS}:
                name = name[: -len(suffix)]
        base.add(name)
    return base


def test_dashboards_load_and_use_only_defined_metrics() -> None:
    defined = {m.name for m in names.ALL_PROMETHEUS_METRICS}
    exprs = dashboard_exprs() + [(n, e) for n, _, e in rule_exprs()]
    assert len(exprs) >= 20
    for where, expr in exprs:
        unknown = metric_names_in(expr) - defined
        assert not unknown, f"{where} uses undefined metrics {unknown}"
    titles = {json.loads(p.read_text())["title"] for p in (DASHBOARDS / "grafana").glob("*.json")}
    assert titles == {"orchestrator / cluster overview", "orchestrator / job detail"}
    recorded = {n for n, kind, _ in rule_exprs() if kind == "record"}
    for _, expr in dashboard_exprs():
        for rec in re.findall(r"\borchestrator:[a-z_:0-9]+", expr):
            assert rec in recorded, f"dashboard uses recording rule {rec} that rules.yml does not define"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
def test_the_job_failed_alert_resolves_on_its_own(tmp_path: Path) -> None:
    """`promtool test rules`: a job that failed at t=0 (and stays failed in the store) alerts at
    once and for 6 hours, then no more; a job that failed 7 hours ago never alerts."""
    a_failed = [{
        "exp_labels": {"job": "a", "framework": "torch", "state": "failed", "severity": "warning"},
        "exp_annotations": {
            "summary": "Job a failed",
            "description": "`orchestrator status a` shows the reason; `orchestrator resume` continues "
                           "it. Resolves 6 hours after the failure."}}]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "10m",
            "input_series": [
                {"series": 'orchestrator_job_state{job="a",framework="torch",state="failed"}', "values": "1x60"},
                {"series": 'orchestrator_job_end_timestamp_seconds{job="a",framework="torch"}', "values": "0x60"},
                {"series": 'orchestrator_job_state{job="old",framework="torch",state="failed"}', "values": "1x60"},
                {"series": 'orchestrator_job_end_timestamp_seconds{job="old",framework="torch"}',
                 "values": "-25200x60"},
            ],
            "alert_rule_test": [{"eval_time": at, "alertname": "OrchestratorJobFailed", "exp_alerts": alerts}
                                for at, alerts in (("1m", a_failed), ("5h50m", a_failed), ("6h10m", []), ("9h", []))],
        }],
    }
    path = tmp_path / "alert-test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    proc = subprocess.run([str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.fixture(scope="module")
def observed_run(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("obs")
    home = tmp / "home"
    env = cli_env(home, ray_address)
    job_port, store_port, prom_port = free_port(), free_port(), free_port()
    spec = tmp / "obs.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "observed",
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "training": {"epochs": 6, "batch_size": 64, "learning_rate": 0.002, "seed": 3},
        "failure": {"max_failures": 1, "backoff_s": 0},
        "checkpoint": {"every_epochs": 1},
        "testing": {"inject": [{"kind": "sigkill", "rank": 1, "at_step": 50}]},
    }))
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # honor_labels: our `job` label (the job id) must not become `exported_job`
            {"job_name": "orchestrator-job", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{job_port}"]}]},
            {"job_name": "orchestrator-store", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{store_port}"]}]},
        ],
    }))
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"),
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "metrics", "serve", "--port", str(store_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for(lambda: _ready(base), 120, what="Prometheus to start")
        started = time.time()
        job = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "submit", str(spec), "-o", "json", "-q",
             "--metrics-port", str(job_port), "--metrics-linger", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        ray_jobs = _ray_jobs_while_running(job)
        out, err = job.communicate(timeout=3600)
        assert job.returncode == 0, err[-3000:]
        result = last_json(out)
        time.sleep(3)  # a few more evaluations of the recording rules
        yield {"base": base, "result": result, "started": started, "ended": time.time(), "env": env,
               "ray_jobs": ray_jobs, "job_target": f"127.0.0.1:{job_port}"}
    finally:
        for proc in (serve, prom):
            proc.terminate()
            proc.wait(30)


def last_scrape(observed_run: Any) -> float:
    """The last moment Prometheus scraped the job's own endpoint (it lingers a few seconds after the
    job ends; on a busy machine those seconds move, so the tests read the time instead of guessing)."""
    params = urllib.parse.urlencode({"query": f'up{{instance="{observed_run["job_target"]}"}} == 1',
                                     "start": observed_run["started"], "end": observed_run["ended"], "step": "1"})
    series = json.loads(urllib.request.urlopen(f"{observed_run['base']}/api/v1/query_range?{params}",
                                               timeout=30).read())["data"]["result"]
    assert series, "Prometheus never scraped the job's endpoint"
    return float(series[0]["values"][-1][0])


def _ready(base: str) -> bool:
    try:
        return urllib.request.urlopen(f"{base}/-/ready", timeout=5).status == 200
    except OSError:
        return False


def _ray_jobs_while_running(job: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The Ray dashboard's job list (with Ray's token auth), read while the job runs."""
    token_file = Path.home() / ".ray" / "auth_token"
    seen: list[dict[str, Any]] = []

    def fetch() -> bool:
        if job.poll() is not None:
            return True
        headers = {}
        if token_file.exists():
            headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        try:
            req = urllib.request.Request("http://127.0.0.1:8265/api/jobs/", headers=headers)
            data = json.loads(urllib.request.urlopen(req, timeout=10).read())
        except OSError:
            return False
        mine = [j for j in data if (j.get("metadata") or {}).get("orchestrator_job_name") == "observed"]
        seen[:] = mine
        return bool(mine)

    wait_for(fetch, 1800, interval=2, what="the Ray dashboard to list the job")
    return seen


@pytest.mark.heavy
def test_loss_decreased_and_accuracy_gauge_reached_the_final_value(observed_run: Any) -> None:
    base, result = observed_run["base"], observed_run["result"]
    job = result["job_id"]
    params = urllib.parse.urlencode({
        # the job's own endpoint, scraped while it trained (the store's endpoint has the same series)
        "query": f'orchestrator_train_loss{{job="{job}",instance="{observed_run["job_target"]}"}}',
        "start": observed_run["started"],
        "end": observed_run["ended"], "step": "1",
    })
    series = json.loads(urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30).read())
    [values] = [s["values"] for s in series["data"]["result"]]
    losses = [float(v) for _, v in values]
    assert losses[-1] < losses[0], losses
    acc = prom_query(base, f'orchestrator_validation_accuracy{{job="{job}"}}', at=last_scrape(observed_run))
    samples = {s["metric"]["instance"]: float(s["value"][1]) for s in acc["data"]["result"]}
    assert observed_run["job_target"] in samples, samples  # the job's own endpoint, and the store's
    for value in samples.values():
        assert value == pytest.approx(result["metrics"]["val_accuracy"], abs=1e-9)


@pytest.mark.heavy
def test_failure_metrics_reached_prometheus(observed_run: Any) -> None:
    base, result = observed_run["base"], observed_run["result"]
    job = result["job_id"]
    restarts = prom_query(base, f'max_over_time(orchestrator_restarts_total{{job="{job}"}}[1h])')
    assert float(restarts["data"]["result"][0]["value"][1]) == 1
    assert len(result["attempts"]) == 2
    lost = prom_query(base, f'max_over_time(orchestrator_lost_steps_total{{job="{job}"}}[1h])')
    assert float(lost["data"]["result"][0]["value"][1]) == result["attempts"][1]["lost_steps"]


@pytest.mark.heavy
def test_every_dashboard_and_rule_expression_runs(observed_run: Any) -> None:
    base, job = observed_run["base"], observed_run["result"]["job_id"]
    at = last_scrape(observed_run)
    checked = 0
    for where, expr in dashboard_exprs() + [(n, e) for n, kind, e in rule_exprs() if kind == "record"]:
        concrete = expr.replace("$job", job)
        answer = prom_query(base, concrete, at=at)
        assert answer["status"] == "success", f"{where}: {answer}"
        if any(m in expr for m in NO_DATA_IN_TEST):
            continue
        assert answer["data"]["result"], f"{where}: no data for {concrete}"
        checked += 1
    for alert, _, expr in (r for r in rule_exprs() if r[1] == "alert"):
        assert prom_query(base, expr, at=at)["status"] == "success", alert
        probe = prom_query(base, ALERT_PROBES[alert], at=at)
        assert probe["data"]["result"], f"{alert}: its data probe returned nothing"
    assert checked >= 15


@pytest.mark.heavy
def test_ray_dashboard_lists_the_job(observed_run: Any) -> None:
    ray_jobs = observed_run["ray_jobs"]
    assert ray_jobs, "the Ray dashboard's /api/jobs/ did not list the job"
    assert ray_jobs[0]["metadata"]["orchestrator_job_id"] == observed_run["result"]["job_id"]
    assert ray_jobs[0]["type"] == "DRIVER"
    assert observed_run["result"]["dashboard_url"].endswith(f"#/jobs/{ray_jobs[0]['job_id']}")


@pytest.mark.heavy
def test_tensorboard_command_serves_the_job(observed_run: Any) -> None:
    port = free_port()
    job = observed_run["result"]["job_id"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "tensorboard", job, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=observed_run["env"],
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}/" in first

        def tags() -> Any:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
                return json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                return None

        data = wait_for(tags, 300, interval=2, what="TensorBoard to serve")
        run_tags = next(iter(data.values()))
        assert {"loss/train", "accuracy/validation"} <= set(run_tags)
    finally:
        proc.terminate()
        proc.wait(30)
