"""The built-in training loop for tensorflow jobs (classification and regression), under MWMS.

The epoch loop is the torch one (:func:`orchestrator.runtime.epoch_loop.run_epochs`); this module
is its tensorflow side: :class:`TFState` saves, restores and all-reduces variables (the gan's loop
uses it too), and :class:`TFSupervised` runs synchronous steps (``strategy.run``; the optimizer
all-reduces the gradients across workers), a cross-rank evaluation and the export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from orchestrator.runtime.augment_numpy import augment_batch, batch_rng
from orchestrator.runtime.epoch_loop import EpochAdapter, ModelSummary, SupervisedAdapter, run_epochs
from orchestrator.runtime.loop_common import RestorePoint, test_metrics
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.tf_multiworker import (
    TFCollectives,
    build_model,
    checksum,
    evaluate,
    evaluate_batches,
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


class TFState:
    """Variables under a strategy as the epoch loop checkpoints, restores and summarises them.

    Reading them (checksums, checkpoints) is an all-reduce for on-read synchronised variables, so
    every rank calls each method."""

    def __init__(self, strategy: tf.distribute.Strategy, collectives: TFCollectives, parameters: int,
                 model_vars: list[Any], opt_vars: list[Any], rng_vars: list[Any]) -> None:
        self.strategy, self.collectives, self.parameters = strategy, collectives, parameters
        self.model_vars, self.opt_vars, self.rng_vars = model_vars, opt_vars, rng_vars

    def restore(self) -> RestorePoint:
        return restore_checkpoint(self.model_vars, self.opt_vars, self.rng_vars)

    def summary(self) -> ModelSummary:
        sums_of = checksum(self.model_vars), checksum(self.opt_vars)
        return ModelSummary(parameters=self.parameters, param_checksum=sums_of[0], optimizer_checksum=sums_of[1],
                            device=worker_device(), sync_backend=sync_backend_name(self.strategy))

    def all_reduce(self, counts: list[float]) -> list[float]:
        return list(self.collectives.sum(np.array(counts)))

    def save(self, *, epoch: int, step: int, step_in_epoch: int = 0, extra: dict[str, Any] | None = None) -> float:
        return save_checkpoint(self.model_vars, self.opt_vars, epoch=epoch, step=step, step_in_epoch=step_in_epoch,
                               extra=extra, rng_vars=self.rng_vars)


def tf_collectives(sess: TrainSession) -> TFCollectives:
    """The session's collectives, which a tensorflow worker made for its strategy."""
    collectives = sess.collectives
    assert isinstance(collectives, TFCollectives)
    return collectives


class TFSupervised(SupervisedAdapter):
    """A built-in Keras classifier or regressor under MultiWorkerMirroredStrategy."""

    def __init__(self, sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> None:
        import tf_keras as keras

        super().__init__(sess, spec)
        self.strategy = strategy
        keras.utils.set_random_seed(spec.training.seed)  # the same initial weights on every rank
        use_variable_rng()  # dropout's draws are checkpointed and restored
        with strategy.scope():
            self.model = build_model(spec, self.data)
            self.optimizer = make_optimizer(spec)
            opt_vars = optimizer_variables(self.optimizer, self.model.trainable_variables)
            rng_vars = rng_variables(self.model)
        self.state = TFState(strategy, tf_collectives(sess), int(self.model.count_params()), self.model.weights,
                             opt_vars, rng_vars)

    def prepare(self) -> None:
        data, shape = self.data, tuple(self.data.sample_shape)
        # a streamed batch's labels keep the files' dtype: the step casts them to the task's
        self.y_dtype = np.dtype(np.int64 if data.task == "classification" else np.float32)
        y_dtype = tf.as_dtype(self.y_dtype)
        self.train_step = make_train_step(self.strategy, self.model, self.optimizer, self.spec, shape, y_dtype,
                                          self.world)
        self.predict = local_predict(self.strategy, self.model, shape)

    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        xb, augment = self.data.x_train[sel], self.spec.data.augment
        if augment.active:  # training split only; the same draws after a resume
            xb = augment_batch(xb, augment, batch_rng(self.spec.training.seed, epoch, self.rank, step))
        yb = self.data.y_train[sel].astype(self.y_dtype, copy=False)
        loss_sum, correct = self.train_step(tf.constant(xb, tf.float32), tf.constant(yb))
        return float(loss_sum) / max(len(sel), 1), float(loss_sum), float(correct)

    def evaluate(self, epoch: int, totals: Sequence[float]) -> tuple[float, ...]:
        sync_moving_statistics(self.model)  # every rank scores the model that is saved (all-reduce)
        return self._evaluate("validation")

    def _evaluate(self, split: str) -> tuple[float, float]:
        data, collectives = self.data, tf_collectives(self.sess)
        if data.stream is not None:  # this rank's files of the split, streamed
            from orchestrator.runtime.datasets import SPLITS, eval_batches

            batches = eval_batches(data.stream, SPLITS[split], self.rank, self.world, 512)
            return evaluate_batches(self.predict, ((x, y.astype(self.y_dtype, copy=False)) for x, y in batches),
                                    collectives)
        x, y = (data.x_val, data.y_val) if split == "validation" else (data.x_test, data.y_test)
        return evaluate(self.predict, x, y, collectives)

    def learning_rate(self) -> float:
        import tf_keras as keras

        return float(keras.backend.get_value(self.optimizer.learning_rate))

    def finish(self) -> tuple[dict[str, float], str | None]:
        data, spec = self.data, self.spec
        sync_moving_statistics(self.model)
        final = test_metrics(data, *self._evaluate("test"))
        weights = read_arrays(self.model.weights)  # every rank (collective reads)
        if self.rank != 0:
            return final, None
        export_keras_model(plain_copy(lambda: build_model(spec, data), weights), data, spec, self.sess.paths.model_dir)
        return final, checksum(weights)


def tf_adapter(sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> EpochAdapter:
    """The adapter for the spec's built-in model: the gan's or the supervised one."""
    if spec.model is not None and spec.model.type == "gan":
        from orchestrator.runtime.tf_gan import TFGan

        return TFGan(sess, spec, strategy)
    return TFSupervised(sess, spec, strategy)


def train_builtin_tf(sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Train the spec's built-in model with tensorflow; returns the test metrics (empty if stopped)."""
    return run_epochs(sess, spec, tf_adapter(sess, spec, strategy))
