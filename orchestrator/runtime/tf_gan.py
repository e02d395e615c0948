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
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from orchestrator.runtime.epoch_loop import GanAdapter
from orchestrator.runtime.images import GRID, QUALITY_SAMPLES, confident_metrics, emit_grid
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.tf_loop import TFState, tf_collectives
from orchestrator.runtime.tf_multiworker import (
    checksum,
    local_predict,
    make_optimizer,
    optimizer_variables,
    plain_copy,
    read_arrays,
    rng_variables,
    sync_moving_statistics,
    use_variable_rng,
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


class TFGan(GanAdapter):
    """The built-in gan under MultiWorkerMirroredStrategy; a step is :func:`make_gan_step`'s."""

    def __init__(self, sess: TrainSession, spec: JobSpec, strategy: tf.distribute.Strategy) -> None:
        import tf_keras as keras

        from orchestrator.models.keras_models import build_gan

        super().__init__(sess, spec)
        gan, self.strategy = self.gan, strategy
        keras.utils.set_random_seed(spec.training.seed)
        use_variable_rng()
        self.shape = tuple(self.data.sample_shape)
        with strategy.scope():
            self.generator, self.discriminator = build_gan(gan, self.shape)
            self.g_opt = make_optimizer(spec, gan.generator_learning_rate, beta1=gan.beta1)
            self.d_opt = make_optimizer(spec, gan.discriminator_learning_rate, beta1=gan.beta1)
            opt_vars = optimizer_variables(self.g_opt, self.generator.trainable_variables) + \
                optimizer_variables(self.d_opt, self.discriminator.trainable_variables)
            self.noise = tf.random.Generator.from_seed(spec.training.seed)
            rng_vars = [self.noise.state, *rng_variables(self.generator, self.discriminator)]
        parameters = int(self.generator.count_params() + self.discriminator.count_params())
        self.state = TFState(strategy, tf_collectives(sess), parameters,
                             self.generator.weights + self.discriminator.weights, opt_vars, rng_vars)

    def prepare(self) -> None:
        gan = self.gan
        self.gan_step = make_gan_step(self.strategy, self.generator, self.discriminator, self.g_opt, self.d_opt,
                                      gan, self.shape, self.world, self.noise)
        self.generate = local_predict(self.strategy, self.generator, (gan.latent,))  # this replica, inference
        self.fixed_z = np.random.default_rng(self.spec.training.seed).standard_normal(
            (GRID * GRID, gan.latent)).astype(np.float32)

    def sample(self, z: np.ndarray) -> np.ndarray:
        """The generator's samples for latent vectors ``z`` (this worker's replica, inference mode)."""
        return self.generate(tf.constant(z)).numpy()  # type: ignore[no-any-return]

    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        g_loss, d_loss = self.gan_step(tf.constant(self.data.x_train[sel], tf.float32))
        return float(g_loss), float(g_loss) * len(sel), float(d_loss) * len(sel)

    def after_checkpoint(self, epoch: int) -> None:
        sync_moving_statistics(self.generator)  # the grid and the export use the ranks' mean statistics
        if self.rank == 0:
            emit_grid(self.sess, self.sample(self.fixed_z), epoch)

    def finish(self) -> tuple[dict[str, float], str | None]:
        from orchestrator.models.keras_models import build_gan

        gan, data = self.gan, self.data
        weights = read_arrays(self.generator.weights)  # every rank (collective reads)
        all_weights = weights + read_arrays(self.discriminator.weights)
        final: dict[str, float] = {}
        if self.rank != 0:
            return final, None
        z = np.random.default_rng(self.spec.training.seed + 1).standard_normal((QUALITY_SAMPLES, gan.latent))
        samples = self.sample(z.astype(np.float32))
        if data.task == "classification":
            final.update(confident_metrics(data, samples))
        export_gan_tf(plain_copy(lambda: build_gan(gan, self.shape)[0], weights), data, self.spec,
                      self.sess.paths.model_dir)
        return final, checksum(all_weights)


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
