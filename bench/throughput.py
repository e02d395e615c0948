"""Training throughput: `orchestrator submit jobs/cnn.yaml` vs a bare `torchrun` DDP script.

Same CNN, data, per-worker shards, global batch and epochs, 2 workers (gloo on CPU). Runs both
alternately, several times in one sitting, and prints medians and the ratio as JSON and a
Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/throughput.py --runs 5 [--spec jobs/cnn.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import run_launched, submit_json  # noqa: E402


def run_orchestrator(spec: str, home: Path) -> dict[str, float]:
    """One ``orchestrator submit``; its time to first step counts from the job record
    (``time_to_first_step_s``) and from the command's launch (``launch_to_first_step_s``)."""
    launched = time.time()
    proc, result, wall = submit_json(spec, home)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"orchestrator run failed:\n{proc.stderr[-3000:]}")
    return {
        "samples_per_second": result["metrics"]["samples_per_second"],
        "val_accuracy": result["metrics"]["val_accuracy"],
        "time_to_first_step_s": result["time_to_first_step_s"],
        "launch_to_first_step_s": result["created_at"] - launched + result["time_to_first_step_s"],
        "peak_worker_rss_bytes": result.get("peak_worker_rss_bytes") or 0,
        "wall_s": wall,
    }


def run_torchrun(spec: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(REPO / "bench" / "torchrun_cnn.py"), spec]
    return run_launched(cmd, {"OMP_NUM_THREADS": "1"}, "torchrun")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", default=str(REPO / "jobs" / "cnn.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "throughput.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"orchestrator": [], "torchrun": []}
    with tempfile.TemporaryDirectory() as home:
        for i in range(args.runs):
            for name in ("torchrun", "orchestrator") if i % 2 else ("orchestrator", "torchrun"):
                res = (
                    run_torchrun(args.spec) if name == "torchrun" else run_orchestrator(args.spec, Path(home))
                )
                runs[name].append(res)
                print(f"run {i + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    summary["ratio_samples_per_second"] = (
        summary["orchestrator"]["samples_per_second"] / summary["torchrun"]["samples_per_second"]
    )
    summary["runs"] = runs  # type: ignore[assignment]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    o, t = summary["orchestrator"], summary["torchrun"]
    print("| | samples/s (median) | val accuracy | submit to first step (s) | wall (s) |")
    print("|---|---|---|---|---|")
    print(
        f"| orchestrator submit | {o['samples_per_second']:.0f} | {o['val_accuracy']:.4f} | "
        f"{o['time_to_first_step_s']:.1f} | {o['wall_s']:.1f} |"
    )
    print(
        f"| bare torchrun | {t['samples_per_second']:.0f} | {t['val_accuracy']:.4f} | "
        f"{t['time_to_first_step_s']:.1f} | {t['wall_s']:.1f} |"
    )
    print(
        f"\nratio orchestrator / torchrun samples/s: {summary['ratio_samples_per_second']:.3f} "
        f"({args.runs} runs each, medians)"
    )


if __name__ == "__main__":
    main()
