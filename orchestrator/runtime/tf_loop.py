"""The built-in training loop for tensorflow jobs (classification and regression), under MWMS.

The same epoch structure as the torch loop (:mod:`orchestrator.runtime.torch_loop`): this rank's
shard in a (seed, epoch)-determined order, synchronous steps (``strategy.run``; the optimizer
all-reduces the gradients across workers), a cross-rank evaluation, an epoch report with the same
metric names, checkpoints every ``checkpoint.every_epochs`` and ``every_steps`` (a mid-epoch one
carries the epoch's running sums), stop requests every few steps, failure injection per step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import tensorflow as tf

from orchestrator.runtime.augment_numpy import augment_batch, batch_rng
from orchestrator.runtime.loop_common import (
    STOP_CHECK_EVERY,
    EpochSums,
    checkpoint_due,
    epoch_metrics,
    step_checkpoint_due,
    test_metrics,
)
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.tf_multiworker import (
    TFCollectives,
    build_model,
    checksum,
    evaluate,
    export_keras_model,
    local_predict,
    make_optimizer,
    optimizer_variables,
    per_example_loss,
    plain_copy,
    read_arrays,
    restore_checkpoint,
    rng_variables,
    save_checkpoint,
    sync_backend_name,
    sync_moving_statistics,
    use_variable_rng,
    worker_device,
)
from orchestrator.spec.models import JobSpec


def make_train_step(strategy: tf.distribute.Strategy, model: Any, optimizer: Any, spec: JobSpec,
                    sample_shape: tuple[int, ...], y_dtype: tf.DType, world: int) -> Any:
    """One synchronous step on every worker's own batch; returns this worker's (loss sum, correct).

    Each worker's loss is its batch mean divided by the world size, so the summed (all-reduced)
    gradient is the mean over workers of their batch means: what DDP computes. With
    ``sync.compression: fp16`` the gradients are cast to float16 for the all-reduce.
    """
    fp16 = spec.sync.compression == "fp16"
    classify = not y_dtype.is_floating

    def step_fn(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            per_example = per_example_loss(y, out)
            loss = tf.reduce_mean(per_example) / world
            if model.losses:
                loss += tf.add_n(model.losses) / world
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        if fp16:
            ctx = tf.distribute.get_replica_context()
            packed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.cast(g, tf.float16) for g in grads])
            grads = [tf.cast(g, v.dtype) for g, v in zip(packed, variables, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True), skip_gradients_aggregation=True)
        else:
            optimizer.apply_gradients(zip(grads, variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, 1, output_type=y.dtype), y), tf.float32)) \
            if classify else tf.constant(0.0)
        return tf.reduce_sum(per_example), correct

    signature = [tf.TensorSpec([None, *sample_shape], tf.float32), tf.TensorSpec([None], y_dtype)]

    @tf.function(input_signature=signature)
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss_sum, correct = strategy.run(step_fn, args=(x, y))
        local = strategy.experimental_local_results
        return local(loss_sum)[0], local(correct)[0]

    return train_step


def train_builtin_tf(sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Train the spec's built-in model with tensorflow; returns the test metrics (empty if stopped)."""
    import tf_keras as keras

    if spec.model is not None and spec.model.type == "gan":
        from orchestrator.runtime.tf_gan import train_gan_tf

        return train_gan_tf(sess, spec, strategy)
    data = sess.data
    assert data is not None
    collectives = sess.collectives
    assert isinstance(collectives, TFCollectives)
    rank, world = sess.rank, sess.world_size
    keras.utils.set_random_seed(spec.training.seed)  # the same initial weights on every rank
    use_variable_rng()  # dropout's draws are checkpointed and restored
    with strategy.scope():
        model = build_model(spec, data)
        optimizer = make_optimizer(spec)
        opt_vars = optimizer_variables(optimizer, model.trainable_variables)
        rng_vars = rng_variables(model)
    point = restore_checkpoint(model.weights, opt_vars, rng_vars)
    sums_of = checksum(model.weights), checksum(opt_vars)  # reads are collectives: every rank
    if rank == 0:
        sess.model_built(parameters=int(model.count_params()), param_checksum=sums_of[0],
                         optimizer_checksum=sums_of[1], device=worker_device(), sync_backend=sync_backend_name(strategy))
    classify = data.task == "classification"
    y_dtype = tf.as_dtype(data.y_train.dtype)
    train_step = make_train_step(strategy, model, optimizer, spec, tuple(data.sample_shape), y_dtype, world)
    predict = local_predict(strategy, model, tuple(data.sample_shape))
    augment = spec.data.augment
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
        t0 = time.perf_counter()
        step = first
        for step in range(first, steps):
            sel = idx[step * bs : (step + 1) * bs]
            xb = data.x_train[sel]
            if augment.active:  # training split only; the same draws after a resume
                xb = augment_batch(xb, augment, batch_rng(spec.training.seed, epoch, rank, step))
            loss_sum, correct = train_step(tf.constant(xb, tf.float32), tf.constant(data.y_train[sel]))
            global_step += 1
            batch_loss = float(loss_sum) / max(len(sel), 1)
            sums.add(float(loss_sum), float(correct), len(sel))
            sess.progress(epoch=epoch, step=step + 1, steps=steps, loss=batch_loss, global_step=global_step)
            last_step = step + 1 == steps
            stop = (step + 1) % STOP_CHECK_EVERY == 0 and not last_step and sess.should_stop()
            if stop or step_checkpoint_due(spec, global_step, last_step):
                sums.seconds += time.perf_counter() - t0
                save_checkpoint(model.weights, opt_vars, epoch=epoch, step=global_step, step_in_epoch=step + 1,
                                extra=EpochSums.to_save(list(collectives.sum(np.array(sums.counts()))), sums.seconds),
                                rng_vars=rng_vars)
                t0 = time.perf_counter()
            if stop:
                stopped = True
                break
        sums.seconds += time.perf_counter() - t0
        sess.record_shard(epoch, idx[first * bs : min(step + 1, steps) * bs])
        if stopped:
            break
        t_loss, t_correct, t_seen = collectives.sum(np.array(sums.counts()))
        sync_moving_statistics(model)  # every rank scores the model that is saved (all-reduce)
        val_loss, val_acc = evaluate(predict, data.x_val, data.y_val, collectives)
        stop_now = sess.should_stop()
        if checkpoint_due(spec, epoch, stop_now):
            checkpoint_seconds = save_checkpoint(model.weights, opt_vars, epoch=epoch, step=global_step,
                                                 rng_vars=rng_vars)
        sess.report(epoch=epoch, global_step=global_step, **epoch_metrics(
            classify=classify, loss=t_loss, correct=t_correct, seen=t_seen, seconds=sums.seconds,
            val_loss=val_loss, val_accuracy=val_acc, checkpoint_seconds=checkpoint_seconds,
            learning_rate=float(keras.backend.get_value(optimizer.learning_rate))))
        if stop_now:
            stopped = True
            break

    if stopped:
        sess.stopped(epoch, global_step)
        return {}
    sync_moving_statistics(model)
    final = test_metrics(data, *evaluate(predict, data.x_test, data.y_test, collectives))
    weights = read_arrays(model.weights)  # every rank (collective reads)
    if rank == 0:
        export_keras_model(plain_copy(lambda: build_model(spec, data), weights), data, spec, sess.paths.model_dir)
        sess.finished(final, checksum(weights))
    return final
