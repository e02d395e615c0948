"""The plain Ray Train baseline of bench/node_loss.py: the same digits CNN, data, batch and workers,
with nothing of the orchestrator's runtime (no session, no checkpoint manager, no event sink).

Ray Train does everything the orchestrator adds on top of it in run A: ``RunConfig(storage_path=...,
storage_filesystem=<pyarrow S3FileSystem>)`` on the same S3 server, ``FailureConfig(max_failures=3)``,
a checkpoint per epoch through ``ray.train.report(metrics, checkpoint=Checkpoint.from_directory(...))``
(rank 0 writes it; every rank reports, as Ray Train asks) and the restore through
``ray.train.get_checkpoint()`` on every rank. Only the model builder and the data preparation come
from the orchestrator (``build_cnn``, ``prepare_data``, ``shard_indices``), so both runs train the
very same network on the very same split.

For the measurement, workers append JSON lines to ``--events`` (a file on this machine, written
and flushed at once, never through Ray's log pipeline): each rank's ``attempt_start`` (after its
restore: restored epoch and step, its Ray node), rank 0's ``first_step`` of each worker group,
a ``step`` line per step and a ``checkpoint`` line once ``report`` returned with the epoch's
checkpoint persisted. Run as a Ray job entrypoint (bench/node_loss.py submits it); the driver
prints the result as one ``PLAIN_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

RESULT_MARK = "PLAIN_RESULT "


def write_event(path: str, **fields: Any) -> None:
    """One JSON line, appended and flushed at once (O_APPEND: lines of two ranks never interleave)."""
    line = json.dumps({"time": time.time(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from orchestrator.models.torch_models import build_cnn
    from orchestrator.runtime.data import eval_indices, prepare_data, shard_indices
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate(config["spec"])
    assert spec.model is not None and spec.model.type == "cnn"
    events = config["events"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = spec.training.seed

    data = prepare_data(spec.data, seed)
    torch.manual_seed(seed)
    model = build_cnn(spec.model, data.sample_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.training.learning_rate,
                                 weight_decay=spec.training.weight_decay)
    start_epoch, global_step, restored_epoch, restored_step = 1, 0, None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # every rank reads the same checkpoint from storage
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restored_epoch, restored_step = int(state["epoch"]), int(state["global_step"])
        start_epoch, global_step = restored_epoch + 1, restored_step
    write_event(events, type="attempt_start", rank=rank, restored_epoch=restored_epoch, restored_step=restored_step,
                node=ray.get_runtime_context().get_node_id(), pid=os.getpid())
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel over gloo (CPU)

    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    val = eval_indices(len(data.x_val), rank, world)
    x_val, y_val = torch.from_numpy(data.x_val[val]), torch.from_numpy(data.y_val[val])
    bs = spec.per_worker_batch_size
    first_step_logged = False
    for epoch in range(start_epoch, spec.training.epochs + 1):
        ddp.train()
        idx = shard_indices(len(x_train), rank, world, epoch, seed)
        steps = max(1, math.ceil(len(idx) / bs))
        t0 = time.perf_counter()
        loss_sum = correct = 0.0
        for step in range(steps):
            sel = torch.from_numpy(np.asarray(idx[step * bs:(step + 1) * bs]))
            optimizer.zero_grad(set_to_none=True)
            out = ddp(x_train[sel])
            loss = torch.nn.functional.cross_entropy(out, y_train[sel])
            loss.backward()
            optimizer.step()
            global_step += 1
            loss_sum += float(loss) * len(sel)
            correct += float((out.argmax(1) == y_train[sel]).sum())
            if rank == 0:
                if not first_step_logged:
                    write_event(events, type="first_step", epoch=epoch, global_step=global_step)
                    first_step_logged = True
                write_event(events, type="step", epoch=epoch, step=step + 1, steps=steps, global_step=global_step)
        train_seconds = time.perf_counter() - t0
        ddp.eval()
        with torch.no_grad():
            out = ddp(x_val)
            sums = torch.tensor([float(torch.nn.functional.cross_entropy(out, y_val, reduction="sum")),
                                 float((out.argmax(1) == y_val).sum()), float(len(y_val)),
                                 loss_sum, correct, float(len(idx))], dtype=torch.float64)
        dist.all_reduce(sums)
        metrics = {"epoch": epoch, "global_step": global_step, "val_loss": float(sums[0] / sums[2]),
                   "val_accuracy": float(sums[1] / sums[2]), "train_loss": float(sums[3] / sums[5]),
                   "train_accuracy": float(sums[4] / sums[5]), "epoch_seconds": train_seconds}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "global_step": global_step}, Path(tmp) / "state.pt")
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            write_event(events, type="checkpoint", epoch=epoch, global_step=global_step, steps=steps,
                        train_seconds=train_seconds, val_accuracy=metrics["val_accuracy"])
        else:
            ray.train.report(metrics)


def s3_filesystem(endpoint: str) -> Any:
    """A pyarrow S3FileSystem on an S3-compatible endpoint, credentials from the environment."""
    import pyarrow.fs as pafs

    parsed = urlparse(endpoint)
    return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http",
                             access_key=os.environ["AWS_ACCESS_KEY_ID"],
                             secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                             region=os.environ.get("AWS_REGION", "us-east-1"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="the job spec (JSON) whose model, data and training to use")
    parser.add_argument("--storage", required=True, help="bucket/prefix on the S3 server (Ray Train's storage_path)")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="the S3 endpoint URL")
    parser.add_argument("--events", required=True, help="the file the workers append their JSON lines to")
    parser.add_argument("--name", default="plain-node-loss")
    args = parser.parse_args(argv)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = json.loads(Path(args.spec).read_text())
    spec.pop("storage", None)  # Ray Train's own storage below is the only one
    resources = spec["resources"]
    ray.init(log_to_driver=False)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "events": args.events},
        scaling_config=ScalingConfig(num_workers=resources["workers"],
                                     resources_per_worker={"CPU": resources["cpus_per_worker"]},
                                     placement_strategy=resources.get("placement", "pack").upper()),
        run_config=RunConfig(
            name=args.name,
            storage_path=args.storage.removeprefix("s3://"),
            storage_filesystem=s3_filesystem(args.endpoint),
            failure_config=FailureConfig(max_failures=spec["failure"]["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=spec["checkpoint"]["keep"]),
        ),
    )
    started = time.time()
    out: dict[str, Any]
    try:
        result = trainer.fit()
        out = {"ok": result.error is None, "metrics": result.metrics,
               "error": None if result.error is None else str(result.error)[-2000:]}
    except Exception as exc:  # noqa: BLE001 - reported to the benchmark, which fails the run
        out = {"ok": False, "metrics": None, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
    out["seconds"] = time.time() - started
    sys.stdout.write(RESULT_MARK + json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
