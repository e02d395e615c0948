"""`orchestrator submit SPEC --output json --quiet` in a subprocess: what the benchmarks run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Every process a benchmark starts caches its bytecode, as on a user's machine. A shell with
# PYTHONDONTWRITEBYTECODE set (this kind of sandbox sets it) makes each new process compile every
# module it imports again: several seconds of each start-up (torch._dynamo alone, imported by
# every torch optimizer, compiled in 4 s), which no user pays.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def submit_json(
    spec: str | Path,
    home: Path,
    *args: str,
    ray_address: str | None = None,
    timeout: float | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None, float]:
    """Run one submit with its own job store; returns (process, its JSON result or None, wall s).

    Without ``ray_address`` the job starts its own embedded Ray (``RAY_ADDRESS`` is dropped).
    ``subprocess.TimeoutExpired`` propagates when ``timeout`` passes.
    """
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home)}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    else:
        env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--output", "json", "--quiet", *args]
    started = time.time()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=timeout
    )
    wall = time.time() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, (json.loads(lines[-1]) if lines else None), wall


def machine_check() -> float:
    """Seconds for ``sum(range(10**7))`` (DESIGN.md: timed before and after a benchmark)."""
    start = time.perf_counter()
    sum(range(10**7))
    return time.perf_counter() - start


def run_launched(cmd: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    """Run a bare baseline script whose rank 0 prints one JSON line; ``BENCH_LAUNCHED_AT`` tells it
    when it was launched (its time to first step counts from there). Its JSON plus ``wall_s``."""
    launched = time.time()
    env = {**os.environ, **env, "BENCH_LAUNCHED_AT": str(launched)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.time() - launched
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = wall
    return result
