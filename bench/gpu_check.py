"""The GPU path, checked on a machine with an NVIDIA GPU: nccl, `use_gpu`, fp16 compression.

Runs `orchestrator submit` (embedded Ray, Ray Train's TorchTrainer) on the GPU and prints one
JSON object per check, then a summary line. Each check asserts what it is about:

* ``nccl-1gpu``: 1 worker x 1 GPU, ``sync.backend: nccl``: the job succeeds, trains on
  ``cuda:0`` with gradients over nccl, and reaches the spec's accuracy.
* ``shared-gpu-auto``: 2 workers x 0.5 GPU, ``sync.backend: auto``: both ranks on one GPU, so
  auto must pick gloo (NCCL refuses two ranks on one device); the job succeeds on ``cuda:0``.
* ``shared-gpu-fp16``: the same with ``sync.compression: fp16``: DDP's fp16 compression hook on
  CUDA gradients (one worker trains without DDP, so compression needs two).
* ``nccl-2gpu-fp16`` (with 2+ GPUs only): 2 workers x 1 GPU, auto (nccl), fp16 compression.
* ``nccl-duplicate-gpu``: the premise of the rule above, checked with torch alone: two
  processes on one GPU try an nccl all-reduce (expected to fail; its error is recorded).
* ``cpu-baseline``: the same spec on CPU (2 workers, gloo) for the samples/s comparison.

    PYTHONPATH=. python3 bench/gpu_check.py [--epochs 10] [--spec jobs/cnn.yaml]

It needs a GPU; on a machine without one it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import submit_json  # noqa: E402
from orchestrator.execution.ray_startup import free_port  # noqa: E402

DUPLICATE_GPU_PROBE = r"""
import os, sys, torch, torch.distributed as dist
rank = int(sys.argv[1])
dist.init_process_group("nccl", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
torch.cuda.set_device(0)
t = torch.ones(4, device="cuda:0")
dist.all_reduce(t)
torch.cuda.synchronize()
print("REDUCED", t.tolist())
dist.destroy_process_group()
"""


def submit(spec: str, sets: list[str], home: Path, timeout: float) -> dict[str, object]:
    args = [arg for s in sets for arg in ("--set", s)]
    try:
        proc, out, wall = submit_json(spec, home, *args, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    if out is None:
        return {"ok": False, "exit": proc.returncode, "error": (proc.stderr or proc.stdout)[-2500:]}
    metrics = out.get("metrics") or {}
    return {
        "exit": proc.returncode,
        "state": out.get("state"),
        "device": out.get("device"),
        "sync_backend": out.get("sync_backend"),
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "samples_per_second": metrics.get("samples_per_second"),
        "time_to_first_step_s": out.get("time_to_first_step_s"),
        "wall_s": round(wall, 1),
        "message": out.get("message"),
    }


def duplicate_gpu_probe(timeout: float) -> dict[str, object]:
    port = str(free_port())
    env = {**os.environ, "NCCL_DEBUG": "WARN"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DUPLICATE_GPU_PROBE, str(r), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = []
    for p in procs:
        try:
            outs.append((p.wait(timeout=timeout), p.stdout.read() if p.stdout else ""))
        except subprocess.TimeoutExpired:
            p.kill()
            outs.append((None, "timed out"))
    reduced = all(code == 0 and "REDUCED" in text for code, text in outs)
    errors = [
        line
        for _, text in outs
        for line in text.splitlines()
        if "Duplicate GPU" in line or "ncclInvalidUsage" in line or "Error" in line
    ][:4]
    return {"nccl_two_ranks_one_gpu_succeeded": reduced, "exits": [c for c, _ in outs], "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="jobs/cnn.yaml")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per submit")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU visible to torch; run it on a machine with an NVIDIA GPU", file=sys.stderr
        )
        return 2
    env_info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(json.dumps({"check": "environment", **env_info}), flush=True)
    skip = set(filter(None, args.skip.split(",")))
    epochs = f"training.epochs={args.epochs}"
    checks: list[tuple[str, list[str], dict[str, object]]] = [
        (
            "nccl-1gpu",
            [
                epochs,
                "resources.workers=1",
                "resources.gpus_per_worker=1",
                "resources.cpus_per_worker=2",
                "sync.backend=nccl",
            ],
            {"device": "cuda:0", "sync_backend": "nccl"},
        ),  # Ray Train sets up the group for 1 too
        (
            "shared-gpu-auto",
            [epochs, "resources.workers=2", "resources.gpus_per_worker=0.5", "resources.cpus_per_worker=2"],
            {"device": "cuda:0", "sync_backend": "gloo"},
        ),
        # DDP (and so its fp16 compression hook) needs 2+ workers: on one GPU they share it, over gloo
        (
            "shared-gpu-fp16",
            [
                epochs,
                "resources.workers=2",
                "resources.gpus_per_worker=0.5",
                "resources.cpus_per_worker=2",
                "sync.compression=fp16",
            ],
            {"device": "cuda:0", "sync_backend": "gloo"},
        ),
        *(
            [
                (
                    "nccl-2gpu-fp16",
                    [
                        epochs,
                        "resources.workers=2",
                        "resources.gpus_per_worker=1",
                        "resources.cpus_per_worker=2",
                        "sync.compression=fp16",
                    ],
                    {"device": "cuda:0", "sync_backend": "nccl"},
                )
            ]
            if torch.cuda.device_count() >= 2
            else []
        ),
        (
            "cpu-baseline",
            [epochs, "resources.workers=2", "resources.cpus_per_worker=2"],
            {"device": "cpu", "sync_backend": "gloo"},
        ),
    ]
    failures = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, sets, expect in checks:
            if name in skip:
                continue
            result = submit(args.spec, sets, Path(tmp) / name, args.timeout)
            problems = [
                f"{k}={result.get(k)!r}, expected {v!r}" for k, v in expect.items() if result.get(k) != v
            ]
            if result.get("state") != "succeeded":
                problems.append(f"state={result.get('state')!r}")
            if not isinstance(result.get("val_accuracy"), float) or result["val_accuracy"] < 0.95:
                problems.append(f"val_accuracy={result.get('val_accuracy')!r} < 0.95")
            result.update(check=name, sets=sets, ok=not problems, problems=problems)
            failures += [name] if problems else []
            print(json.dumps(result), flush=True)
    if "nccl-duplicate-gpu" not in skip:
        probe = duplicate_gpu_probe(timeout=120)
        print(json.dumps({"check": "nccl-duplicate-gpu", **probe}), flush=True)
    print(json.dumps({"check": "summary", "failed": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
