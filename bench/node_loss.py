"""Recovery after the loss of a whole node: the orchestrator (``submit --backend ray``) against plain
Ray Train with the same storage, on a real multi-node Ray cluster on this machine.

One sitting: a moto S3 server (its own process) and a :class:`LocalRayCluster` (a head with no CPUs,
``node_b`` and, for each run, a fresh victim node ``v<N>``, 2 CPUs each; a killed node stays dead).
Runs alternate A, B, A, B, ...:

* **A** the digits CNN of tests/integration/test_multinode.py (2 workers x 1 CPU spread over the
  nodes, a checkpoint per epoch in S3, ``failure.max_failures: 3``, ``backoff_s: 0``) through
  ``orchestrator submit --backend ray --detach``;
* **B** bench/plain_train_node_loss.py as a Ray job: the same network, data, batch and workers with
  plain Ray Train (``RunConfig(storage_path, storage_filesystem)`` on the same S3 server,
  ``FailureConfig(max_failures=3)``, ``report(checkpoint=...)`` per epoch, ``get_checkpoint()``).

The kill point is the same for both: when the checkpoint of epoch ``--kill-epoch`` is persisted (A:
its manifest appears in S3; B: rank 0's ``report`` with it returned; both polled every 10 ms), the
victim node is SIGKILLed (raylet first, then every process of it; its scratch folder deleted)
``--kill-after-steps`` steps later, timed at the step rate of the epoch before. (A's own events
reach the driver's log a drain, 0.25 s, or more after they happen: longer than one epoch of this
job on a quiet machine, so they only give A's step rate.) Per run:

* recovery = first training step of the worker group that restarted after the kill (the worker's
  ``time.time()`` right after that step's optimizer step) minus the moment ``kill_node`` returned;
* kill->restored: until the new group has restored its checkpoint (A: ``attempt_start``; B: rank 0's
  ``attempt_start`` line, written after ``get_checkpoint`` and the load);
* work lost = the global step at the kill minus the restored step. A: the step at the kill is the
  previous attempt's ``last_step`` in the job's record (the newest Step progress the driver got,
  sent at most every 0.25 s: a lower bound); B: the newest per-step line written before the kill.

Medians over ``--runs`` runs of each, the machine check ``sum(range(10**7))`` timed before and
after. Results: bench/results/node_loss.md (and .json). Run it alone (other Ray work on a 2-CPU
machine skews it):

    flock /tmp/heavy.lock .venv/bin/python bench/node_loss.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PLAIN = REPO / "bench" / "plain_train_node_loss.py"
EVENT_MARK = "ORCHESTRATOR_EVENT "
RESULT_MARK = "ORCHESTRATOR_RESULT "
PLAIN_MARK = "PLAIN_RESULT "
RUN_TIMEOUT_S = 1500.0
#: Ray's answer while the head's job agent is still starting; submissions are retried meanwhile.
NO_AGENT = "No available agent to submit job"
AGENT_RETRIES = 40


def machine_check() -> float:
    start = time.perf_counter()
    sum(range(10**7))
    return time.perf_counter() - start


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def job_spec(storage: str, epochs: int) -> dict[str, Any]:
    """The job of tests/integration/test_multinode.py."""
    return {
        "name": "node-loss",
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 1, "placement": "spread"},
        "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.002, "seed": 7},
        "checkpoint": {"every_epochs": 1, "keep": 3},
        "failure": {"max_failures": 3, "backoff_s": 0},
        "storage": storage,
    }


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def patiently(call: Callable[[], Any], what: str, tries: int = 10) -> Any:
    """``call()``, tried again when the dashboard drops a connection (a busy machine)."""
    for attempt in range(tries):
        try:
            return call()
        except (ConnectionError, OSError) as exc:
            if attempt + 1 == tries:
                raise
            log(f"{what}: {exc}; trying again")
            time.sleep(2)
    raise AssertionError("unreachable")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="rnl", dir="/tmp"))  # short: Ray's socket paths are limited
        self.s3: Any = None
        self.cluster: Any = None
        self.client: Any = None
        self.bucket = ""

    # -- set-up -------------------------------------------------------------------------
    def start(self) -> None:
        from orchestrator.testing.ray_nodes import LocalRayCluster
        from orchestrator.testing.s3 import free_port, start_moto_process

        self.s3 = start_moto_process()
        self.bucket = self.s3.create_bucket("node-loss-bench")
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        # free head and dashboard ports: another Ray (a test session's) may hold the defaults
        self.cluster = LocalRayCluster(self.base, env={**self.s3.env, "ORCHESTRATOR_HOME": str(self.base / "head-home"),
                                                       "PYTHONPATH": pythonpath},
                                       head_port=free_port(), dashboard_port=free_port())
        log(f"cluster under {self.base}: head (0 CPUs) + node_b (2 CPUs)")
        self.cluster.start_head(num_cpus=0)
        self.cluster.add_node("node_b", num_cpus=2)
        wait_for(lambda: len(self.cluster.node_ids()) == 2, 300, 2, "head and node_b alive")
        from orchestrator.execution.ray_local import use_local_auth_token

        use_local_auth_token()
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(self.cluster.dashboard)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
        if self.s3 is not None:
            self.s3.stop()

    def add_victim(self, name: str) -> dict[str, str]:
        self.cluster.add_node(name, num_cpus=2)
        return wait_for(lambda: (ids if name in (ids := self.cluster.node_ids()) else None), 300, 2, f"node {name}")

    def wait_job(self, job_id: str) -> str:
        def done() -> Any:
            status = patiently(lambda: self.client.get_job_status(job_id), "job status")
            return str(status) if status.is_terminal() else None

        return str(wait_for(done, RUN_TIMEOUT_S, 1.0, f"the end of Ray job {job_id}")).split(".")[-1]

    def kill_at(self, victim: str, kill_at: float) -> tuple[float, float]:
        time.sleep(max(0.0, kill_at - time.time()))
        t0 = time.time()
        killed = self.cluster.kill_node(victim)
        t1 = time.time()
        log(f"killed {victim}: {killed} processes in {t1 - t0:.2f}s")
        return t0, t1

    def driver_log(self, job_id: str) -> Path | None:
        found = sorted(self.base.glob(f"head/session_*/logs/job-driver-{job_id}.log"))
        return found[-1] if found else None

    # -- run A: the orchestrator ------------------------------------------------------------
    def orchestrator_events(self, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        path = self.driver_log(job_id)
        events: list[dict[str, Any]] = []
        record = None
        if path is None:
            return events, record
        for line in path.read_text(errors="replace").splitlines():
            try:
                if line.startswith(EVENT_MARK):
                    events.append(json.loads(line[len(EVENT_MARK):]))
                elif line.startswith(RESULT_MARK):
                    record = json.loads(line[len(RESULT_MARK):])
            except ValueError:
                continue  # another process's output cut into the line
        return events, record

    def run_orchestrator(self, n: int, victim: str, nodes: dict[str, str]) -> dict[str, Any]:
        spec_path = self.base / f"a{n}.yaml"
        import yaml

        spec_path.write_text(yaml.safe_dump(job_spec(f"{self.bucket}/orchestrator", self.args.epochs)))
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCHESTRATOR_HOME": str(self.base / f"client-{n}"),
               **self.s3.env, "ORCHESTRATOR_RAY_ADDRESS": self.cluster.dashboard}
        env.pop("RAY_ADDRESS", None)
        submitted = time.time()
        for _ in range(AGENT_RETRIES):
            proc = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec_path), "--backend", "ray",
                                   "--detach", "-o", "json", "-q"], capture_output=True, text=True, env=env,
                                  timeout=600, cwd=REPO)
            if proc.returncode == 0 or NO_AGENT not in proc.stdout + proc.stderr:
                break
            time.sleep(5)  # the head's job agent is still starting (a busy machine)
        if proc.returncode != 0:
            raise RuntimeError(f"submit failed:\n{proc.stdout}\n{proc.stderr}")
        submitted_record = json.loads(proc.stdout.strip().splitlines()[-1])
        job_id = submitted_record.get("job_id") or submitted_record["id"]
        log(f"A{n}: submitted {job_id}")
        e = self.args.kill_epoch

        bucket = self.bucket.removeprefix("s3://")
        s3 = self.s3.client()

        def previous_epoch() -> Any:
            # the events reach the driver's log a drain (0.25 s) or more after they happen, longer
            # than an epoch of this job on a quiet machine: the log gives the step rate, S3 the moment
            events, _ = self.orchestrator_events(job_id)
            epochs = {ev["epoch"]: ev for ev in events if ev["type"] == "epoch"}
            if e - 1 not in epochs:
                if patiently(lambda: self.client.get_job_status(job_id), "job status").is_terminal():
                    raise RuntimeError(f"job {job_id} ended before epoch {e}'s checkpoint")
                return None
            steps = epochs[e - 1]["global_step"] - (epochs[e - 2]["global_step"] if e - 2 in epochs else 0)
            return epochs[e - 1]["global_step"] + steps, epochs[e - 1]["metrics"]["epoch_seconds"] / max(1, steps)

        ckpt_step, dt = wait_for(previous_epoch, RUN_TIMEOUT_S, 0.05, f"epoch {e - 1}'s report")
        key = f"orchestrator/{job_id}/checkpoints/ckpt-{ckpt_step:010d}/manifest.json"

        def committed() -> bool:
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - botocore's 404 (ClientError): not yet
                return False
            return True

        wait_for(committed, RUN_TIMEOUT_S, 0.01, f"epoch {e}'s manifest in S3")
        seen = time.time()
        killed_from, killed = self.kill_at(victim, seen + self.args.kill_after_steps * dt)
        state = self.wait_job(job_id)
        events, record = self.orchestrator_events(job_id)
        if record is None:
            raise RuntimeError(f"no record in the driver log of {job_id} (Ray state {state})")
        ckpt = next(ev for ev in events if ev["type"] == "checkpoint" and ev.get("global_step") == ckpt_step)
        starts = [ev for ev in events if ev["type"] == "attempt_start"]
        firsts = {ev["attempt"]: ev for ev in events if ev["type"] == "first_step"}
        after = next(ev for ev in starts if ev["time"] > killed_from)
        first = firsts[after["attempt"]]
        attempts = {a["attempt"]: a for a in record["attempts"]}
        before = attempts[after["attempt"] - 1]
        at_kill = int(before.get("last_step") or 0)
        restored = int(after.get("restored_step") or 0)
        first_nodes = next(ev for ev in starts if ev["attempt"] == 1).get("nodes") or []
        return {
            "system": "A", "run": n, "job": job_id, "state": record["state"],
            "val_accuracy": (record.get("result") or {}).get("metrics", {}).get("val_accuracy"),
            "attempts": len(record["attempts"]), "spread": sorted(first_nodes) == sorted([nodes["node_b"],
                                                                                         nodes[victim]]),
            "ckpt_step": ckpt["global_step"], "step_seconds": dt, "kill_seconds": killed - killed_from,
            "kill_after_ckpt_s": killed_from - ckpt["time"],
            "step_at_kill": at_kill, "restored_step": restored, "lost_steps": at_kill - restored,
            "to_restored_s": after["time"] - killed, "recovery_s": first["time"] - killed,
            "own_lost_steps": attempts[after["attempt"]].get("lost_steps"),
            "own_recovery_s": attempts[after["attempt"]].get("recovery_seconds"),
            "detected_after_kill_s": (before.get("failure_detected_at") or float("nan")) - killed,
            "failure": before.get("failure"), "submitted_to_kill_s": killed - submitted,
        }

    # -- run B: plain Ray Train ------------------------------------------------------------
    def run_plain(self, n: int, victim: str, nodes: dict[str, str]) -> dict[str, Any]:
        spec_path = self.base / f"b{n}.json"
        spec_path.write_text(json.dumps(job_spec(f"{self.bucket}/plain", self.args.epochs)))
        events_path = self.base / f"b{n}.events.jsonl"
        job_id = f"plain-node-loss-{n}-{int(time.time())}"
        submitted = time.time()
        for attempt in range(AGENT_RETRIES):
            try:
                self.client.submit_job(
                    entrypoint=f"{sys.executable} {PLAIN} --spec {spec_path} --storage {self.bucket}/plain "
                               f"--events {events_path} --name {job_id}",
                    submission_id=job_id, entrypoint_num_cpus=0,
                    runtime_env={"env_vars": {**self.s3.env, "RAY_USAGE_STATS_ENABLED": "0"}},
                )
                break
            except RuntimeError as exc:
                if NO_AGENT not in str(exc) or attempt + 1 == AGENT_RETRIES:
                    raise
                time.sleep(5)  # the head's job agent is still starting (a busy machine)
        log(f"B{n}: submitted {job_id}")
        e = self.args.kill_epoch

        def lines() -> list[dict[str, Any]]:
            if not events_path.is_file():
                return []
            out = []
            for line in events_path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
            return out

        def kill_point() -> Any:
            seen = lines()
            ckpt = next((ev for ev in seen if ev["type"] == "checkpoint" and ev["epoch"] == e), None)
            if ckpt is None:
                if patiently(lambda: self.client.get_job_status(job_id), "job status").is_terminal():
                    raise RuntimeError(f"job {job_id} ended before epoch {e}'s checkpoint:\n"
                                       f"{self.client.get_job_logs(job_id)[-3000:]}")
                return None
            rate = next(ev for ev in seen if ev["type"] == "checkpoint" and ev["epoch"] == e - 1)  # as in A
            return ckpt, rate["train_seconds"] / max(1, rate["steps"])

        ckpt, dt = wait_for(kill_point, RUN_TIMEOUT_S, 0.01, f"epoch {e}'s checkpoint")
        killed_from, killed = self.kill_at(victim, ckpt["time"] + self.args.kill_after_steps * dt)
        state = self.wait_job(job_id)
        logs = patiently(lambda: self.client.get_job_logs(job_id), "job logs")
        result = next((json.loads(line[len(PLAIN_MARK):]) for line in reversed(logs.splitlines())
                       if line.startswith(PLAIN_MARK)), None)
        if result is None or not result["ok"]:
            raise RuntimeError(f"plain run {job_id} failed (Ray state {state}): {result}\n{logs[-3000:]}")
        evs = lines()
        steps_before = [ev["global_step"] for ev in evs if ev["type"] == "step" and ev["time"] <= killed]
        starts = [ev for ev in evs if ev["type"] == "attempt_start" and ev["rank"] == 0]
        after = next(ev for ev in starts if ev["time"] > killed_from)
        first = next(ev for ev in evs if ev["type"] == "first_step" and ev["time"] > after["time"])
        first_nodes = [ev["node"] for ev in evs if ev["type"] == "attempt_start" and ev["time"] < killed_from]
        at_kill = max(steps_before)
        restored = int(after.get("restored_step") or 0)
        return {
            "system": "B", "run": n, "job": job_id, "state": state,
            "val_accuracy": (result.get("metrics") or {}).get("val_accuracy"),
            "attempts": len(starts), "spread": sorted(first_nodes) == sorted([nodes["node_b"], nodes[victim]]),
            "ckpt_step": ckpt["global_step"], "step_seconds": dt, "kill_seconds": killed - killed_from,
            "kill_after_ckpt_s": killed_from - ckpt["time"],
            "step_at_kill": at_kill, "restored_step": restored, "lost_steps": at_kill - restored,
            "to_restored_s": after["time"] - killed, "recovery_s": first["time"] - killed,
            "submitted_to_kill_s": killed - submitted,
        }


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def report(rows: list[dict[str, Any]], checks: tuple[float, float], args: argparse.Namespace,
           started: float) -> str:
    a = [r for r in rows if r["system"] == "A"]
    b = [r for r in rows if r["system"] == "B"]
    out = ["# Recovery after the loss of a node: orchestrator vs plain Ray Train", "",
           f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs; "
           f"{len(a)} + {len(b)} runs alternating, {(time.time() - started) / 60:.0f} min in all; "
           f"machine check sum(range(10**7)): {checks[0]:.2f}s before, {checks[1]:.2f}s after.", "",
           f"Cluster on this machine: head (0 CPUs) + node_b + a fresh victim node per run (2 CPUs each); "
           f"storage on a moto S3 server (own process). Job: digits CNN, 2 workers x 1 CPU spread, "
           f"{args.epochs} epochs, checkpoint every epoch (20 steps), max_failures 3. Victim SIGKILLed "
           f"{args.kill_after_steps} steps after epoch {args.kill_epoch}'s checkpoint was persisted.", "",
           "| system | recovery s (kill -> first step), median | kill -> restored s | steps lost, median "
           "| runs: recovery s | runs: steps at kill - restored step |",
           "|---|---|---|---|---|---|"]
    for name, group in (("A orchestrator", a), ("B plain Ray Train", b)):
        times = ", ".join(f"{r['recovery_s']:.1f}" for r in group)
        lost = ", ".join(f"{r['step_at_kill']}-{r['restored_step']}={r['lost_steps']}" for r in group)
        out.append(
            f"| {name} | {median(group, 'recovery_s'):.1f} | {median(group, 'to_restored_s'):.1f} "
            f"| {median(group, 'lost_steps'):g} | {times} | {lost} |")
    ratio = median(a, "recovery_s") / median(b, "recovery_s") if b else float("nan")
    out += ["", f"Recovery time ratio A/B (medians): **{ratio:.2f}**; steps lost (medians): "
            f"A {median(a, 'lost_steps'):g}, B {median(b, 'lost_steps'):g}.", "",
            "Per run:", "",
            "| run | job | state | val acc | attempts | spread | ckpt step | s/step | kill after ckpt s "
            "| step at kill | restored | lost | kill -> restored s | kill -> first step s | machine check s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r.get("val_accuracy")
        shown = "?" if acc is None else f"{acc:.3f}"
        out.append(f"| {r['system']}{r['run']} | {r['job']} | {r['state']} | "
                   f"{shown} | {r['attempts']} | {r['spread']} | {r['ckpt_step']} | "
                   f"{r['step_seconds']:.3f} | {r['kill_after_ckpt_s']:.2f} | {r['step_at_kill']} | "
                   f"{r['restored_step']} | {r['lost_steps']} | {r['to_restored_s']:.1f} | {r['recovery_s']:.1f} | "
                   f"{r.get('machine_check_s', float('nan')):.2f} |")
    own = [r for r in a if r.get("own_recovery_s") is not None]
    if own:
        out += ["", "The orchestrator's own account (job record): "
                + "; ".join(f"A{r['run']}: failure detected {r['detected_after_kill_s']:.1f}s after the kill, "
                            f"recovery {r['own_recovery_s']:.1f}s from detection, {r['own_lost_steps']} steps redone"
                            for r in own) + "."]
    out += ["", "How measured: all times are `time.time()` on this one machine. The kill moment is when "
            "`LocalRayCluster.kill_node` returned (raylet SIGKILLed first, then every process of the node, "
            "then its scratch folder deleted). The first step after recovery is the worker's own time right "
            "after the first optimizer step of the worker group started after the kill (A: the `first_step` "
            "event in the Ray job's log of the driver; B: rank 0's `first_step` line in a file the workers "
            "append to directly). `kill -> restored` ends when the new group has loaded its checkpoint (A: "
            "`attempt_start` event; B: rank 0's `attempt_start` line after `get_checkpoint()` and the load). "
            "Steps lost = global step at the kill minus the restored step. A: the step at the kill is the "
            "previous attempt's `last_step` in the job record, the newest Step progress the driver received "
            "(rank 0 sends one at most every 0.25 s), so it may miss the last few steps (a lower bound); "
            "B: the newest per-step line written before the kill (exact). The kill point is the same rule "
            "for both: the epoch's checkpoint persisted (A: its manifest appears in S3; B: "
            "`ray.train.report` with the checkpoint returned on rank 0; both polled every 10 ms) plus the "
            "given number of steps at the previous epoch's step rate; `kill after ckpt s` is measured from "
            "the checkpoint's own time (A: the `checkpoint` event, sent right after the manifest; B: the line "
            "after `report`)."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (alternating)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--kill-epoch", type=int, default=2, help="kill after this epoch's checkpoint")
    parser.add_argument("--kill-after-steps", type=int, default=10, help="steps into the next epoch")
    parser.add_argument("--only", choices=["A", "B"], help="run one system only (a trial)")
    parser.add_argument("--budget-min", type=float, default=55.0,
                        help="start no further pair of runs once this many minutes have passed")
    parser.add_argument("--out", default=str(RESULTS / "node_loss"), help="results path, without suffix")
    args = parser.parse_args()

    started = time.time()
    before = machine_check()
    log(f"machine check before: {before:.2f}s")
    bench = Bench(args)
    rows: list[dict[str, Any]] = []
    order = [s for _ in range(args.runs) for s in ("A", "B") if args.only in (None, s)]
    try:
        bench.start()
        for i, system in enumerate(order):
            elapsed = (time.time() - started) / 60
            if system == "A" and rows and elapsed > args.budget_min * (i / 2) / (i / 2 + 1):
                log(f"{elapsed:.0f} min passed: no further pair fits in --budget-min {args.budget_min:g}")
                break
            check = machine_check()
            victim = f"v{i}"
            nodes = bench.add_victim(victim)
            n = sum(1 for r in rows if r["system"] == system) + 1
            try:
                run = bench.run_orchestrator if system == "A" else bench.run_plain
                row = run(n, victim, nodes)
            except Exception as exc:  # noqa: BLE001 - one failed run is reported, the sitting goes on
                log(f"{system}{n} failed: {exc}")
                continue
            row["machine_check_s"] = check
            rows.append(row)
            log(f"{system}{n}: " + json.dumps(row, default=str))
    finally:
        bench.stop()
    after = machine_check()
    log(f"machine check after: {after:.2f}s")
    text = report(rows, (before, after), args, started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine_check": [before, after]}, indent=1,
                                                   default=str))
    print(text)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
