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

The kill point is the same for both: the victim node is SIGKILLed (raylet first, then every process
of it; its scratch folder deleted) ``--kill-after`` seconds after the checkpoint of epoch
``--kill-epoch`` was persisted, some steps into the next epoch's training (an epoch trains in 0.2 s
to 1.5 s here, by the machine's load). A: the manifest in S3 (polled every 10 ms) and its
``created_at``; B: rank 0's line written when ``report`` with the checkpoint returned (polled every
10 ms). A's own events reach the driver's log a drain (0.25 s) or more after they happen, longer than
an epoch of this job on a quiet machine, so they cannot time the kill. Not a fraction of the time
between checkpoints: plain Ray Train's ``report`` with a checkpoint takes most of that time, so the
kill would land after the next epoch's steps. Per run:

* recovery = first training step of the worker group that restarted after the kill (the worker's
  ``time.time()`` right after that step's optimizer step) minus the moment ``kill_node`` returned;
* kill->restored: until the new group has restored its checkpoint (A: ``attempt_start``; B: rank 0's
  ``attempt_start`` line, written after ``get_checkpoint`` and the load);
* work lost = the global step at the kill minus the restored step. A: the step at the kill is the
  previous attempt's ``last_step`` in the job's record (the newest Step progress the driver got:
  rank 0 sends it at most every 0.25 s and at an epoch's last step, so a lower bound); B: the same
  rule applied to its per-step lines (and the exact count beside it).

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
sys.path.insert(0, str(REPO))

from bench.submit import machine_check  # noqa: E402

RESULTS = REPO / "bench" / "results"
PLAIN = REPO / "bench" / "plain_train_node_loss.py"
EVENT_MARK = "ORCHESTRATOR_EVENT "
RESULT_MARK = "ORCHESTRATOR_RESULT "
PLAIN_MARK = "PLAIN_RESULT "
RUN_TIMEOUT_S = 1500.0
#: Ray's answer while the head's job agent is still starting; submissions are retried meanwhile.
NO_AGENT = "No available agent to submit job"
AGENT_RETRIES = 40


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


def steps_per_epoch(epochs: int) -> int:
    """The job's steps per epoch (each rank's shard of the training split over its batch)."""
    import math

    from orchestrator.runtime.data import prepare_data
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate({k: v for k, v in job_spec("", epochs).items() if k != "storage"})
    shard = len(prepare_data(spec.data, spec.training.seed).x_train) // spec.resources.workers
    return math.ceil(shard / spec.per_worker_batch_size)


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
        self.steps_per_epoch = steps_per_epoch(args.epochs)

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
        wait_for(lambda: len(self.node_ids()) == 2, 300, 2, "head and node_b alive")
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
        return wait_for(lambda: (ids if name in (ids := self.node_ids()) else None), 300, 2, f"node {name}")

    def node_ids(self) -> dict[str, str]:
        """The alive nodes by name; none while the GCS does not answer (a busy machine)."""
        try:
            return dict(self.cluster.node_ids())
        except RuntimeError as exc:
            log(f"the cluster's nodes could not be read ({str(exc).strip().splitlines()[-1][:200]}); trying again")
            return {}

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
        spe = self.steps_per_epoch

        checked = [time.time()]

        def manifest(epoch: int) -> Any:
            # A's events reach the driver's log a drain (0.25 s) or more after they happen: longer
            # than one epoch of this job on a quiet machine. The manifests in S3 say it at once, and
            # carry their own time (``created_at``, the worker's clock, just before the upload).
            key = f"orchestrator/{job_id}/checkpoints/ckpt-{epoch * spe:010d}/manifest.json"
            try:
                return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except Exception:  # noqa: BLE001 - botocore's NoSuchKey (ClientError): not yet
                if time.time() - checked[0] > 2:  # not 100 dashboard calls a second
                    checked[0] = time.time()
                    if patiently(lambda: self.client.get_job_status(job_id), "job status").is_terminal():
                        raise RuntimeError(f"job {job_id} ended before epoch {epoch}'s checkpoint") from None
                return None

        previous = wait_for(lambda: manifest(e - 1), RUN_TIMEOUT_S, 0.2, f"epoch {e - 1}'s manifest")
        ckpt_manifest = wait_for(lambda: manifest(e), RUN_TIMEOUT_S, 0.01, f"epoch {e}'s manifest")
        seen = time.time()
        cycle = ckpt_manifest["created_at"] - previous["created_at"]
        killed_from, killed = self.kill_at(victim, ckpt_manifest["created_at"] + self.args.kill_after)
        ckpt_step = e * spe
        state = self.wait_job(job_id)
        events, record = self.orchestrator_events(job_id)
        if record is None:
            raise RuntimeError(f"no record in the driver log of {job_id} (Ray state {state})")
        ckpt = {"time": ckpt_manifest["created_at"], "global_step": ckpt_step}
        starts = [ev for ev in events if ev["type"] == "attempt_start"]
        firsts = {ev["attempt"]: ev for ev in events if ev["type"] == "first_step"}
        after = next(ev for ev in starts if ev["time"] > killed_from)
        first = firsts[after["attempt"]]
        attempts = {a["attempt"]: a for a in record["attempts"]}
        before = attempts[after["attempt"] - 1]
        at_kill = int(before.get("last_step") or 0)
        restored = int(after.get("restored_step") or 0)
        first_nodes = next(ev for ev in starts if ev["attempt"] == 1).get("nodes") or []
        phases = controller_phases(self.base, killed, first["time"])
        newest = max([ev["global_step"] for ev in events if ev["type"] == "checkpoint" and ev["time"] < killed_from],
                     default=0)
        # the driver's progress is a lower bound; the most steps that fit between the checkpoint and
        # the kill at this attempt's fastest step rate is an upper one (rank 0 also evaluated,
        # uploaded and reported in that time, so the truth lies below it)
        fastest = min(ev["metrics"]["epoch_seconds"] / spe for ev in events
                      if ev["type"] == "epoch" and ev["time"] < killed_from)
        upper = max(at_kill, ckpt_step + min(spe, int((killed_from - ckpt["time"]) / fastest)))
        return {
            **phases, "ckpt_seen_after_s": seen - ckpt["time"], "newest_ckpt_at_kill": newest,
            "step_at_kill_upper": upper, "lost_steps_upper": upper - restored,
            "system": "A", "run": n, "job": job_id, "state": record["state"],
            "val_accuracy": (record.get("result") or {}).get("metrics", {}).get("val_accuracy"),
            "attempts": len(record["attempts"]), "spread": sorted(first_nodes) == sorted([nodes["node_b"],
                                                                                         nodes[victim]]),
            "ckpt_step": ckpt["global_step"], "epoch_cycle_s": cycle, "kill_seconds": killed - killed_from,
            "kill_after_ckpt_s": killed_from - ckpt["time"],
            "step_at_kill": at_kill, "restored_step": restored, "lost_steps": at_kill - restored,
            "to_restored_s": after["time"] - killed, "recovery_s": first["time"] - killed,
            "own_lost_steps": attempts[after["attempt"]].get("lost_steps"),
            "own_recovery_s": attempts[after["attempt"]].get("recovery_seconds"),
            "detected_after_kill_s": (before.get("failure_detected_at") or float("nan")) - killed,
            "failure": before.get("failure"), "submitted_to_kill_s": killed - submitted, "killed_at": killed, "first_step_at": first["time"],
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

        checked = [time.time()]

        def kill_point() -> Any:
            seen = lines()
            ckpt = next((ev for ev in seen if ev["type"] == "checkpoint" and ev["epoch"] == e), None)
            if ckpt is None:
                if time.time() - checked[0] < 2:  # not 100 dashboard calls a second
                    return None
                checked[0] = time.time()
                if patiently(lambda: self.client.get_job_status(job_id), "job status").is_terminal():
                    raise RuntimeError(f"job {job_id} ended before epoch {e}'s checkpoint:\n"
                                       f"{self.client.get_job_logs(job_id)[-3000:]}")
                return None
            before = next(ev for ev in seen if ev["type"] == "checkpoint" and ev["epoch"] == e - 1)
            return ckpt, ckpt["time"] - before["time"]

        ckpt, cycle = wait_for(kill_point, RUN_TIMEOUT_S, 0.01, f"epoch {e}'s checkpoint")
        seen_at = time.time()
        killed_from, killed = self.kill_at(victim, ckpt["time"] + self.args.kill_after)
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
        exact = max(steps_before)
        at_kill = sampled_step_at(evs, killed)
        restored = int(after.get("restored_step") or 0)
        phases = controller_phases(self.base, killed, first["time"])
        newest = max([ev["global_step"] for ev in evs if ev["type"] == "checkpoint" and ev["time"] < killed_from],
                     default=0)
        return {
            **phases, "ckpt_seen_after_s": seen_at - ckpt["time"], "newest_ckpt_at_kill": newest,
            "step_at_kill_exact": exact, "lost_steps_exact": exact - restored,
            "system": "B", "run": n, "job": job_id, "state": state,
            "val_accuracy": (result.get("metrics") or {}).get("val_accuracy"),
            "attempts": len(starts), "spread": sorted(first_nodes) == sorted([nodes["node_b"], nodes[victim]]),
            "ckpt_step": ckpt["global_step"], "epoch_cycle_s": cycle, "kill_seconds": killed - killed_from,
            "kill_after_ckpt_s": killed_from - ckpt["time"],
            "step_at_kill": at_kill, "restored_step": restored, "lost_steps": at_kill - restored,
            "to_restored_s": after["time"] - killed, "recovery_s": first["time"] - killed,
            "submitted_to_kill_s": killed - submitted, "killed_at": killed, "first_step_at": first["time"],
        }


def sampled_step_at(lines: list[dict[str, Any]], moment: float) -> int:
    """The newest step before ``moment`` as the orchestrator's driver would know it: rank 0 sends
    its progress at most every 0.25 s and at each epoch's last step (``TrainSession.progress``),
    applied to B's per-step lines so both systems' steps at the kill are estimated alike."""
    last_sent, newest = 0.0, 0
    for line in lines:
        if line["type"] != "step" or line["time"] > moment:
            continue
        if line["time"] - last_sent >= 0.25 or line["step"] == line["steps"]:
            last_sent, newest = line["time"], max(newest, int(line["global_step"]))
    return newest


def controller_phases(base: Path, killed: float, first_step: float) -> dict[str, float]:
    """Where the recovery went, from Ray Train's own controller log (its ``asctime``, this machine's
    clock): seconds from the kill to Ray Train's retry decision, and the worker group's start-up
    (new actors, then the train context: the process group), until the train function is launched."""
    out: dict[str, float] = {}
    for path in base.glob("head/session_*/logs/train/ray-train-sys-controller-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                at = time.mktime(time.strptime(entry["asctime"][:19], "%Y-%m-%d %H:%M:%S"))
                at += int(entry["asctime"][20:23]) / 1000
            except (ValueError, KeyError, TypeError):
                continue
            if not killed - 1 <= at <= first_step:
                continue
            message = str(entry.get("message", ""))
            if message.startswith("[FailurePolicy] RETRY"):
                out["retry_decided_s"] = at - killed
            elif "worker actors created in" in message and "retry_decided_s" in out:
                out["actors_s"] = float(message.rsplit(" in ", 1)[1].rstrip("s."))
            elif "Train context initialized on workers in" in message and "retry_decided_s" in out:
                out["train_context_s"] = float(message.rsplit(" in ", 1)[1].rstrip("s."))
            elif "Worker group startup completed" in message and "retry_decided_s" in out:
                out["group_started_s"] = at - killed
    return out


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
           f"{args.kill_after:g} s after epoch {args.kill_epoch}'s checkpoint was persisted.", "",
           "| system | recovery s (kill -> first step), median | steps lost, median "
           "| restored the newest persisted checkpoint | runs: recovery s | runs: steps at kill - restored step |",
           "|---|---|---|---|---|---|"]
    for name, group in (("A orchestrator", a), ("B plain Ray Train", b)):
        times = ", ".join(f"{r['recovery_s']:.1f}" for r in group)
        lost = ", ".join(f"{r['step_at_kill']}-{r['restored_step']}={r['lost_steps']}"
                         + (f" (at most {r['lost_steps_upper']})" if "lost_steps_upper" in r else "") for r in group)
        shown = f"{median(group, 'lost_steps'):g}"
        if any("lost_steps_upper" in r for r in group):
            shown += f" (at most {median(group, 'lost_steps_upper'):g})"
        newest = sum(1 for r in group if r["restored_step"] >= r["newest_ckpt_at_kill"])
        out.append(
            f"| {name} | {median(group, 'recovery_s'):.1f} | {shown} "
            f"| {newest} of {len(group)} | {times} | {lost} |")
    if a:
        out += ["", "A's steps at the kill are the driver's newest progress (a lower bound); \"at most\": the steps "
                "that fit between the checkpoint and the kill at the attempt's fastest step rate (an upper bound: "
                "rank 0 also evaluated, uploaded and reported in that time)."]
    if b:
        out += ["", "B's steps at the kill counted exactly from its per-step lines: "
                + ", ".join(f"{r['step_at_kill_exact']}-{r['restored_step']}={r['lost_steps_exact']}" for r in b)
                + f" (median {median(b, 'lost_steps_exact'):g} steps lost)."]
    out += ["", "Where the recovery went (medians, seconds from the kill; Ray Train's controller log for the "
            "first two):", "",
            "| system | Ray Train decides to retry | new worker group up (actors + process group) "
            "| checkpoint restored in the train function | first step |", "|---|---|---|---|---|"]
    for name, group in (("A orchestrator", a), ("B plain Ray Train", b)):
        out.append(f"| {name} | {median(group, 'retry_decided_s'):.1f} | {median(group, 'group_started_s'):.1f} "
                   f"(actors {median(group, 'actors_s'):.1f}, process group {median(group, 'train_context_s'):.1f}) "
                   f"| {median(group, 'to_restored_s'):.1f} | {median(group, 'recovery_s'):.1f} |")
    ratio = median(a, "recovery_s") / median(b, "recovery_s") if b else float("nan")
    out += ["", f"Recovery time ratio A/B (medians): **{ratio:.2f}**; steps lost (medians): "
            f"A {median(a, 'lost_steps'):g}, B {median(b, 'lost_steps'):g}.", "",
            "Per run:", "",
            "| run | job | state | val acc | attempts | spread | newest ckpt at kill | epoch s | kill after ckpt s "
            "| step at kill | restored | lost | kill -> restored s | kill -> first step s | machine check s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r.get("val_accuracy")
        shown = "?" if acc is None else f"{acc:.3f}"
        out.append(f"| {r['system']}{r['run']} | {r['job']} | {r['state']} | "
                   f"{shown} | {r['attempts']} | {r['spread']} | {r['newest_ckpt_at_kill']} | "
                   f"{r['epoch_cycle_s']:.2f} | {r['kill_after_ckpt_s']:.2f} | {r['step_at_kill']} | "
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
            "(rank 0 sends one at most every 0.25 s and at each epoch's last step), so it may miss the last "
            "few steps (a lower bound); B: the same rule applied to its per-step lines, so both are estimated "
            "alike (B's exact count is given too). `restored the newest persisted checkpoint`: the restored "
            "step is the newest checkpoint persisted before the kill (A: `checkpoint` events, sent after the "
            "manifest; B: lines after `report` returned). The kill point is the same rule "
            "for both: the given seconds after the epoch's checkpoint was persisted (A: the manifest's "
            "`created_at`, its appearance in S3 polled every 10 ms; B: rank 0's line written when "
            "`ray.train.report` with the checkpoint returned, polled every 10 ms), some steps into the next "
            "epoch. `kill after ckpt s` is measured from those times; `epoch s` is the time between that "
            "checkpoint and the one before (training, evaluation and checkpointing of one epoch)."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (alternating)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--kill-epoch", type=int, default=2, help="kill after this epoch's checkpoint")
    parser.add_argument("--kill-after", type=float, default=0.15,
                        help="seconds after --kill-epoch's checkpoint was persisted: some steps into the next epoch")
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
