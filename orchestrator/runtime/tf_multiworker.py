"""TensorFlow MultiWorkerMirroredStrategy helpers for training functions inside Ray Train workers.

Ray Train's ``TensorflowTrainer`` writes each worker's ``TF_CONFIG``; :func:`make_strategy` then
builds the strategy with the spec's sync settings (ring or NCCL all-reduce, pack size). Keras 2
comes from ``tf_keras`` (MultiWorkerMirroredStrategy fails in Keras 3, keras-team/keras#20585).

Our own loop drives the strategy (``strategy.run`` on this worker's shard, gradients all-reduced
by the optimizer), so a tensorflow job has the torch path's semantics: per-rank shards, mid-epoch
checkpoints and resume, stop requests, progress and failure injection per step. Checkpoints
hold the model's and optimizer's variables as arrays (``state.npz``) and are read back on every
rank; the torch and tensorflow checkpoints share the manager, its validation and retention.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is Keras 2 (tf_keras) for user code too

import hashlib
import json
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from orchestrator.errors import CheckpointError
from orchestrator.runtime import session as session_mod
from orchestrator.runtime.data import PreparedData, eval_indices
from orchestrator.runtime.loop_common import RestorePoint, write_model_json
from orchestrator.spec.models import JobSpec

# MWMS logs every all-reduce it sets up at INFO ("Collective all_reduce tensors: ..."): hundreds of
# lines in the job log that no user acts on
tf.get_logger().setLevel("WARNING")

STATE_FILE = "state.npz"
META_FILE = "state.json"


def make_strategy(spec: JobSpec, world_size: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy over the workers Ray Train started (the default strategy alone)."""
    if world_size <= 1 and "TF_CONFIG" not in os.environ:
        return tf.distribute.get_strategy()
    impl = tf.distribute.experimental.CommunicationImplementation
    choice = {"nccl": impl.NCCL, "gloo": impl.RING, "auto": impl.AUTO}[spec.sync.backend]
    options = tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(spec.sync.bucket_mb * 2**20), implementation=choice)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def worker_device() -> str:
    """Where this worker computes: its GPU when TensorFlow sees one, else the CPU."""
    return "gpu:0" if tf.config.list_logical_devices("GPU") else "cpu"


def sync_backend_name(strategy: tf.distribute.Strategy) -> str:
    """What carries the all-reduce: ``ring``/``nccl`` collectives across workers, or ``none``."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = strategy.extended._communication_options  # noqa: SLF001 - no public getter
        return "mwms-" + str(options.implementation.name).lower()
    return "none"


def strategy() -> tf.distribute.Strategy:
    """This worker's MultiWorkerMirroredStrategy (for user entrypoints of tensorflow jobs).

    TensorFlow allows one per process and the worker built it before the entrypoint ran: build
    the model and optimizer under ``strategy().scope()``.
    """
    collectives = session_mod.get_session().collectives
    if not isinstance(collectives, TFCollectives):
        raise RuntimeError("not a tensorflow job: its spec says framework: torch")
    return collectives.strategy


class TFCollectives:
    """Object and flag collectives over the strategy's all-reduce (sum of float tensors).

    TensorFlow has no object collectives: an object is pickled, its bytes placed in this rank's
    row of a (world, length) zero matrix, and the matrices summed across ranks.
    """

    def __init__(self, strategy: tf.distribute.Strategy, rank: int, world: int) -> None:
        self.strategy = strategy
        self.rank = rank
        self.world = world
        self.device = "cpu"

        # one traced all-reduce for every call: flat float vectors of any length (eager
        # strategy.run under MWMS is slow and warns on every call)
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def all_reduce_sum(flat: tf.Tensor) -> tf.Tensor:
            per = strategy.run(tf.identity, args=(flat,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

        self._all_reduce_sum = all_reduce_sum

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (every rank gets it)."""
        values = np.asarray(values)
        if self.world <= 1:
            return values.astype(np.float64)
        flat = tf.constant(values.astype(np.float32).reshape(-1))
        return self._all_reduce_sum(flat).numpy().astype(np.float64).reshape(values.shape)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world <= 1:
            return [obj]
        raw = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        lengths = np.zeros(self.world)
        lengths[self.rank] = len(raw)
        lengths = self.sum(lengths).astype(np.int64)
        rows = np.zeros((self.world, int(lengths.max())), dtype=np.float32)
        rows[self.rank, : len(raw)] = raw
        gathered = self.sum(rows).round().astype(np.uint8)
        return [pickle.loads(gathered[r, : lengths[r]].tobytes()) for r in range(self.world)]  # noqa: S301

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return self.all_gather_object(obj if self.rank == src else None)[src]

    def any_rank(self, flag: bool) -> bool:
        return bool(self.sum(np.array([1.0 if flag else 0.0]))[0] > 0)

    def barrier(self) -> None:
        self.sum(np.zeros(1))


