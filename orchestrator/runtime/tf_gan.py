"""The adversarial loop of the built-in ``gan`` model in tensorflow, under MultiWorkerMirroredStrategy.

The step is the torch loop's (:mod:`orchestrator.runtime.gan_loop`): the discriminator (its own
Adam) learns real (label 1 - smoothing) from generated samples (no gradient to the generator),
then the generator (its own Adam) learns to make the updated discriminator say real, from the same
generated batch. Each optimizer all-reduces its own network's gradients across the workers. After
every epoch rank 0 draws the fixed latent grid (PNG in ``samples/`` and a TensorBoard image); at
the end it reports ``confident_samples`` and ``confident_real`` and exports the generator
(``generator.keras`` and a SavedModel whose ``generate`` gives samples in the data's raw units).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from orchestrator.metrics import names
from orchestrator.runtime.images import GRID, QUALITY_SAMPLES, confident_share, emit_grid
from orchestrator.runtime.loop_common import check_gan_losses_finite, checkpoint_due, gan_epoch_metrics
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.tf_multiworker import (
    TFCollectives,
    checksum,
    local_predict,
    make_optimizer,
    optimizer_variables,
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
from orchestrator.spec.models import GANModel, JobSpec


def make_gan_step(strategy: tf.distribute.Strategy, generator: Any, discriminator: Any, g_opt: Any, d_opt: Any,
                  gan: GANModel, sample_shape: tuple[int, ...], world: int, noise: tf.random.Generator) -> Any:
    """One adversarial step on this worker's batch; returns its (generator, discriminator) mean losses.

    ``noise`` (created in the strategy's scope) draws the latent vectors: each replica its own stream,
    and its state is checkpointed, so a resumed run draws what the straight run would have."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits
    real_label = 1.0 - gan.label_smoothing

    def step_fn(real: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        n = tf.shape(real)[0]
        z = noise.normal([n, gan.latent])
        with tf.GradientTape() as g_tape:
            fake = generator(z, training=True)
        with tf.GradientTape() as d_tape:
            d_real = discriminator(real, training=True)
            d_fake = discriminator(tf.stop_gradient(fake), training=True)
            d_loss = tf.reduce_mean(bce(tf.fill(tf.shape(d_real), real_label), d_real)) + \
                tf.reduce_mean(bce(tf.zeros_like(d_fake), d_fake))
            d_scaled = d_loss / world  # summed over workers by the all-reduce: the mean of their means
        d_vars = discriminator.trainable_variables
        d_opt.apply_gradients(zip(d_tape.gradient(d_scaled, d_vars), d_vars, strict=True))
        with g_tape:  # the generator's tape again: the updated discriminator on the same samples
            d_out = discriminator(fake, training=True)
            g_loss = tf.reduce_mean(bce(tf.ones_like(d_out), d_out))
            g_scaled = g_loss / world
        g_vars = generator.trainable_variables
        g_opt.apply_gradients(zip(g_tape.gradient(g_scaled, g_vars), g_vars, strict=True))
        return g_loss, d_loss

    @tf.function(input_signature=[tf.TensorSpec([None, *sample_shape], tf.float32)])
    def gan_step(real: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        g_loss, d_loss = strategy.run(step_fn, args=(real,))
        local = strategy.experimental_local_results
        return local(g_loss)[0], local(d_loss)[0]

    return gan_step


def train_gan_tf(sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Train the spec's gan with tensorflow; returns the final metrics (empty if stopped early)."""
    import tf_keras as keras

    from orchestrator.models.keras_models import build_gan

    data = sess.data
    assert data is not None and isinstance(spec.model, GANModel)
    collectives = sess.collectives
    assert isinstance(collectives, TFCollectives)
    gan, rank, world = spec.model, sess.rank, sess.world_size
    keras.utils.set_random_seed(spec.training.seed)
    use_variable_rng()
    shape = tuple(data.sample_shape)
    with strategy.scope():
        generator, discriminator = build_gan(gan, shape)
        g_opt = make_optimizer(spec, gan.generator_learning_rate, beta1=gan.beta1)
        d_opt = make_optimizer(spec, gan.discriminator_learning_rate, beta1=gan.beta1)
        opt_vars = optimizer_variables(g_opt, generator.trainable_variables) + \
            optimizer_variables(d_opt, discriminator.trainable_variables)
        noise = tf.random.Generator.from_seed(spec.training.seed)
        rng_vars = [noise.state, *rng_variables(generator, discriminator)]
    model_vars = generator.weights + discriminator.weights
    point = restore_checkpoint(model_vars, opt_vars, rng_vars)
    sums_of = checksum(model_vars), checksum(opt_vars)
    if rank == 0:
        sess.model_built(parameters=int(generator.count_params() + discriminator.count_params()),
                         param_checksum=sums_of[0], optimizer_checksum=sums_of[1], device=worker_device(),
                         sync_backend=sync_backend_name(strategy))
    step = make_gan_step(strategy, generator, discriminator, g_opt, d_opt, gan, shape, world, noise)
    generate = local_predict(strategy, generator, (gan.latent,))  # this worker's replica, inference mode

    def sample(z: np.ndarray) -> np.ndarray:
        return generate(tf.constant(z)).numpy()  # type: ignore[no-any-return]

    fixed_z = np.random.default_rng(spec.training.seed).standard_normal((GRID * GRID, gan.latent)).astype(np.float32)
    bs = spec.per_worker_batch_size
    global_step, stopped, epoch, checkpoint_seconds = point.global_step, False, point.start_epoch, 0.0
    for epoch in range(point.start_epoch, spec.training.epochs + 1):
        idx = sess.shard(epoch)
        steps = max(1, len(idx) // bs + (1 if len(idx) % bs >= 2 else 0))  # no one-sample batch (batch norm)
        sess.epoch_started(epoch, global_step)
        sums = np.zeros(3)
        t0 = time.perf_counter()
        for i in range(steps):
            sel = idx[i * bs : (i + 1) * bs]
            g_loss, d_loss = step(tf.constant(data.x_train[sel], tf.float32))
            global_step += 1
            sums += (float(g_loss) * len(sel), float(d_loss) * len(sel), len(sel))
            sess.progress(epoch=epoch, step=i + 1, steps=steps, loss=float(g_loss), global_step=global_step)
        # as in torch: a stop asked for during an epoch is taken at its end, with a checkpoint
        seconds = time.perf_counter() - t0
        sess.record_shard(epoch, idx[: steps * bs])
        g_sum, d_sum, seen = collectives.sum(sums)
        check_gan_losses_finite(epoch, g_sum, d_sum)
        stop_now = sess.should_stop()
        if checkpoint_due(spec, epoch, stop_now):
            checkpoint_seconds = save_checkpoint(model_vars, opt_vars, epoch=epoch, step=global_step,
                                                 rng_vars=rng_vars)
        sync_moving_statistics(generator)  # the grid and the export use the ranks' mean statistics
        if rank == 0:
            emit_grid(sess, sample(fixed_z), epoch)
        sess.report(epoch=epoch, global_step=global_step, **gan_epoch_metrics(
            g_sum=g_sum, d_sum=d_sum, seen=seen, seconds=seconds, learning_rate=gan.generator_learning_rate,
            checkpoint_seconds=checkpoint_seconds))
        if stop_now:
            stopped = True
            break
    if stopped:
        sess.stopped(epoch, global_step)
        return {}
    weights = read_arrays(generator.weights)  # every rank (collective reads)
    all_weights = weights + read_arrays(discriminator.weights)
    final: dict[str, float] = {}
    if rank == 0:
        z = np.random.default_rng(spec.training.seed + 1).standard_normal((QUALITY_SAMPLES, gan.latent))
        samples = sample(z.astype(np.float32))
        if data.task == "classification":
            share, real_share = confident_share(data.x_train, data.y_train, [samples, data.x_val])
            final[names.CONFIDENT_SAMPLES] = share
            final[names.CONFIDENT_REAL] = real_share
        export_gan_tf(plain_copy(lambda: build_gan(gan, shape)[0], weights), data, spec, sess.paths.model_dir)
        sess.finished(final, checksum(all_weights))
    return final


class _GeneratorToRaw(tf.Module):
    def __init__(self, generator: Any, shift: np.ndarray, scale: np.ndarray, latent: int) -> None:
        super().__init__()
        self.generator = generator
        self.shift = tf.constant(np.asarray(shift, np.float32))
        self.scale = tf.constant(np.asarray(scale, np.float32))
        self.generate = tf.function(lambda z: self.generator(z, training=False) * self.scale + self.shift,
                                    input_signature=[tf.TensorSpec([None, latent], tf.float32)])


def export_gan_tf(generator: Any, data: Any, spec: JobSpec, model_dir: Path) -> None:
    """``generator.keras`` and a SavedModel (``generate(z)``: samples in raw units), plus ``model.json``."""
    assert isinstance(spec.model, GANModel)
    model_dir.mkdir(parents=True, exist_ok=True)
    generator.save(model_dir / "generator.keras")
    pre = data.preprocessor
    tf.saved_model.save(_GeneratorToRaw(generator, pre.shift, pre.scale, spec.model.latent),
                        str(model_dir / "generator_saved_model"))
    meta = {"framework": "tensorflow", "model": spec.model.model_dump(mode="json"), "task": "generation",
            "sample_shape": list(data.sample_shape), "latent": spec.model.latent,
            "files": {"keras": "generator.keras", "saved_model": "generator_saved_model"}}
    (model_dir / "model.json").write_text(json.dumps(meta, indent=1))
