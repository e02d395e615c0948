"""TensorFlow throughput: `orchestrator submit jobs/cnn-tf.yaml` vs a bare MultiWorkerMirroredStrategy script.

Same Keras CNN, data, per-worker shards, global batch (64 = 32 per worker), Adam and epochs, 2
local workers on CPU (bench/tf_mwms_cnn.py is the bare side). Runs both alternately, several
times in one sitting, times ``sum(range(10**7))`` before and after, and prints medians, the
ratios (samples/s and peak worker memory, ours / bare) as JSON to bench/results/tf_bare.json and
a Markdown table for BENCHMARKS.md.

    flock /tmp/heavy.lock nice -n 10 .venv/bin/python bench/tf_bare.py --runs 5 [--spec jobs/cnn-tf.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import machine_check, run_launched  # noqa: E402
from bench.throughput import run_orchestrator  # noqa: E402

KEYS = ("samples_per_second", "val_accuracy", "time_to_first_step_s", "peak_worker_rss_bytes", "wall_s")


def run_bare(spec: str) -> dict[str, Any]:
    """One run of bench/tf_mwms_cnn.py (its launcher starts the 2 ranks)."""
    return run_launched([sys.executable, str(REPO / "bench" / "tf_mwms_cnn.py"), spec],
                        {"OMP_NUM_THREADS": "1", "TF_USE_LEGACY_KERAS": "1"}, "bare tensorflow run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", default=str(REPO / "jobs" / "cnn-tf.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tf_bare.json")
    args = parser.parse_args()
    check_before = machine_check()
    runs: dict[str, list[dict[str, Any]]] = {"orchestrator": [], "bare": []}
    with tempfile.TemporaryDirectory() as home:
        for i in range(args.runs):
            for name in ("bare", "orchestrator") if i % 2 else ("orchestrator", "bare"):
                res = run_bare(args.spec) if name == "bare" else run_orchestrator(args.spec, Path(home))
                runs[name].append(res)
                print(f"run {i + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    check_after = machine_check()
    medians = {name: {key: statistics.median(r[key] for r in results) for key in KEYS}
               for name, results in runs.items()}
    o, b = medians["orchestrator"], medians["bare"]
    summary: dict[str, Any] = {
        **medians,
        "ratio_samples_per_second": o["samples_per_second"] / b["samples_per_second"],
        "ratio_peak_worker_rss": o["peak_worker_rss_bytes"] / b["peak_worker_rss_bytes"],
        "machine_check_s": {"before": check_before, "after": check_after},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    mib = 2**20
    print("| | samples/s (median) | val accuracy | peak worker memory (MiB) | launch to first step (s) | wall (s) |")
    print("|---|---|---|---|---|---|")
    for label, m in (("orchestrator submit", o), ("bare MWMS script", b)):
        print(f"| {label} | {m['samples_per_second']:.0f} | {m['val_accuracy']:.4f} | "
              f"{m['peak_worker_rss_bytes'] / mib:.0f} | {m['time_to_first_step_s']:.1f} | {m['wall_s']:.1f} |")
    print(f"\nratio orchestrator / bare: samples/s {summary['ratio_samples_per_second']:.3f}, "
          f"peak worker memory {summary['ratio_peak_worker_rss']:.2f} ({args.runs} runs each, medians); "
          f"machine check sum(range(10**7)): {check_before:.3f}s before, {check_after:.3f}s after")


if __name__ == "__main__":
    main()