def make_optimizer(spec: JobSpec, learning_rate: float | None = None, beta1: float | None = None) -> Any:
    """The spec's optimizer in Keras 2, with torch's defaults where Keras' differ (epsilon 1e-8,
    RMSprop's rho 0.99), so the two frameworks optimise alike. Keras decouples weight decay."""
    t = spec.training
    lr = t.learning_rate if learning_rate is None else learning_rate
    decay = t.weight_decay or None
    opt = keras.optimizers
    if beta1 is not None:
        return opt.Adam(lr, beta_1=beta1, epsilon=1e-8)
    if t.optimizer == "adam":
        return opt.Adam(lr, epsilon=1e-8, weight_decay=decay)
    if t.optimizer == "adamw":
        return opt.AdamW(lr, epsilon=1e-8, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return opt.SGD(lr, momentum=t.momentum, weight_decay=decay)
    return opt.RMSprop(lr, rho=0.99, momentum=t.momentum, epsilon=1e-8, weight_decay=decay)


def build_model(spec: JobSpec, data: PreparedData) -> keras.Model:
    from orchestrator.models.keras_models import build_cnn, build_rnn, build_sequential

    assert spec.model is not None
    outputs = data.num_classes if data.task == "classification" else 1
    builders = {"cnn": build_cnn, "rnn": build_rnn, "sequential": build_sequential}
    if spec.model.type not in builders:
        raise ValueError(f"model type {spec.model.type!r} has no Keras builder")
    return builders[spec.model.type](spec.model, data.sample_shape, outputs)  # type: ignore[arg-type,operator]


def per_example_loss(y: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
    """Cross-entropy on logits for class labels (integers), squared error for values (floats)."""
    if y.dtype.is_floating:
        return tf.square(tf.reshape(out, tf.shape(y)) - y)
    return keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)


def optimizer_variables(optimizer: Any, variables: list[tf.Variable]) -> list[tf.Variable]:
    """The optimizer's own variables (step count, moments, momentum), created now if need be.

    A Keras 2 optimizer makes its step counter at once but its slots (Adam's m and v, momentum)
    only on the first step; ``build`` makes them now (it does nothing once built), so checkpoints
    hold them and a restore can load them before training starts.
    """
    optimizer.build(variables)
    return list(optimizer.variables)


def sync_moving_statistics(model: Any) -> None:
    """Give every rank the mean of the ranks' batch-norm moving statistics (call on every rank).

    Keras keeps them per worker (on-read synchronised: each worker updates its own copy with its
    own batches; a cross-replica read averages). Evaluating with each worker's own copy would not
    score the model that is checkpointed and exported (the mean); torch's DDP broadcasts rank 0's
    buffers instead. Reading is an all-reduce, so every rank calls this at the same point.
    """
    for var in model.non_trainable_weights:
        if isinstance(var, tf.distribute.DistributedValues):
            var.assign(var.read_value())


def read_arrays(variables: list[Any]) -> list[np.ndarray]:
    """Variables' values as arrays (a collective for on-read synchronised ones: call on every rank)."""
    return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def checksum(variables: list[Any]) -> str:
    """A short hash of variables' values, to compare weights across processes and runs."""
    digest = hashlib.sha256()
    for i, a in enumerate(read_arrays(variables)):
        digest.update(f"{i}:{a.dtype}:{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def use_variable_rng() -> None:
    """Random layers built after this (dropout) draw from a ``tf.random.Generator`` whose state is a
    variable (:func:`rng_variables`): checkpoints save it and a resume restores it, so a resumed run
    draws exactly what the uninterrupted run would have. Under MultiWorkerMirroredStrategy the state
    is mirrored and each replica's stream is it hashed with the replica's id (TensorFlow's rule), so
    the ranks still draw differently."""
    keras.backend.experimental.enable_tf_random_generator()


def rng_variables(*models: Any) -> list[tf.Variable]:
    """The generator states of the models' random layers (built after :func:`use_variable_rng`;
    call it in the strategy's scope), in a fixed order."""
    out: list[tf.Variable] = []
    for model in models:
        for module in model.submodules:
            rng = getattr(module, "_random_generator", None)
            if rng is None or getattr(rng, "_rng_type", None) != "stateful":
                continue
            rng._maybe_init()  # tf_keras creates the generator on first use
            if rng._generator is not None:
                out.append(rng._generator.state)
    return out


def load_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A tensorflow checkpoint's metadata (JSON) and arrays (``.npz``), loaded without pickle.

    ``np.load(allow_pickle=False)`` refuses object arrays, the only way an ``.npz`` can hold code;
    such a file (or an unreadable one) raises a :class:`CheckpointError` that says which and why.
    """
    import zipfile

    from orchestrator.errors import CheckpointError

    path = checkpoint / STATE_FILE
    aside = f"move {checkpoint} aside to resume from an older checkpoint (or start afresh)"
    try:
        meta = json.loads((checkpoint / META_FILE).read_text())
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(
                f"{path}: refused to load this checkpoint: it holds Python object arrays, which loading "
                "would unpickle (and could run as code)",
                fix=f"orchestrator did not write this file (or it was altered): check who can write "
                f"{checkpoint.parent}; {aside}",
            ) from None
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})", fix=aside) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})", fix=aside) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{checkpoint / META_FILE}: not an orchestrator checkpoint (no JSON object)", fix=aside)
    return meta, arrays


def restore_checkpoint(model_vars: list[Any], opt_vars: list[Any], rng_vars: list[Any] | None = None) -> RestorePoint:
    """Start an attempt: wait the restart backoff, then load the newest valid checkpoint on every rank
    (with ``rng_vars``, :func:`rng_variables`, the random generators' states too)."""
    sess = session_mod.get_session()
    sess.begin_attempt()
    restored = sess.find_restore_point()
    point = RestorePoint()
    if restored is not None:
        meta, arrays = load_state(restored.path)
        for prefix, variables in (("m", model_vars), ("o", opt_vars)):
            for i, var in enumerate(variables):
                var.assign(arrays[f"{prefix}{i}"])
        if rng_vars and sum(k.startswith("r") for k in arrays) == len(rng_vars):
            for i, var in enumerate(rng_vars):
                var.assign(arrays[f"r{i}"])
        point = RestorePoint.from_saved(meta)
    elif (source := sess.init_model_dir()) is not None:  # a new job fine-tuning another's weights
        load_initial_weights(model_vars, source)
    # ops that draw without a generator (and dropout, when the checkpoint has no generator state)
    seed = sess.spec.training.seed
    tf.random.set_seed(seed * 1000 + sess.rank + 7919 * (point.start_epoch - 1))
    sess.attempt_started()
    return point


def load_initial_weights(model_vars: list[Any], source: Path) -> None:
    """Assign another job's exported Keras model (``init_from``) to this model's variables, in
    order, each shape checked (a mismatch is a CheckpointError naming the first ones)."""
    path = source / "model.keras"
    if not path.is_file():
        raise CheckpointError(f"init_from: {source} has no model.keras (a tensorflow job's export)")
    weights = keras.models.load_model(path, compile=False).weights
    wrong = [f"{a.name} {tuple(a.shape)} vs {tuple(b.shape)}" for a, b in zip(weights, model_vars, strict=False)
             if tuple(a.shape) != tuple(b.shape)]
    if wrong or len(weights) != len(model_vars):
        raise CheckpointError(
            f"init_from: the saved model does not fit this job's model ({len(weights)} variables vs "
            f"{len(model_vars)}{'; shapes differ: ' + ', '.join(wrong[:5]) if wrong else ''})",
            fix="give the same model section (layers, units, kernel sizes) and data as the job it starts from",
        )
    for var, saved in zip(model_vars, weights, strict=True):
        var.assign(saved.numpy())


def save_checkpoint(model_vars: list[Any], opt_vars: list[Any], *, epoch: int, step: int,
                    step_in_epoch: int = 0, extra: dict[str, Any] | None = None,
                    rng_vars: list[Any] | None = None) -> float:
    """Every rank reads the variables, rank 0 writes them with the epoch and step; returns its seconds.

    Call it on every rank: reading a batch norm's moving statistics (on-read synchronised
    variables) is an all-reduce under MultiWorkerMirroredStrategy.
    """
    sess = session_mod.get_session()
    model_arrays, opt_arrays = read_arrays(model_vars), read_arrays(opt_vars)
    rng_arrays = read_arrays(rng_vars or [])
    if sess.rank != 0:
        sess.touch()
        return 0.0
    meta = {"epoch": epoch, "global_step": step, "step_in_epoch": step_in_epoch, "extra": extra or {},
            "world_size": sess.world_size, "framework": "tensorflow"}

    def write(directory: Path) -> None:
        arrays = {f"m{i}": a for i, a in enumerate(model_arrays)} | {f"o{i}": a for i, a in enumerate(opt_arrays)}
        arrays |= {f"r{i}": a for i, a in enumerate(rng_arrays)}
        with open(directory / STATE_FILE, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy stubs type the first keyword
        (directory / META_FILE).write_text(json.dumps(meta))

    return sess.save_checkpoint(write, epoch=epoch, step=step, meta={
        "framework": "tensorflow", "step_in_epoch": step_in_epoch, "param_checksum": checksum(model_arrays),
        "optimizer_checksum": checksum(opt_arrays)})


def local_predict(strategy: tf.distribute.Strategy, model: Any, sample_shape: tuple[int, ...]) -> Any:
    """Inference on this worker's replica only (no collective: ranks may run different batch counts)."""

    def replica(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, *sample_shape], tf.float32)])
    def predict(x: tf.Tensor) -> tf.Tensor:
        return strategy.experimental_local_results(strategy.run(replica, args=(x,)))[0]

    return predict


def evaluate(predict: Any, x: np.ndarray, y: np.ndarray, collectives: TFCollectives, batch: int = 512) -> tuple[float, float]:
    """Loss and accuracy over a whole split: each rank takes a slice, the sums are all-reduced."""
    idx = eval_indices(len(x), collectives.rank, collectives.world)
    return evaluate_batches(predict, ((x[idx[s : s + batch]], y[idx[s : s + batch]]) for s in range(0, len(idx), batch)),
                            collectives)


def evaluate_batches(predict: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                     collectives: TFCollectives) -> tuple[float, float]:
    """Loss and accuracy over this rank's ``batches`` (arrays) and every other rank's: sums all-reduced
    (ranks may hold different numbers of batches: ``predict`` runs on this worker's replica only)."""
    loss_sum = correct = seen = 0.0
    for xs, ys in batches:
        session_mod.touch_if_active()
        yb = tf.constant(ys)
        out = predict(tf.constant(xs, tf.float32))
        loss_sum += float(tf.reduce_sum(per_example_loss(yb, out)))
        seen += len(xs)
        if not yb.dtype.is_floating:
            correct += float(np.sum(np.argmax(out.numpy(), axis=1) == ys))
    total_loss, total_correct, count = collectives.sum(np.array([loss_sum, correct, seen]))
    return total_loss / max(count, 1), total_correct / max(count, 1)


class _WithPreprocessing(tf.Module):
    """The exported SavedModel: raw inputs in (as the data file's ``x``), the model's outputs out."""

    def __init__(self, model: keras.Model, pre: Any, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.shift = tf.constant(np.asarray(pre.shift, dtype=np.float32))
        self.scale = tf.constant(np.asarray(pre.scale, dtype=np.float32))
        self.clip = pre.clip_low is not None and pre.clip_high is not None
        self.low = tf.constant(np.asarray(pre.clip_low if self.clip else pre.shift, dtype=np.float32))
        self.high = tf.constant(np.asarray(pre.clip_high if self.clip else pre.shift, dtype=np.float32))
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, *sample_shape], tf.float32)])

    def _serve(self, x: tf.Tensor) -> tf.Tensor:
        if self.clip:
            x = tf.clip_by_value(x, self.low, self.high)
        return self.model((x - self.shift) / self.scale, training=False)


