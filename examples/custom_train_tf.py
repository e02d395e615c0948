"""A tensorflow training function for `entrypoint: examples/custom_train_tf.py:train`.

orchestrator calls ``train(config)`` on every worker of a `framework: tensorflow` job, after it
built the worker's MultiWorkerMirroredStrategy (one per process). Build the model and optimizer
under ``tfm.strategy().scope()``; ``strategy.run`` then all-reduces the gradients across workers.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from orchestrator import api
from orchestrator.api import tensorflow as tfm


def train(config: dict) -> None:
    data = api.get_data()  # cleaned, split and preprocessed by the driver
    world = api.world_size()
    hidden = int(config["params"].get("hidden", 64))
    strategy = tfm.strategy()
    keras.utils.set_random_seed(config["training"]["seed"])  # the same initial weights on every worker
    with strategy.scope():
        model = keras.Sequential([keras.layers.Flatten(input_shape=data.sample_shape),
                                  keras.layers.Dense(hidden, activation="relu"),
                                  keras.layers.Dense(data.num_classes)])
        optimizer = keras.optimizers.SGD(config["training"]["learning_rate"], momentum=0.9)
        opt_vars = tfm.optimizer_variables(optimizer, model.trainable_variables)
    point = tfm.restore_checkpoint(model.weights, opt_vars)  # epoch 1, step 0 on a fresh start
    step = point.global_step
    per_worker = config["training"]["batch_size"] // world

    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                                               from_logits=True))
            scaled = loss / world  # the all-reduce sums: the mean over workers
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return strategy.experimental_local_results(strategy.run(replica_step, args=(x, y)))[0]

    for epoch in range(point.start_epoch, config["training"]["epochs"] + 1):
        indices = api.shard(epoch)  # this worker's part of the training split
        total = 0.0
        for start in range(0, len(indices), per_worker):
            batch = indices[start : start + per_worker]
            total += float(train_step(tf.constant(data.x_train[batch]), tf.constant(data.y_train[batch]))) * len(batch)
            step += 1
        val_loss, val_accuracy = tfm.evaluate_split(model, data.x_val, data.y_val)
        tfm.save_checkpoint(model.weights, opt_vars, epoch=epoch, step=step)
        api.report(epoch=epoch, train_loss=total / len(indices), val_loss=val_loss, val_accuracy=val_accuracy)
        if api.should_stop():  # orchestrator cancel / Ctrl-C: checkpoint written, stop now
            return
    print(f"done after {step} steps")  # worker output lands in `orchestrator logs JOB`
    tfm.export_model(model)
