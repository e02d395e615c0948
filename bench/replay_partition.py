"""One partition of the Philly slice replayed by one policy: passes, CPU and wall seconds, and a
hash of every job's history, for A/B comparisons of scheduler changes (same hash = same decisions).

    .venv/bin/python bench/replay_partition.py las --vc 6214e9 --limit 20000
    ROOT=/path/to/other/checkout .venv/bin/python bench/replay_partition.py las ...   # the other side

Run the two sides at once (one per vCPU) so both see the same machine. Skips (exit 0) when
../shared/traces/philly is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

from orchestrator.simulate import load, run_policy  # noqa: E402

PHILLY = Path(__file__).resolve().parents[2] / "shared" / "traces" / "philly"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy")
    ap.add_argument("--vc", default="6214e9", help="partition (vc) to replay")
    ap.add_argument("--limit", type=int, default=None, help="read only the trace's first N rows")
    args = ap.parse_args()
    if not PHILLY.is_dir():
        print(f"skipped: {PHILLY} not found (the shared Philly trace)")
        return
    parts = load(
        str(PHILLY / "dev.csv"),
        str(PHILLY / "vc_config.csv"),
        contended=True,
        limit=args.limit,
        only=[args.vc],
    )
    cpu, wall = time.process_time(), time.perf_counter()
    replays, _ = run_policy(parts, args.policy)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    history = sorted(
        (j.id, j.finished_at, j.first_start, j.preemptions) for j in replays[0].state.jobs.values()
    )
    digest = hashlib.sha1(repr(history).encode()).hexdigest()[:12]
    print(
        f"{ROOT} {args.policy} {args.vc}: {len(parts[0].jobs)} jobs, {replays[0].passes} passes, "
        f"cpu {cpu:.2f} s, wall {wall:.2f} s, history {digest}"
    )


if __name__ == "__main__":
    main()
