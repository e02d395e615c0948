"""Streaming data sets at scale: the same 2-worker job on a generated data set of 1x and 20x the size.

Three configurations of one job (`sequential` 3072-64-10 MLP, torch, 2 workers, global batch 128),
run alternately ``--runs`` times in one sitting, each with its own embedded Ray:

* ``1x-memory``: the 1x set with ``data.streaming: false`` (the driver reads it whole, the in-memory path)
* ``1x-stream``: the 1x set streamed (each worker reads its own shards through Ray Data)
* ``20x-stream``: the 20x set streamed (one epoch)

The data: ``.npz`` shards of 1,024 samples each, ``x`` float32 (3, 32, 32) (a class prototype plus
noise, so the model learns something: the accuracy is reported as a sanity check) and ``y`` int64;
8 shards at 1x (~100 MB), 160 at 20x (~2 GB): the shard size is the same, so a streaming worker's
memory should not grow with the data set.

Reported per configuration (medians): peak train-worker RSS (the job result's
``peak_worker_rss_bytes``: ``ru_maxrss`` of the worker process), the peak of the whole job's memory
(sum of the proportional set size, PSS, of the submit process and every process under it: driver,
Ray's daemons, train workers and Ray Data's read-task workers, sampled every 0.5 s), samples/s (the
median epoch after the first, i.e. steady state; the first epoch's and the job's overall figure are
reported beside it), time to first step (submit -> first optimizer step, as the job result records
it), wall time. The machine check ``sum(range(10**7))`` is timed before and after.

    .venv/bin/python bench/data_scale.py --runs 3 --data /tmp/data-scale

Writes bench/results/data_scale.json and .md (the table in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import machine_check  # noqa: E402

ROWS_PER_SHARD = 1024
SHARDS_1X = 8
SHAPE = (3, 32, 32)
CONFIGS = ("1x-memory", "1x-stream", "20x-stream")


def write_shards(directory: Path, shards: int, seed: int = 0) -> int:
    """``shards`` npz files of ROWS_PER_SHARD samples; returns the bytes written (skips existing files)."""
    directory.mkdir(parents=True, exist_ok=True)
    protos = np.random.default_rng(1234).normal(0.0, 1.0, (10, *SHAPE)).astype(np.float32)
    total = 0
    for i in range(shards):
        path = directory / f"shard-{i:05d}.npz"
        if not path.exists():
            rng = np.random.default_rng([seed, i])
            y = rng.integers(0, 10, ROWS_PER_SHARD).astype(np.int64)
            x = protos[y] + rng.normal(0.0, 3.0, (ROWS_PER_SHARD, *SHAPE)).astype(np.float32)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=x, y=y)
            tmp.rename(path)
        total += path.stat().st_size
    return total


def spec_for(config: str, data: Path, workdir: Path) -> Path:
    scale, mode = config.split("-")
    spec = {
        "name": f"data-scale-{config}",
        "framework": "torch",
        "model": {"type": "sequential", "layers": [
            f"Flatten(input_shape={SHAPE})", "Dense(64, activation='relu')", "Dense(10, activation='softmax')"]},
        "data": {"source": str(data / scale / "*.npz"), "streaming": mode == "stream"},
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "training": {"epochs": 1 if scale == "20x" else 3, "batch_size": 128, "optimizer": "adam",
                     "learning_rate": 0.001, "seed": 0},
        "checkpoint": {"every_epochs": 1},
    }
    path = workdir / f"{config}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tree_pss(root: Any) -> int:
    """Proportional set size of ``root`` and every process under it (shared pages counted once)."""
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_one(spec: Path, home: Path) -> dict[str, Any]:
    import psutil

    env = {**os.environ, "ORCHESTRATOR_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--output", "json", "--quiet"]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], tree_pss(root))
            except psutil.NoSuchProcess:
                return
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=3600)
    done.set()
    sampler.join()
    wall = time.time() - started
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{spec.name} failed (exit {proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    result = json.loads(lines[-1])
    log = (Path(result["job_dir"]) / "driver.log").read_text()
    epochs = [float(v) for v in re.findall(r" epoch \d+ .*?samples_per_second=([0-9.]+)", log)]
    return {
        # steady state: the median epoch after the first (the first also starts the read-task processes)
        "samples_per_second": statistics.median(epochs[1:] or epochs),
        "first_epoch_samples_per_second": epochs[0],
        "overall_samples_per_second": result["metrics"]["samples_per_second"],
        "val_accuracy": result["metrics"]["val_accuracy"],
        "peak_worker_rss_mib": result["peak_worker_rss_bytes"] / 2**20,
        "peak_job_pss_mib": peak[0] / 2**20,
        "time_to_first_step_s": result["time_to_first_step_s"],
        "wall_s": wall,
        "train_rows": result["data"]["train"],
        "streaming": result["data"].get("streaming", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-data-scale")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_scale")
    args = parser.parse_args()

    sizes = {"1x": write_shards(args.data / "1x", SHARDS_1X), "20x": write_shards(args.data / "20x", 20 * SHARDS_1X)}
    print(f"data: 1x {sizes['1x'] / 1e6:.0f} MB, 20x {sizes['20x'] / 1e9:.2f} GB", flush=True)
    checks = [machine_check()]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.runs):
            order = CONFIGS if i % 2 == 0 else tuple(reversed(CONFIGS))  # alternate the order
            for config in order:
                run = run_one(spec_for(config, args.data, work), work / f"home-{config}-{i}")
                runs[config].append(run)
                print(config, json.dumps(run), flush=True)
    checks.append(machine_check())

    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0] if k != "streaming"} for c in CONFIGS}
    ratios = {
        "worker_rss_20x_over_1x": med["20x-stream"]["peak_worker_rss_mib"] / med["1x-stream"]["peak_worker_rss_mib"],
        "job_pss_20x_over_1x": med["20x-stream"]["peak_job_pss_mib"] / med["1x-stream"]["peak_job_pss_mib"],
        "samples_per_s_stream_over_memory_1x":
            med["1x-stream"]["samples_per_second"] / med["1x-memory"]["samples_per_second"],
    }
    report = {"bytes": sizes, "runs": runs, "medians": med, "ratios": ratios,
              "machine_check_s": checks, "command": f"bench/data_scale.py --runs {args.runs}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = ["| configuration | data | peak worker RSS | peak job PSS | samples/s (steady) | first epoch | overall "
            "| first step | wall | val acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS:
        m = med[c]
        size = sizes[c.split("-")[0]]
        rows.append(f"| {c} | {size / 1e9:.2f} GB | {m['peak_worker_rss_mib']:.0f} MiB | {m['peak_job_pss_mib']:.0f} MiB | "
                    f"{m['samples_per_second']:.0f} | {m['first_epoch_samples_per_second']:.0f} | "
                    f"{m['overall_samples_per_second']:.0f} | {m['time_to_first_step_s']:.1f} s | {m['wall_s']:.0f} s | "
                    f"{m['val_accuracy']:.3f} |")
    rows += ["", f"Peak worker RSS 20x / 1x: {ratios['worker_rss_20x_over_1x']:.2f}x (target <= 1.2x); peak job PSS "
             f"20x / 1x: {ratios['job_pss_20x_over_1x']:.2f}x; samples/s streaming / in-memory on 1x: "
             f"{ratios['samples_per_s_stream_over_memory_1x']:.2f}x (target >= 0.9). Medians of {args.runs} alternating "
             f"runs; machine check sum(range(10**7)): {checks[0]:.2f} s before, {checks[1]:.2f} s after."]
    args.out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
