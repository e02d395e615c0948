"""Checkpoint save and restore time: local disk vs an S3-compatible server (moto, its own process).

Two models: the digits CNN of jobs/cnn.yaml (built by orchestrator.models, Adam state included, as
a job checkpoints it) and a stack of Linear layers with about 100 MB of weights (plain SGD: no
optimizer state, so the checkpoint is the weights). Each run saves one checkpoint and restores it
through the managers the runtime uses, with ``torch.save``/``torch.load`` of the same state dict:

* save: ``manager.save(write)``: serialise, checksum, (upload, manifest last), prune;
* restore, another node: S3 with an empty node-local cache (``fetch``: download, verify, load);
  local: ``fetch`` verifies the files in place and loads them (a shared volume reads the same way);
* restore, same node: S3 with the writer's own cache (verify the cached copy, no download, load).

Local and S3 runs alternate (their order flips each run); medians of ``--runs`` runs, with the
machine check ``sum(range(10**7))`` timed before and after. Results: bench/results/checkpoint_storage.*

    .venv/bin/python bench/checkpoint_storage.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import machine_check  # noqa: E402

RESULTS = REPO / "bench" / "results"


def models(big_mb: float) -> dict[str, tuple[Any, Any]]:
    """name -> (model, optimizer), each optimizer stepped once so its state is what a job saves."""
    import torch

    from orchestrator.models.torch_models import build_cnn
    from orchestrator.spec.loader import load_spec

    spec = load_spec(REPO / "jobs" / "cnn.yaml")
    assert spec.model is not None and spec.model.type == "cnn"
    torch.manual_seed(0)
    cnn = build_cnn(spec.model, (1, 8, 8), 10)  # the digits: 8x8 grey images, 10 classes
    cnn_opt = torch.optim.Adam(cnn.parameters(), lr=spec.training.learning_rate)
    torch.nn.functional.cross_entropy(cnn(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    cnn_opt.step()

    width = 2048
    layers = max(1, round(big_mb * 1e6 / (4 * (width * width + width))))
    big = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    big_opt = torch.optim.SGD(big.parameters(), lr=0.01)
    return {"digits CNN (jobs/cnn.yaml)": (cnn, cnn_opt), f"Linear stack {layers}x{width}x{width}": (big, big_opt)}


def writer(model: Any, opt: Any, step: int) -> Callable[[Path], None]:
    import torch

    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "global_step": step}

    def write(directory: Path) -> None:
        with (directory / "state.pt").open("wb") as fh:  # as torch_ddp.save_checkpoint writes it
            torch.save(state, fh)

    return write


def one_run(kind: str, model: Any, opt: Any, step: int, where: Path, bucket: str | None) -> dict[str, float]:
    import torch

    from orchestrator.runtime.checkpoints import CheckpointManager, StorageCheckpointManager
    from orchestrator.runtime.torch_ddp import load_state
    from orchestrator.storage import Storage

    out: dict[str, float] = {}
    name = f"ckpt-{step:010d}"

    def restore(mgr: Any) -> float:
        start = time.perf_counter()
        info = mgr.fetch(name)
        state = load_state(info.path / "state.pt")
        model.load_state_dict(state["model"])
        return time.perf_counter() - start

    if kind == "local":
        mgr: Any = CheckpointManager(where / "local-ckpts", keep=2, owner="bench")
        start = time.perf_counter()
        info = mgr.save(writer(model, opt, step), step=step, epoch=1)
        out["save"] = time.perf_counter() - start
        out["bytes"] = sum(e["bytes"] for e in info.manifest["files"].values())
        out["restore_other_node"] = restore(CheckpointManager(where / "local-ckpts"))
        out["restore_same_node"] = out["restore_other_node"]
    else:
        assert bucket is not None
        storage = Storage.open(f"{bucket}/{where.name}/checkpoints")  # a folder per model
        mgr = StorageCheckpointManager(storage, keep=2, owner="bench", cache=where / "cache-writer")
        start = time.perf_counter()
        info = mgr.save(writer(model, opt, step), step=step, epoch=1)
        out["save"] = time.perf_counter() - start
        out["bytes"] = sum(e["bytes"] for e in info.manifest["files"].values())
        cold = where / f"cache-node-{step}"
        out["restore_other_node"] = restore(StorageCheckpointManager(storage, cache=cold))
        shutil.rmtree(cold)
        out["restore_same_node"] = restore(StorageCheckpointManager(storage, cache=where / "cache-writer"))
    torch.manual_seed(step)  # nothing carries over between runs but the files
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mb", type=float, default=100.0, help="weights of the large model (MB)")
    args = parser.parse_args()
    import torch

    from orchestrator.testing.s3 import patched_environ, start_moto_process

    torch.set_num_threads(1)
    before = machine_check()
    server = start_moto_process()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        with patched_environ(server.env), tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
            bucket = server.create_bucket("bench")
            for label, (model, opt) in models(args.big_mb).items():
                per: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
                where = Path(tmp) / label.split()[0].lower()
                where.mkdir()
                for i in range(args.runs):
                    order = ("local", "s3") if i % 2 == 0 else ("s3", "local")
                    for kind in order:
                        r = one_run(kind, model, opt, 10 * (i + 1), where, bucket if kind == "s3" else None)
                        per[kind].append(r)
                        print(f"{label:<32} run {i + 1} {kind:<5} save {r['save']:.3f}s  "
                              f"restore(other node) {r['restore_other_node']:.3f}s  "
                              f"restore(same node) {r['restore_same_node']:.3f}s", flush=True)
                results[label] = per
    finally:
        server.stop()
    after = machine_check()

    lines = [
        f"Checkpoint save and restore, medians of {args.runs} alternating runs "
        f"({platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 torch thread); "
        f"S3 = moto_server (its own process, 127.0.0.1). Machine check sum(range(10**7)): "
        f"{before:.3f} s before, {after:.3f} s after.",
        "",
        "| model | checkpoint | storage | save (s) | restore, another node (s) | restore, same node (s) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, per in results.items():
        for kind in ("local", "s3"):
            runs = per[kind]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            size = f"{med['bytes'] / 1e6:.1f} MB" if med["bytes"] >= 1e5 else f"{med['bytes'] / 1e3:.0f} kB"
            other = "local disk" if kind == "local" else "S3 (moto)"
            lines.append(f"| {label} | {size} | {other} | {med['save']:.3f} | {med['restore_other_node']:.3f} | "
                         f"{med['restore_same_node']:.3f} |")
        s3 = {k: statistics.median(r[k] for r in per["s3"]) for k in ("save", "restore_other_node")}
        local = {k: statistics.median(r[k] for r in per["local"]) for k in ("save", "restore_other_node")}
        lines.append(f"| {label} | | S3 / local | {s3['save'] / local['save']:.1f}x | "
                     f"{s3['restore_other_node'] / local['restore_other_node']:.1f}x | |")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint_storage.md").write_text(table + "\n")
    (RESULTS / "checkpoint_storage.json").write_text(json.dumps(
        {"runs": args.runs, "machine_check_s": [before, after], "python": sys.version, "results": results},
        indent=1))


if __name__ == "__main__":
    main()