def plain_copy(build: Any, weights: list[np.ndarray]) -> keras.Model:
    """A model outside any distribution strategy, with ``weights``: what is saved and exported."""
    with tf.distribute.get_strategy().scope():
        model = build()
    model.set_weights(weights)
    return model


def export_keras_model(model: keras.Model, data: PreparedData, spec: JobSpec, model_dir: Path) -> None:
    """Save ``model`` (a plain one: see :func:`plain_copy`) as ``model.keras`` and as a SavedModel
    that takes raw inputs (the training preprocessing inside), plus ``model.json``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "model.keras")
    tf.saved_model.save(_WithPreprocessing(model, data.preprocessor, tuple(data.sample_shape)),
                        str(model_dir / "saved_model"))
    write_model_json(model_dir, "tensorflow", spec, data, {"keras": "model.keras", "saved_model": "saved_model"})


# -- helpers for a tensorflow job's own training function (``entrypoint``) -----------------------

def evaluate_split(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = 512) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on a whole split, across all ranks (call it on every rank)."""
    collectives = session_mod.get_session().collectives
    if not isinstance(collectives, TFCollectives):
        raise RuntimeError("not a tensorflow job: its spec says framework: torch")
    predict = local_predict(collectives.strategy, model, tuple(x.shape[1:]))
    return evaluate(predict, x, y, collectives, batch)


def export_model(model: keras.Model) -> Path | None:
    """Save a user model as ``model.keras`` and a raw-input SavedModel (call it on every rank)."""
    sess = session_mod.get_session()
    weights = read_arrays(model.weights)  # a collective for batch norm statistics: every rank
    if sess.rank != 0 or sess.data is None:
        return None
    spec = sess.spec
    export_keras_model(plain_copy(lambda: keras.models.clone_model(model), weights), sess.data, spec,
                       sess.paths.model_dir)
    return sess.paths.model_dir / "model.keras"
