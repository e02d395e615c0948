"""The TensorFlow baseline: the same Keras CNN, data, shards, batch and epochs as jobs/cnn-tf.yaml,
in a bare MultiWorkerMirroredStrategy script (no Ray, no orchestrator runtime: only the spec
loader, the data preparation and the Keras model builder are ours).

    .venv/bin/python bench/tf_mwms_cnn.py jobs/cnn-tf.yaml [--workers 2]

Run like that, it is the launcher: it spawns ``--workers`` local processes of this script, each
with its own ``TF_CONFIG`` (127.0.0.1, free ports), ``TF_USE_LEGACY_KERAS=1`` and
``OMP_NUM_THREADS=1``, and waits for them. Rank 0 prints one JSON line: samples/s over all epochs
(the steps' time only, counted as the orchestrator's loop counts it: every rank's samples over
rank 0's step seconds), the final validation accuracy, seconds from ``BENCH_LAUNCHED_AT`` (else
process start) to the end of the first training step, and each worker's peak RSS in bytes.
"""

from __future__ import annotations

import time

START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(spec_path: str, workers: int) -> int:
    """Start ``workers`` ranks of this script and wait; a rank that fails stops the others."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    for rank in range(workers):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": rank}}),
            "TF_USE_LEGACY_KERAS": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.setdefault("BENCH_LAUNCHED_AT", str(START))
        procs.append(subprocess.Popen([sys.executable, __file__, spec_path, "--worker"], env=env, cwd=REPO))
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
            print(f"a worker failed (exit codes {[p.returncode for p in procs]})", file=sys.stderr)
            return 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def worker(spec_path: str) -> None:
    """One rank: train the spec's CNN under MultiWorkerMirroredStrategy on this rank's shards."""
    import resource

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.models.keras_models import build_cnn
    from orchestrator.runtime.data import eval_indices, prepare_data, shard_indices
    from orchestrator.spec import load_spec

    tf.get_logger().setLevel("WARNING")
    spec = load_spec(spec_path)
    # the same communication options as the orchestrator's make_strategy (CPU: ring all-reduce)
    impl = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(spec.sync.bucket_mb * 2**20),
        implementation={"nccl": impl.NCCL, "gloo": impl.RING, "auto": impl.AUTO}[spec.sync.backend],
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    rank, world = strategy.cluster_resolver.task_id, strategy.num_replicas_in_sync
    data = prepare_data(spec.data, spec.training.seed)
    assert spec.model is not None and spec.model.type == "cnn"
    keras.utils.set_random_seed(spec.training.seed)  # the same initial weights on every rank
    with strategy.scope():
        model = build_cnn(spec.model, data.sample_shape, data.num_classes)
        optimizer = keras.optimizers.Adam(spec.training.learning_rate, epsilon=1e-8)
    shape = tuple(data.sample_shape)
    signature = [tf.TensorSpec([None, *shape], tf.float32), tf.TensorSpec([None], tf.int64)]

    def step_fn(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            # each rank's batch mean over the world size: the summed gradient is DDP's mean
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)) / world
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    @tf.function(input_signature=signature)
    def train_step(x: tf.Tensor, y: tf.Tensor) -> None:
        strategy.run(step_fn, args=(x, y))

    @tf.function(input_signature=signature)
    def count_correct(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        def replica(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            pred = tf.argmax(model(x, training=False), 1, output_type=tf.int64)
            return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32))

        return strategy.experimental_local_results(strategy.run(replica, args=(x, y)))[0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def all_reduce_sum(values: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    bs = spec.training.batch_size // world
    first_step: float | None = None
    samples = train_time = 0.0
    totals = np.zeros(2)
    for epoch in range(1, spec.training.epochs + 1):
        idx = shard_indices(len(data.x_train), rank, world, epoch, spec.training.seed)
        t0 = time.perf_counter()
        for start in range(0, len(idx), bs):
            sel = idx[start : start + bs]
            train_step(tf.constant(data.x_train[sel], tf.float32), tf.constant(data.y_train[sel], tf.int64))
            if first_step is None:
                first_step = time.time()
        train_time += time.perf_counter() - t0
        samples += len(idx) * world
        vi = eval_indices(len(data.x_val), rank, world)
        correct = float(count_correct(tf.constant(data.x_val[vi], tf.float32), tf.constant(data.y_val[vi], tf.int64)))
        totals = all_reduce_sum(tf.constant([correct, float(len(vi))], tf.float32)).numpy()
    # peak RSS in KiB (exact in float32 below 16 GiB), each rank in its own slot
    rss_kib = np.zeros(world, dtype=np.float32)
    rss_kib[rank] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peaks = all_reduce_sum(tf.constant(rss_kib)).numpy()
    if rank == 0:
        launched = float(os.environ.get("BENCH_LAUNCHED_AT", START))
        result: dict[str, Any] = {
            "samples_per_second": samples / train_time,
            "val_accuracy": float(totals[0] / totals[1]),
            "time_to_first_step_s": (first_step or START) - launched,
            "worker_peak_rss_bytes": [int(k) * 1024 for k in peaks],
            "peak_worker_rss_bytes": int(max(peaks)) * 1024,
        }
        print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the job spec, e.g. jobs/cnn-tf.yaml")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (launcher only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a rank, started by the launcher
    args = parser.parse_args()
    if args.worker:
        worker(args.spec)
    else:
        raise SystemExit(launch(args.spec, args.workers))


if __name__ == "__main__":
    main()
