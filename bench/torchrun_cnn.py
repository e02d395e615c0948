"""The baseline: the same CNN, data, shards, batch and epochs as jobs/cnn.yaml, in a bare
`torchrun --nproc_per_node 2` DDP script (no Ray, no orchestrator runtime).

Prints one JSON line (rank 0): samples/s over all epochs (training time only, like the
orchestrator's figure), final validation accuracy, and seconds from process start to the first
training step.
"""

from __future__ import annotations

import json
import os
import sys
import time

START = time.time()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from orchestrator.models.torch_models import build_cnn  # noqa: E402
from orchestrator.runtime.data import eval_indices, prepare_data, shard_indices  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402


def main(spec_path: str) -> None:
    spec = load_spec(spec_path)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = prepare_data(spec.data, spec.training.seed)
    torch.manual_seed(spec.training.seed * 1000 + rank)
    assert spec.model is not None and spec.model.type == "cnn"
    model = build_cnn(spec.model, data.sample_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.training.learning_rate)
    net = DistributedDataParallel(model, bucket_cap_mb=spec.sync.bucket_mb)
    bs = spec.training.batch_size // world
    first_step = None
    samples = 0.0
    train_time = 0.0
    for epoch in range(1, spec.training.epochs + 1):
        idx = shard_indices(len(data.x_train), rank, world, epoch, spec.training.seed)
        net.train()
        t0 = time.perf_counter()
        for start in range(0, len(idx), bs):
            sel = idx[start : start + bs]
            xb, yb = torch.from_numpy(data.x_train[sel]), torch.from_numpy(data.y_train[sel])
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()
            if first_step is None:
                first_step = time.time()
        train_time += time.perf_counter() - t0
        samples += len(idx) * world
        net.eval()
        vi = eval_indices(len(data.x_val), rank, world)
        with torch.no_grad():
            correct = (
                net(torch.from_numpy(data.x_val[vi])).argmax(1) == torch.from_numpy(data.y_val[vi])
            ).sum()
        totals = torch.tensor([float(correct), float(len(vi))])
        dist.all_reduce(totals)
    if rank == 0:
        print(
            json.dumps(
                {
                    "samples_per_second": samples / train_time,
                    "val_accuracy": float(totals[0] / totals[1]),
                    "time_to_first_step_s": (first_step or START)
                    - float(os.environ.get("BENCH_LAUNCHED_AT", START)),
                }
            )
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
