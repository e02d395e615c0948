"""Scheduler speed: trace replay time per policy, and one pass over 1,000 queued jobs on 5,000 nodes.

* Replay: all jobs of ../shared/traces/philly/dev.csv (49,037) on vc_config.csv with
  ``contended_nodes``, through ``orchestrator.simulate.run_policy`` (the code behind
  ``orchestrator simulate``), timed per policy (wall seconds, and the CPU seconds the process got:
  on a shared VM the difference is time spent waiting for a core); ``--runs N`` repeats each and
  reports the median.
  The policy figures (average, p50/p95/p99 JCT, queueing, utilisation, preemptions) come from the
  last run, as a Markdown table beside the reference figures of that folder's README.
* Scheduling pass: 5,000 nodes x 8 GPUs, all but 100 GPUs busy with running jobs, and 1,000 jobs
  queued (1 to 64 GPUs); the time of ``Scheduler.schedule`` on that state, median of ``--passes``.
* CPU check: ``sum(range(10**7))`` timed in the same run (about 0.2 s on an idle modern core), so
  readers can scale the figures when the machine is shared or throttled.

* ``--evaluate OUT.pickle [--settings ...] [--labels ...]`` then ``--report A.pickle,B.pickle``:
  the default policy's leave-one-VC-out evaluation (``bench/policy_eval.py``): every policy's
  avg JCT, p95, preemptions per job and ratios to SRTF and FIFO, per VC and overall, in four
  settings (contended and full nodes, 1.5x and 2x arrival rate).

Skips (exit 0, with a message) when ../shared/traces/philly is missing; ``--skip-replay`` times
the pass only.

    .venv/bin/python bench/scheduler.py --runs 1 --passes 20 [--policy fifo,sjf,srtf,las]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.scheduler import ClusterState, GangRequest, ManualClock, Scheduler
from orchestrator.scheduler.cluster import cluster_from_data
from orchestrator.simulate import load, run_policy, summarize

REPO = Path(__file__).resolve().parents[1]
PHILLY = REPO.parent / "shared" / "traces" / "philly"
REFERENCE = {  # ../shared/traces/philly/README.md: avg JCT, avg queueing (s)
    "fifo": (30_278, 19_472),
    "sjf": (14_229, 3_424),
    "srtf": (12_787, 1_980),
}


def cpu_check() -> float:
    """Seconds for sum(range(10**7)): ~0.2 s on an idle core; more means a slow or shared CPU."""
    started = time.perf_counter()
    sum(range(10**7))
    return time.perf_counter() - started


def cpu_seconds_so_far() -> float:
    """CPU seconds of this process and of its reaped children (the replay's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def replay_times(policies: list[str], runs: int, processes: int) -> dict[str, dict[str, Any]]:
    trace, vcs = PHILLY / "dev.csv", PHILLY / "vc_config.csv"
    partitions = load(str(trace), str(vcs), contended=True)
    print(f"  replaying {len(partitions)} partitions in {processes} process(es)", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    for policy in policies:
        seconds, cpu_seconds = [], []
        for _ in range(runs):
            cpu_started = cpu_seconds_so_far()
            replays, took = run_policy(partitions, policy, processes=processes)
            cpu_seconds.append(cpu_seconds_so_far() - cpu_started)
            seconds.append(took)
        figures = summarize(policy, replays, statistics.median(seconds)).to_json()
        results[policy] = {
            **figures,
            "replay_runs_s": [round(s, 1) for s in seconds],
            "processes": processes,
            # CPU seconds the replay got (all its processes): on a shared VM wall time also counts
            # the time it waited for a core
            "replay_cpu_s": round(statistics.median(cpu_seconds), 1),
            "replay_runs_cpu_s": [round(s, 1) for s in cpu_seconds],
        }
        print(f"  {policy}: {json.dumps(results[policy])}", file=sys.stderr, flush=True)
    return results


def pass_state(nodes: int = 5_000, queued: int = 1_000, seed: int = 0) -> tuple[Scheduler, ClusterState]:
    """A big cluster nearly full of running 8-GPU jobs, with ``queued`` jobs waiting."""
    rng = random.Random(seed)
    cluster = cluster_from_data(
        {
            "name": "big",
            "pools": [
                {
                    "name": "h100",
                    "accelerator": "nvidia-h100-80gb",
                    "nodes": nodes,
                    "accelerators_per_node": 8,
                }
            ],
        }
    )
    clock = ManualClock(0.0)
    scheduler = Scheduler(cluster, "las", clock)
    state = ClusterState(cluster)
    free_target = 100
    for i in range(nodes - free_target // 8):
        state.submit(f"run-{i}", GangRequest(workers=8, accelerators_per_worker=1.0), 0.0)
    state.apply(scheduler.schedule(state).decisions, 0.0)  # place them in one pass (untimed)
    clock.set(300.0)  # 2,400 GPU-seconds each: still in las' first band, so nothing preempts them
    sizes = [1, 1, 1, 2, 4, 8, 8, 16, 32, 64]
    for i in range(queued):
        gpus = rng.choice(sizes)
        state.submit(f"q-{i}", GangRequest(workers=gpus, accelerators_per_worker=1.0), 300.0)
    return scheduler, state


def pass_times(passes: int) -> dict[str, float | int]:
    scheduler, state = pass_state()
    running, waiting = len(state.running), len(state.pending)
    scheduler.schedule(state)  # warm the caches a long-lived scheduler would have
    out: dict[str, float | int] = {"nodes": 5_000, "running": running, "queued": waiting, "passes": passes}
    # A normal pass stops once every pool is full and no victim exists; an explaining pass visits
    # all 1,000 queued jobs and words a reason for each: the worst case.
    for label, explain in (("", False), ("explain_", True)):
        times = []
        for _ in range(passes):
            started = time.perf_counter()
            result = scheduler.schedule(state, explain=explain)
            times.append(time.perf_counter() - started)
        out[f"{label}decisions"] = len(result.decisions)
        out[f"{label}waits"] = len(result.waits)
        out[f"{label}median_ms"] = round(statistics.median(times) * 1000, 1)
        out[f"{label}max_ms"] = round(max(times) * 1000, 1)
        # the fastest pass: what the pass costs when the shared VM is not taking the CPU away
        out[f"{label}min_ms"] = round(min(times) * 1000, 1)
    return out


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| policy | avg JCT (s) | p50 | p95 | p99 | avg queueing (s) | GPU util | preemptions | "
        "reference avg JCT / queueing | replay (s) | replay CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in results.items():
        ref = REFERENCE.get(policy)
        ref_text = f"{ref[0]:,} / {ref[1]:,}" if ref else "-"
        lines.append(
            f"| {policy} | {r['avg_jct_s']:,.0f} | {r['p50_jct_s']:,.0f} | {r['p95_jct_s']:,.0f} | "
            f"{r['p99_jct_s']:,.0f} | {r['avg_queue_s']:,.0f} | {r['utilization']:.1%} | "
            f"{r['preemptions']:,} | {ref_text} | {r['replay_s']:.1f} | {r['replay_cpu_s']:.1f} |"
        )
    return "\n".join(lines)


def evaluate(out_path: str, settings: list[str], labels: list[str]) -> int:
    """Replay the policies (``labels``: baselines and default-policy knob settings, all when empty)
    on each dev VC in each setting; the figures go to ``out_path`` (a pickle) for ``report``."""
    from bench import policy_eval

    everything: dict[str, Any] = {name: name for name in policy_eval.BASELINES} | dict(policy_eval.CANDIDATES)
    policies = {label: everything[label] for label in labels} if labels else everything
    before = round(cpu_check(), 2)
    results, jcts = policy_eval.run_all(
        policies, settings, lambda text: print(f"  {text}", file=sys.stderr, flush=True)
    )
    after = round(cpu_check(), 2)
    with open(out_path, "wb") as handle:
        pickle.dump((results, jcts, (before, after)), handle)
    print(f"cpu check {before} s before, {after} s after", file=sys.stderr)
    return 0


def report(paths: list[str], out_json: str | None) -> int:
    """Merge ``evaluate`` outputs and print the leave-one-VC-out report (Markdown)."""
    from bench import policy_eval

    results: dict[str, Any] = {}
    jcts: dict[str, Any] = {}
    checks = []
    for path in paths:
        with open(path, "rb") as handle:
            r, j, check = pickle.load(handle)
        for setting in r:
            results.setdefault(setting, {}).update(r[setting])
            jcts.setdefault(setting, {}).update(j[setting])
        checks.append(check)
    # labels no longer in the candidate list (renamed or dropped) are left out of the report
    known = {*policy_eval.BASELINES, *policy_eval.CANDIDATES}
    for setting, by_policy in results.items():
        for label in [label for label in by_policy if label not in known]:
            print(f"left out (not a baseline or candidate now): {setting} {label}", file=sys.stderr)
            del by_policy[label]
    ordered = {s: results[s] for s in policy_eval.SETTINGS if s in results}
    text, chosen = policy_eval.report(ordered, jcts)
    print(text)
    print(f"\ncpu checks (before, after) per run: {checks}; knobs chosen per held-out VC: {chosen}")
    if out_json:
        data = {
            "chosen": chosen,
            "results": {
                s: {
                    p: {
                        vc: {**vars(c), "preemptions_per_job": c.preemptions_per_job}
                        for vc, c in cells.items()
                    }
                    for p, cells in by.items()
                }
                for s, by in ordered.items()
            },
        }
        Path(out_json).write_text(json.dumps(data, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="fifo,sjf,srtf,las", help="comma-separated policies to replay")
    parser.add_argument("--runs", type=int, default=1, help="replays per policy (median reported)")
    parser.add_argument("--passes", type=int, default=20, help="timed scheduling passes (median reported)")
    parser.add_argument(
        "--processes", type=int, default=1, help="replay worker processes (as the CLI's --processes)"
    )
    parser.add_argument("--skip-replay", action="store_true", help="time the scheduling pass only")
    parser.add_argument(
        "--evaluate",
        metavar="OUT.pickle",
        help="replay policies per dev VC for the leave-one-VC-out evaluation (bench/policy_eval.py)",
    )
    parser.add_argument(
        "--settings", default="", help="with --evaluate: comma-separated settings (default all)"
    )
    parser.add_argument(
        "--labels", default="", help="with --evaluate: ';'-separated policy labels (default all)"
    )
    parser.add_argument(
        "--report",
        metavar="A.pickle,B.pickle",
        help="merge --evaluate outputs and print the leave-one-VC-out report",
    )
    parser.add_argument("--json", metavar="OUT.json", help="with --report: every figure as JSON")
    args = parser.parse_args()
    if args.evaluate:
        from bench.policy_eval import SETTINGS

        settings = [s for s in args.settings.split(",") if s] or list(SETTINGS)
        return evaluate(args.evaluate, settings, [x for x in args.labels.split(";") if x])
    if args.report:
        return report(args.report.split(","), args.json)
    out: dict[str, object] = {"cpu_check_s_before": round(cpu_check(), 2)}
    out["pass"] = pass_times(args.passes)
    print(f"  scheduling pass: {out['pass']}", file=sys.stderr)
    if not args.skip_replay:
        if not (PHILLY / "dev.csv").is_file() or not (PHILLY / "vc_config.csv").is_file():
            print(f"skipping the trace replay: {PHILLY} (dev.csv, vc_config.csv) is missing", file=sys.stderr)
        else:
            results = replay_times(
                [p.strip() for p in args.policy.split(",") if p.strip()], args.runs, args.processes
            )
            out["replay"] = results
            print(markdown(results))
    out["cpu_check_s_after"] = round(cpu_check(), 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
