"""The built-in supervised training loop for torch models (classification and regression).

Each epoch: this rank's shard in a (seed, epoch)-determined order, DDP steps, a cross-rank
evaluation on the validation split, an epoch report, and a checkpoint every
``checkpoint.every_epochs`` (plus every ``checkpoint.every_steps`` mid-epoch). A mid-epoch
checkpoint carries the epoch's running sums, so a restart finishes the epoch exactly as an
uninterrupted run would have.
"""

from __future__ import annotations

import math
import time

import torch

from orchestrator.runtime.augment import augment_batch, batch_generator
from orchestrator.runtime.loop_common import (
    STOP_CHECK_EVERY,
    EpochSums,
    checkpoint_due,
    epoch_metrics,
    step_checkpoint_due,
    test_metrics,
)
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.torch_ddp import (
    all_reduce_sum,
    build_model,
    evaluate,
    export_torch_model,
    make_optimizer,
    optimizer_checksum,
    param_checksum,
    restore_checkpoint,
    save_checkpoint,
    sync_backend_in_use,
    task_loss,
    wrap_ddp,
)
from orchestrator.spec.models import JobSpec


def train_builtin(sess: TrainSession, spec: JobSpec, dev: torch.device) -> dict[str, float]:
    """Train the spec's built-in model; returns the test metrics (empty if stopped early)."""
    if spec.model is not None and spec.model.type == "gan":  # an adversarial pair: its own loop
        from orchestrator.runtime.gan_loop import train_gan

        return train_gan(sess, spec, dev)
    data = sess.data
    assert data is not None
    rank, world = sess.rank, sess.world_size
    torch.manual_seed(spec.training.seed * 1000 + rank)
    model = build_model(spec, data).to(dev)
    optimizer = make_optimizer(spec, model.parameters())
    point = restore_checkpoint(model, optimizer)
    # The spec's optimizer settings win over the restored ones: equal when a job resumes, and a PBT
    # sweep trial that continues another trial's checkpoint trains with its own (perturbed) rate.
    for group in optimizer.param_groups:
        group["lr"] = spec.training.learning_rate
        group["weight_decay"] = spec.training.weight_decay
        if "momentum" in group:
            group["momentum"] = spec.training.momentum
    if rank == 0:
        sess.model_built(parameters=sum(p.numel() for p in model.parameters()),
                         param_checksum=param_checksum(model),
                         optimizer_checksum=optimizer_checksum(optimizer),
                         device=str(dev), sync_backend=sync_backend_in_use())

    net = wrap_ddp(model, spec, dev)
    augment = spec.data.augment
    classify = data.task == "classification"
    bs = spec.per_worker_batch_size
    epochs = spec.training.epochs
    global_step = point.global_step
    checkpoint_seconds = 0.0
    stopped = False
    epoch = point.start_epoch

    for epoch in range(point.start_epoch, epochs + 1):
        idx = sess.shard(epoch)
        steps = max(1, math.ceil(len(idx) / bs))
        first = point.step_in_epoch if epoch == point.start_epoch else 0
        sums = EpochSums.restored(point.extra, rank) if first else EpochSums()
        sess.epoch_started(epoch, global_step)
        net.train()
        t0 = time.perf_counter()
        for step in range(first, steps):
            sel = idx[step * bs : (step + 1) * bs]
            xb = torch.from_numpy(data.x_train[sel]).to(dev, non_blocking=True)
            yb = torch.from_numpy(data.y_train[sel]).to(dev, non_blocking=True)
            if augment.active:  # training split only; the same draws after a resume
                xb = augment_batch(xb, augment, batch_generator(spec.training.seed, epoch, rank, step))
            optimizer.zero_grad(set_to_none=True)
            out = net(xb)
            loss = task_loss(out, yb)
            loss.backward()
            optimizer.step()
            global_step += 1
            batch_loss = float(loss.detach())
            sums.add(batch_loss * len(sel), float((out.detach().argmax(1) == yb).sum()) if classify else 0.0, len(sel))
            sess.progress(epoch=epoch, step=step + 1, steps=steps, loss=batch_loss, global_step=global_step)
            last_step = step + 1 == steps
            stop = (step + 1) % STOP_CHECK_EVERY == 0 and not last_step and sess.should_stop()
            if stop or step_checkpoint_due(spec, global_step, last_step):
                sums.seconds += time.perf_counter() - t0
                save_checkpoint(model, optimizer, epoch=epoch, step=global_step, step_in_epoch=step + 1,
                                extra=EpochSums.to_save(all_reduce_sum(sums.counts(), dev), sums.seconds))
                t0 = time.perf_counter()
            if stop:
                stopped = True
                break
        sums.seconds += time.perf_counter() - t0
        sess.record_shard(epoch, idx[first * bs : min(step + 1, steps) * bs])  # what this attempt trained
        if stopped:
            break
        t_loss, t_correct, t_seen = all_reduce_sum(sums.counts(), dev)
        val_loss, val_acc = evaluate(net, data.x_val, data.y_val, rank, world, 512, dev)
        stop_now = sess.should_stop()
        if checkpoint_due(spec, epoch, stop_now):
            checkpoint_seconds = save_checkpoint(model, optimizer, epoch=epoch, step=global_step)
        sess.report(epoch=epoch, global_step=global_step, **epoch_metrics(
            classify=classify, loss=t_loss, correct=t_correct, seen=t_seen, seconds=sums.seconds,
            val_loss=val_loss, val_accuracy=val_acc, checkpoint_seconds=checkpoint_seconds,
            learning_rate=optimizer.param_groups[0].get("lr", spec.training.learning_rate)))
        if stop_now:
            stopped = True
            break

    if stopped:
        sess.stopped(epoch, global_step)
        return {}
    final = test_metrics(data, *evaluate(net, data.x_test, data.y_test, rank, world, 512, dev))
    if rank == 0:
        export_torch_model(model, data, spec, sess.paths.model_dir)
        sess.finished(final, param_checksum(model))
    return final
