"""Recovery after SIGKILL of one of 2 workers: orchestrator vs plain Ray Train, same sitting.

Both train the same CNN on the same data, shards and batch, checkpoint every 5 steps, and
SIGKILL rank 1 right after the checkpoint of step 30 has been written (at step 31), once.

* orchestrator: `orchestrator submit` with `--inject-failure kind=sigkill,rank=1,at_step=31`,
  `failure.max_failures: 1`, `failure.backoff_s: 0` (no deliberate wait, to compare like with
  like); recovery time and lost steps come from the job's `attempts`.
* plain Ray Train: a TorchTrainer with `FailureConfig(max_failures=1)` that reports a
  `ray.train.Checkpoint` every 5 steps and restores from `ray.train.get_checkpoint()` (Ray's own
  checkpoint registry); the worker writes the kill time and the first step after the restore.

Recovery time = failure (kill) to the first training step after the restore; lost steps = the
step at the kill minus the restored step. Both run on one `ray start --head` cluster.

    .venv/bin/python bench/recovery.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.submit import submit_json  # noqa: E402

EVERY, KILL_AT = 5, 31


def spec_dict(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
        "resources": {"workers": 2, "cpus_per_worker": 0.5},
        "training": {"epochs": 3, "batch_size": 64, "learning_rate": 0.002, "seed": 5},
        "checkpoint": {"every_epochs": 1, "every_steps": EVERY, "keep": 3},
        "failure": {"max_failures": 1, "backoff_s": 0},
    }


def run_orchestrator(tmp: Path, address: str) -> dict[str, float]:
    import yaml

    spec = tmp / "bench-recovery.yaml"
    spec.write_text(yaml.safe_dump(spec_dict("bench-recovery")))
    proc, result, _ = submit_json(
        spec, tmp / "home", "--inject-failure", f"kind=sigkill,rank=1,at_step={KILL_AT}", ray_address=address
    )
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"orchestrator run failed:\n{proc.stderr[-3000:]}")
    second = result["attempts"][1]
    return {
        "recovery_s": second["recovery_seconds"],
        "lost_steps": second["lost_steps"],
        "restored_step": second["restored_step"],
        "val_accuracy": result["metrics"]["val_accuracy"],
    }


def plain_ray_train_loop(config: dict[str, Any]) -> None:
    """The baseline worker: Ray Train's own checkpoint registry, no orchestrator runtime."""
    import tempfile as tf

    import ray.train
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from orchestrator.models.torch_models import build_cnn
    from orchestrator.runtime.data import shard_indices
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate(config["spec"])
    data = ray.get(config["data"])
    marks = Path(config["marks"])
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    torch.manual_seed(spec.training.seed * 1000 + rank)
    model = build_cnn(spec.model, data.sample_shape, data.num_classes)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=spec.training.learning_rate)
    step, epoch0, in_epoch = 0, 1, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, epoch0, in_epoch = state["step"], state["epoch"], state["in_epoch"]
        (marks / f"restored-{rank}").write_text(str(step))
    net = DistributedDataParallel(model)
    bs = spec.per_worker_batch_size
    first = True
    for epoch in range(epoch0, spec.training.epochs + 1):
        idx = shard_indices(len(data.x_train), rank, world, epoch, spec.training.seed)
        start = in_epoch if epoch == epoch0 else 0
        for s in range(start, (len(idx) + bs - 1) // bs):
            sel = idx[s * bs : (s + 1) * bs]
            opt.zero_grad()
            nn.functional.cross_entropy(
                net(torch.from_numpy(data.x_train[sel])), torch.from_numpy(data.y_train[sel])
            ).backward()
            opt.step()
            step += 1
            if first and ckpt and rank == 0:
                (marks / "first-step-after-restore").write_text(str(time.time()))
            first = False
            if step % EVERY == 0:
                with tf.TemporaryDirectory() as d:
                    checkpoint = None
                    if rank == 0:
                        torch.save(
                            {
                                "model": model.state_dict(),
                                "optimizer": opt.state_dict(),
                                "step": step,
                                "epoch": epoch,
                                "in_epoch": s + 1,
                            },
                            Path(d) / "state.pt",
                        )
                        checkpoint = ray.train.Checkpoint.from_directory(d)
                    ray.train.report({"step": step}, checkpoint=checkpoint)
            if rank == 1 and step == KILL_AT and not (marks / "killed").exists():
                (marks / "killed").write_text(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)


def run_plain_ray_train(tmp: Path, address: str) -> dict[str, float]:
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from bench.recovery import plain_ray_train_loop, spec_dict
from orchestrator.runtime.data import prepare_data
from orchestrator.spec.models import JobSpec
from orchestrator.backends.ray_local import use_local_auth_token
use_local_auth_token()  # `ray start` turned on token auth; an explicit address needs the token
ray.init(address={address!r}, log_to_driver=False)
spec = JobSpec.model_validate(spec_dict("plain"))
trainer = TorchTrainer(
    plain_ray_train_loop,
    train_loop_config={{"spec": spec.model_dump(mode="json"), "data": ray.put(prepare_data(spec.data, 5)),
                       "marks": {str(tmp / "marks")!r}}},
    scaling_config=ScalingConfig(num_workers=2, resources_per_worker={{"CPU": 0.5}}),
    run_config=RunConfig(storage_path={str(tmp / "ray")!r}, name="plain",
                         failure_config=FailureConfig(max_failures=1)),
)
trainer.fit()
"""
    (tmp / "marks").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"plain Ray Train run failed:\n{proc.stderr[-3000:]}")
    marks = tmp / "marks"
    killed = float((marks / "killed").read_text())
    first = float((marks / "first-step-after-restore").read_text())
    restored = int((marks / "restored-0").read_text())
    return {"recovery_s": first - killed, "lost_steps": KILL_AT - restored, "restored_step": restored}


def start_head() -> str:
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "stop", "--force"], capture_output=True, check=False)
    for _ in range(3):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.backends.ray_startup",
                "start",
                "--head",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return "127.0.0.1:6379"
        subprocess.run([ray, "stop", "--force"], capture_output=True, check=False)
    raise SystemExit(f"ray start failed:\n{proc.stderr[-2000:]}")


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians over the runs so far, per side, and the runs themselves."""
    summary: dict[str, Any] = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("recovery_s", "lost_steps", "restored_step")}
        for name, rs in runs.items()
        if rs
    }
    summary["runs"] = runs
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recovery.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    address = start_head()
    runs: dict[str, list[dict[str, float]]] = {"orchestrator": [], "ray_train": []}
    try:
        for i in range(args.runs):
            order = ("orchestrator", "ray_train") if i % 2 == 0 else ("ray_train", "orchestrator")
            for name in order:
                with tempfile.TemporaryDirectory() as tmp:
                    res = (run_orchestrator if name == "orchestrator" else run_plain_ray_train)(
                        Path(tmp), address
                    )
                runs[name].append(res)
                print(f"run {i + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
                # written after every run, so a run cut short by a lease still leaves its figures
                args.out.write_text(json.dumps(summarise(runs), indent=1))
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, check=False
        )
    summary = summarise(runs)
    print("| | recovery s (median) | lost steps (median) | restored step (median) |")
    print("|---|---|---|---|")
    for name in ("orchestrator", "ray_train"):
        s = summary[name]
        print(f"| {name} | {s['recovery_s']:.2f} | {s['lost_steps']:.0f} | {s['restored_step']:.0f} |")
    print(f"\nSIGKILL of rank 1 at step {KILL_AT}, checkpoints every {EVERY} steps, {args.runs} runs each")


if __name__ == "__main__":
    main()
