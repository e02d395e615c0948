"""torch DDP vs tensorflow MWMS on one spec: `orchestrator compare`, several times, medians.

Each run is one `orchestrator compare SPEC -o json -q` (both frameworks, one after the other, the
same data, shards, seed, model and 2 workers); the order alternates between runs so neither
framework always runs on a warmer machine. With ``--address`` every job joins that Ray cluster
(time to first step: the framework's import, the trainer's start and the first step); without it
every job starts its own embedded Ray, as `orchestrator submit` does by default.

    .venv/bin/python bench/frameworks.py --runs 5 [--spec jobs/cnn.yaml] [--address 127.0.0.1:6379]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIELDS = (
    ("val_accuracy", lambda r: r["metrics"].get("val_accuracy"), "{:.4f}"),
    ("test_accuracy", lambda r: r["metrics"].get("test_accuracy"), "{:.4f}"),
    ("samples/s (training steps)", lambda r: r["metrics"].get("samples_per_second"), "{:,.0f}"),
    ("peak worker memory (MiB)", lambda r: (r["peak_worker_rss_bytes"] or 0) / 2**20, "{:,.0f}"),
    ("time to first step (s)", lambda r: r["time_to_first_step_s"], "{:.1f}"),
    ("wall time (s)", lambda r: r["wall_s"], "{:.1f}"),
)


def compare_once(spec: str, order: str, home: Path, address: str | None) -> list[dict[str, Any]]:
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "orchestrator", "compare", spec, "--frameworks", order, "-o", "json", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"compare failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])["runs"]  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", default="jobs/cnn.yaml")
    parser.add_argument(
        "--address", default=None, help="a running Ray cluster to join (default: embedded Ray)"
    )
    args = parser.parse_args()
    per: dict[str, list[dict[str, Any]]] = {"torch": [], "tensorflow": []}
    with tempfile.TemporaryDirectory(prefix="bench-frameworks-") as tmp:
        for i in range(args.runs):
            order = "torch,tensorflow" if i % 2 == 0 else "tensorflow,torch"
            for run in compare_once(args.spec, order, Path(tmp) / f"home-{i}", args.address):
                per[run["framework"]].append(run)
                print(
                    f"run {i + 1} {run['framework']:<10} "
                    + "  ".join(
                        f"{name}={fmt.format(get(run))}" for name, get, fmt in FIELDS if get(run) is not None
                    ),
                    flush=True,
                )
    print(f"\nmedians of {args.runs} runs, {args.spec}:")
    print(f"{'':<28}{'torch':>12}{'tensorflow':>12}{'tf / torch':>12}")
    for name, get, fmt in FIELDS:
        values = [statistics.median(get(r) for r in per[f]) for f in ("torch", "tensorflow")]
        ratio = values[1] / values[0] if values[0] else float("nan")
        print(f"{name:<28}{fmt.format(values[0]):>12}{fmt.format(values[1]):>12}{ratio:>12.2f}")


if __name__ == "__main__":
    main()
