"""Start-up: launch -> first training step on a warm cluster (`orchestrator up`), cold (the embedded
Ray `submit` starts itself), and bare `torchrun`; plus the warm cluster's memory while idle.

Same spec (jobs/cnn.yaml: the digits CNN, 2 workers, global batch 64, 10 epochs) in all three.
"Launch" is when the benchmark starts the command; the first step is the time the rank-0 worker
reports its first training step (orchestrator: the job's ``created_at`` plus its
``time_to_first_step_s``; torchrun: bench/torchrun_cnn.py's own clock). The three run alternately,
in rotating order, ``--runs`` times in one sitting, with ``sum(range(10**7))`` timed before and after.
Idle memory is the proportional set size (PSS, shared pages split between the processes that map
them) summed over every process of the cluster, after `up` and again after the runs.

    .venv/bin/python bench/warm_start.py --runs 5 [--configs warm,cold,torchrun]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import machine_check  # noqa: E402
from bench.throughput import run_orchestrator, run_torchrun  # noqa: E402

CONFIGS = ("warm", "cold", "torchrun")


def cluster_pss_bytes(home: Path) -> dict[str, Any]:
    """PSS of every process of the home's warm cluster (its group and their descendants)."""
    from orchestrator.execution.cluster import _cluster_pids, read_cluster

    cluster = read_cluster(home)
    if cluster is None:
        raise SystemExit("no warm cluster is up")
    total, count, by_name = 0, 0, {}
    for pid in _cluster_pids(cluster.pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except (OSError, StopIteration):
            continue
        total += pss
        count += 1
        by_name[name] = by_name.get(name, 0) + pss
    return {"pss_bytes": total, "processes": count,
            "largest": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:8])}


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", default=str(REPO / "jobs" / "cnn.yaml"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "warm_start.json")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    out: dict[str, Any] = {"machine_check_before_s": machine_check()}
    with tempfile.TemporaryDirectory() as warm_home, tempfile.TemporaryDirectory() as cold_home:
        warm, cold = Path(warm_home), Path(cold_home)
        if "warm" in configs:
            started = time.time()
            cli(warm, "up", "--idle-timeout", "0")
            out["up_seconds"] = time.time() - started
            time.sleep(5)  # let the start-up settle before measuring idle memory
            out["idle_memory_after_up"] = cluster_pss_bytes(warm)
        try:
            for i in range(args.runs):
                order = configs[i % len(configs):] + configs[: i % len(configs)]
                for name in order:
                    if name == "torchrun":
                        t = run_torchrun(args.spec)
                        res = {"launch_to_first_step_s": t["time_to_first_step_s"],
                               "samples_per_second": t["samples_per_second"], "val_accuracy": t["val_accuracy"],
                               "wall_s": t["wall_s"]}
                    else:
                        res = run_orchestrator(args.spec, warm if name == "warm" else cold)
                    runs[name].append(res)
                    print(f"run {i + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
            if "warm" in configs:
                time.sleep(5)
                out["idle_memory_after_runs"] = cluster_pss_bytes(warm)
        finally:
            if "warm" in configs:
                cli(warm, "down", "--force")
    out["machine_check_after_s"] = machine_check()
    keys = ("launch_to_first_step_s", "samples_per_second", "val_accuracy", "wall_s")
    out["medians"] = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items() if rs}
    med = out["medians"]
    if "torchrun" in med:
        t = med["torchrun"]
        out["ratios_to_torchrun"] = {
            name: {"launch_to_first_step": m["launch_to_first_step_s"] / t["launch_to_first_step_s"],
                   "samples_per_second": m["samples_per_second"] / t["samples_per_second"]}
            for name, m in med.items() if name != "torchrun"}
    out["runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"machine check: {out['machine_check_before_s']:.2f} s before, {out['machine_check_after_s']:.2f} s after")
    print("| | launch -> first step (s) | samples/s | val accuracy | wall (s) |")
    print("|---|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['launch_to_first_step_s']:.2f} | {m['samples_per_second']:.0f} | "
              f"{m['val_accuracy']:.4f} | {m['wall_s']:.1f} |")
    for name, r in out.get("ratios_to_torchrun", {}).items():
        print(f"{name} / torchrun: first step {r['launch_to_first_step']:.2f}x, samples/s {r['samples_per_second']:.3f}x")
    for key in ("idle_memory_after_up", "idle_memory_after_runs"):
        if key in out:
            print(f"{key}: {out[key]['pss_bytes'] / 2**30:.2f} GiB PSS in {out[key]['processes']} processes")


if __name__ == "__main__":
    main()
