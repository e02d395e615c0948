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

Reported per configuration (medians): the larger train worker's peak USS (memory it holds alone) and
PSS (sampled every 0.5 s), its ``ru_maxrss`` (the job result's ``peak_worker_rss_bytes``, which also
counts every object-store page the worker ever mapped to read a block), the peak of the whole job's memory
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


MODELS: dict[str, dict[str, Any]] = {
    # as light as a model gets: the input pipeline's cost shows fully
    "mlp": {"type": "sequential", "layers": [
        f"Flatten(input_shape={SHAPE})", "Dense(64, activation='relu')", "Dense(10, activation='softmax')"]},
    # the built-in CNN of jobs/cnn.yaml (two conv layers, 32 and 64 filters; a dense layer of 128)
    "cnn": {"type": "cnn", "conv_filters": [32, 64], "dense_units": [128]},
}


def spec_for(config: str, data: Path, workdir: Path, model: str = "mlp") -> Path:
    scale, mode = config.split("-")
    spec = {
        "name": f"data-scale-{config}",
        "framework": "torch",
        "model": MODELS[model],
        "data": {"source": str(data / scale / "*.npz"), "streaming": mode == "stream"},
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "training": {"epochs": 1 if scale == "20x" else 3, "batch_size": 128, "optimizer": "adam",
                     "learning_rate": 0.001, "seed": 0},
        "checkpoint": {"every_epochs": 1},
    }
    path = workdir / f"{config}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sample_memory(root: Any) -> tuple[int, int, int]:
    """(PSS of ``root`` and every process under it, the largest train worker's USS, its PSS).

    PSS counts shared pages (Ray's object store, mapped by every process that reads a block) once
    across the processes; USS is what a process holds alone."""
    import psutil

    total = worker_uss = worker_pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            total += info.pss
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                worker_uss, worker_pss = max(worker_uss, info.uss), max(worker_pss, info.pss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total, worker_uss, worker_pss


def run_one(spec: Path, home: Path) -> dict[str, Any]:
    import psutil

    env = {**os.environ, "ORCHESTRATOR_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--output", "json", "--quiet"]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak = [0, 0, 0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[:] = [max(a, b) for a, b in zip(peak, sample_memory(root), strict=True)]
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
    epochs = [float(v) for v in re.findall(r" epoch \d+ .*?samples_per_second=([0-9.]+(?:e[+-]?[0-9]+)?)", log)]
    return {
        # steady state: the median epoch after the first (the first also starts the read-task processes)
        "samples_per_second": statistics.median(epochs[1:] or epochs),
        "first_epoch_samples_per_second": epochs[0],
        "overall_samples_per_second": result["metrics"]["samples_per_second"],
        "val_accuracy": result["metrics"]["val_accuracy"],
        "peak_worker_uss_mib": peak[1] / 2**20,
        "peak_worker_pss_mib": peak[2] / 2**20,
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
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a subset of " + ",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/data_scale[_MODEL]")
    args = parser.parse_args()
    configs = tuple(c for c in CONFIGS if c in args.configs.split(","))
    out = args.out or REPO / "bench" / "results" / ("data_scale" if args.model == "mlp" else f"data_scale_{args.model}")

    sizes = {"1x": write_shards(args.data / "1x", SHARDS_1X), "20x": write_shards(args.data / "20x", 20 * SHARDS_1X)}
    print(f"data: 1x {sizes['1x'] / 1e6:.0f} MB, 20x {sizes['20x'] / 1e9:.2f} GB", flush=True)
    checks = [machine_check()]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.runs):
            order = configs if i % 2 == 0 else tuple(reversed(configs))  # alternate the order
            for config in order:
                run = run_one(spec_for(config, args.data, work, args.model), work / f"home-{config}-{i}")
                runs[config].append(run)
                print(config, json.dumps(run), flush=True)
    checks.append(machine_check())

    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0] if k != "streaming"} for c in configs}
    ratios: dict[str, float] = {}
    if "20x-stream" in med and "1x-stream" in med:
        ratios["worker_uss_20x_over_1x"] = med["20x-stream"]["peak_worker_uss_mib"] / med["1x-stream"]["peak_worker_uss_mib"]
        ratios["worker_pss_20x_over_1x"] = med["20x-stream"]["peak_worker_pss_mib"] / med["1x-stream"]["peak_worker_pss_mib"]
        ratios["worker_rss_20x_over_1x"] = med["20x-stream"]["peak_worker_rss_mib"] / med["1x-stream"]["peak_worker_rss_mib"]
        ratios["job_pss_20x_over_1x"] = med["20x-stream"]["peak_job_pss_mib"] / med["1x-stream"]["peak_job_pss_mib"]
    if "1x-memory" in med and "1x-stream" in med:
        ratios["samples_per_s_stream_over_memory_1x"] = (med["1x-stream"]["samples_per_second"]
                                                         / med["1x-memory"]["samples_per_second"])
    command = f"bench/data_scale.py --runs {args.runs} --model {args.model} --configs {','.join(configs)}"
    report = {"model": MODELS[args.model], "bytes": sizes, "runs": runs, "medians": med, "ratios": ratios,
              "machine_check_s": checks, "command": command}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = ["| configuration | data | train worker USS / PSS / RSS (peak) | job PSS (peak) | samples/s (steady) "
            "| first epoch | overall | first step | wall | val acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        m = med[c]
        size = sizes[c.split("-")[0]]
        rows.append(f"| {c} | {size / 1e9:.2f} GB | {m['peak_worker_uss_mib']:.0f} / {m['peak_worker_pss_mib']:.0f} / "
                    f"{m['peak_worker_rss_mib']:.0f} MiB | {m['peak_job_pss_mib']:.0f} MiB | "
                    f"{m['samples_per_second']:.0f} | {m['first_epoch_samples_per_second']:.0f} | "
                    f"{m['overall_samples_per_second']:.0f} | {m['time_to_first_step_s']:.1f} s | {m['wall_s']:.0f} s | "
                    f"{m['val_accuracy']:.3f} |")
    said = {"worker_uss_20x_over_1x": "peak train-worker USS 20x / 1x {:.2f}x (target <= 1.2x)",
            "worker_pss_20x_over_1x": "PSS {:.2f}x",
            "worker_rss_20x_over_1x": "RSS {:.2f}x",
            "job_pss_20x_over_1x": "peak job PSS 20x / 1x {:.2f}x",
            "samples_per_s_stream_over_memory_1x": "samples/s streaming / in-memory on 1x {:.2f}x (target >= 0.9)"}
    rows += ["", f"Model {args.model}. " + "; ".join(said[k].format(v) for k, v in ratios.items())
             + f". Medians of {args.runs} alternating runs; machine check sum(range(10**7)): {checks[0]:.2f} s before, "
             f"{checks[1]:.2f} s after. `{command}`"]
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
