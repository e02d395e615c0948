"""Replay time of scheduling policies on all dev jobs, alternating, for issue 24's replay target.

``PYTHONPATH=. python bench/replay_time.py las 'adaptive[jobs .9/.99, starve 4 x service]' ...``
replays each label (a policy name, or a ``bench.policy_eval.CANDIDATES`` label) on the six dev VCs
of ``contended_nodes``, one process, each VC a fresh policy, the labels in turn, ``--rounds``
times (alternating, so a busy machine slows them alike), and prints per run: round, label, wall s,
CPU s (``os.times()``), average JCT and preemptions (which must match the evaluation's figures).
"""

from __future__ import annotations

import argparse
import os
import time

from bench.policy_eval import CANDIDATES, PHILLY
from orchestrator.simulate import load, run_policy, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", nargs="+", help="policy names or policy_eval candidate labels")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each label, alternating")
    args = parser.parse_args()
    parts = load(str(PHILLY / "dev.csv"), str(PHILLY / "vc_config.csv"), contended=True)
    for rnd in range(args.rounds):
        for label in args.labels:
            times = os.times()
            cpu0, wall0, done_all = times.user + times.system, time.perf_counter(), []
            for part in parts:
                done, _ = run_policy([part], CANDIDATES[label].fresh() if label in CANDIDATES else label)
                done_all += done
            times = os.times()
            cpu, wall = times.user + times.system - cpu0, time.perf_counter() - wall0
            r = summarize(label, done_all, 0.0)
            print(rnd, label, round(wall, 1), round(cpu, 1), round(r.avg_jct_s), r.preemptions, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
