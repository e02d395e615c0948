"""A user training function for `entrypoint: examples/custom_train.py:train`.

orchestrator calls ``train(config)`` on every worker with the resolved job spec as a dict.
The helpers do the distributed parts: this worker's data shard, DDP wrapping, checkpoints that
survive restarts and resume exactly, metrics that reach the terminal, TensorBoard and the job
store.
"""

from __future__ import annotations

import torch
from torch import nn

from orchestrator import api
from orchestrator.api import torch as helpers


def train(config: dict) -> None:
    data = api.get_data()  # cleaned, split and preprocessed by the driver
    hidden = int(config["params"].get("hidden", 64))
    features = 1
    for dim in data.sample_shape:
        features *= dim
    torch.manual_seed(config["training"]["seed"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, data.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["training"]["learning_rate"], momentum=0.9)
    point = helpers.restore_checkpoint(model, optimizer)  # epoch 1, step 0 on a fresh start
    step = point.global_step
    net = helpers.prepare_model(model)  # DDP with the spec's bucket size and compression
    per_worker = config["training"]["batch_size"] // api.world_size()

    for epoch in range(point.start_epoch, config["training"]["epochs"] + 1):
        net.train()
        indices = api.shard(epoch)  # this worker's part of the training split
        total = 0.0
        for start in range(0, len(indices), per_worker):
            batch = indices[start : start + per_worker]
            x = torch.from_numpy(data.x_train[batch])
            y = torch.from_numpy(data.y_train[batch])
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(batch)
            step += 1
        val_loss, val_accuracy = helpers.evaluate_split(net, data.x_val, data.y_val)
        helpers.save_checkpoint(model, optimizer, epoch=epoch, step=step)
        api.report(epoch=epoch, train_loss=total / len(indices), val_loss=val_loss, val_accuracy=val_accuracy)
        if api.should_stop():  # orchestrator cancel / Ctrl-C: checkpoint written, stop now
            return
    print(f"done after {step} steps")  # worker output lands in `orchestrator logs JOB`
    helpers.export_model(model)
