"""The tensorflow runtime in one process (no Ray, world size 1): Keras 2 models of every built-in
type, the training loop, checkpoints and restore, the exported Keras file and SavedModel, predict."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="the tensorflow extra is not installed (pip install 'train-orchestrator[tensorflow]')")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from orchestrator.errors import CheckpointError  # noqa: E402
from orchestrator.events import Event  # noqa: E402
from orchestrator.runtime import session as session_mod  # noqa: E402
from orchestrator.runtime import tf_multiworker as tfm  # noqa: E402
from orchestrator.runtime.data import prepare_data  # noqa: E402
from orchestrator.runtime.session import JobPaths, TrainSession  # noqa: E402
from orchestrator.runtime.tf_loop import train_builtin_tf  # noqa: E402
from orchestrator.spec.models import JobSpec  # noqa: E402

KERAS_EXAMPLE = [
    "Dense(128, activation='relu', input_shape=(64,))",
    "BatchNormalization()",
    "Dropout(0.5)",
    "Dense(10, activation='softmax')",
]


class RecordingSession(TrainSession):
    """A session without a driver: keeps every event it would send."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(sink=None, **kwargs)
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Event, *, wait: bool = False) -> None:
        self.events.append(event.to_wire())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


_open: list[TrainSession] = []


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()
    session_mod.set_session(None)


class StoppingSession(RecordingSession):
    """Asked to stop (as by `orchestrator cancel`) once the loop has run ``stop_after`` steps."""

    def __init__(self, stop_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_after = stop_after
        self.global_step = 0

    def progress(self, *, epoch: int, step: int, steps: int, loss: float, global_step: int) -> None:
        self.global_step = global_step
        super().progress(epoch=epoch, step=step, steps=steps, loss=loss, global_step=global_step)

    def should_stop(self) -> bool:
        return self.global_step >= self.stop_after


def run(tmp_path: Path, spec: JobSpec, stop_after: int | None = None, paths: JobPaths | None = None,
        ) -> tuple[dict[str, float], RecordingSession, RecordingSession]:
    """Train ``spec`` in this process as a one-worker tensorflow job; (final metrics, session, session)."""
    strategy = tf.distribute.get_strategy()
    session_cls: Any = RecordingSession if stop_after is None else \
        (lambda **kw: StoppingSession(stop_after, **kw))
    sess = session_cls(
        spec=spec, rank=0, world_size=1,
        paths=paths or JobPaths(tmp_path, tmp_path / "checkpoints", tmp_path / "model"),
        data=prepare_data(spec.data, spec.training.seed),
        collectives=tfm.TFCollectives(strategy, 0, 1), keep_checkpoints=spec.checkpoint.keep,
    )
    _open.append(sess)
    session_mod.set_session(sess)
    return train_builtin_tf(sess, spec, strategy), sess, sess


def spec_of(model: dict[str, Any], **extra: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "tf", "framework": "tensorflow", "model": model, "resources": {"workers": 1}}
    for key, value in extra.items():
        base[key] = value
    return JobSpec.model_validate(base)


def test_a_keras_cnn_trains_checkpoints_and_exports_keras_and_savedmodel(tmp_path: Path) -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [16], "dense_units": [32]},
                   training={"epochs": 4, "batch_size": 64, "learning_rate": 0.005, "seed": 1})
    final, sink, sess = run(tmp_path, spec)
    epochs = sink.of("epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    # the same metric names as the torch loop
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate",
            "samples_per_second", "epoch_seconds", "checkpoint_seconds"} <= set(epochs[-1]["metrics"])
    assert epochs[-1]["metrics"]["val_accuracy"] >= 0.9 and final["test_accuracy"] >= 0.9
    assert epochs[-1]["metrics"]["train_loss"] < epochs[0]["metrics"]["train_loss"]
    assert [c.epoch for c in sess.checkpoints.list()] == [4, 3, 2]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["framework"] == "tensorflow" and meta["sample_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    # the Keras file reloads to the same predictions; the SavedModel takes raw inputs
    import tf_keras as keras
    from sklearn.datasets import load_digits

    raw = load_digits().images[:32, None].astype("float32")
    pre = sess.data.preprocessor  # type: ignore[union-attr]
    reloaded = keras.models.load_model(tmp_path / "model" / "model.keras")
    expected = reloaded(pre.apply(raw), training=False).numpy()
    loaded = tf.saved_model.load(str(tmp_path / "model" / "saved_model"))  # keep it: its function uses its variables
    served = loaded.serve(tf.constant(raw)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert sink.of("final")[0]["param_checksum"] == tfm.checksum(reloaded.weights)


def test_predict_on_the_savedmodel_equals_the_in_process_model(tmp_path: Path) -> None:
    from orchestrator.models.predict import predict

    spec = spec_of({"type": "cnn", "conv_filters": [8], "dense_units": [16]},
                   training={"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "seed": 2})
    run(tmp_path, spec)
    import tf_keras as keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = digits.images[:50, None].astype("float32")
    data = prepare_data(spec.data, spec.training.seed)
    logits = keras.models.load_model(tmp_path / "model" / "model.keras")(data.preprocessor.apply(raw)).numpy()
    out = predict(tmp_path / "model", raw)
    assert out["predictions"] == [int(v) for v in logits.argmax(1)]
    assert out["task"] == "classification" and len(out["probabilities"][0]) == 10


def test_restore_loads_weights_and_optimizer_and_continues_at_the_next_epoch(tmp_path: Path) -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [8], "dense_units": [16]},
                   training={"epochs": 3, "batch_size": 64, "seed": 3})
    _, sink, sess = run(tmp_path, spec)
    saved = json.loads((sess.checkpoints.list()[0].path / "meta.json").read_text()) \
        if (sess.checkpoints.list()[0].path / "meta.json").exists() else None
    data = sess.data
    assert data is not None
    with tf.distribute.get_strategy().scope():
        model = tfm.build_model(spec, data)
        opt = tfm.make_optimizer(spec)
        opt_vars = tfm.optimizer_variables(opt, model.trainable_variables)
    before = tfm.checksum(model.weights)
    point = tfm.restore_checkpoint(model.weights, opt_vars)
    assert (point.start_epoch, point.global_step) == (4, sink.of("epoch")[-1]["global_step"])
    assert tfm.checksum(model.weights) != before
    assert tfm.checksum(model.weights) == sink.of("final")[0]["param_checksum"]
    assert int(opt.iterations.numpy()) == point.global_step  # the optimizer's own step count came back
    # ...and its moments: Adam's m and v for every weight, the values the checkpoint holds
    assert len(opt_vars) == 1 + 2 * len(model.trainable_variables)
    newest = sess.checkpoints.list()[0]
    assert tfm.checksum(opt_vars) == newest.meta["optimizer_checksum"]
    assert any(float(np.abs(v.numpy()).sum()) > 0 for v in opt_vars[1:])
    assert saved is None or saved.get("framework") == "tensorflow"


def test_a_mid_epoch_checkpoint_resumes_inside_its_epoch(tmp_path: Path) -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [8], "dense_units": [16]},
                   training={"epochs": 1, "batch_size": 64, "seed": 4}, checkpoint={"every_steps": 7})
    _, sink, sess = run(tmp_path, spec)
    steps = sink.of("epoch")[0]["global_step"]
    mids = [c for c in sess.checkpoints.list() if c.step % 7 == 0 and c.step < steps]
    assert mids, "no mid-epoch checkpoint was written"
    # continue from the newest mid-epoch one: the run finishes epoch 1 with the same step count
    for c in sess.checkpoints.list():
        if c.step > mids[0].step:
            import shutil

            shutil.rmtree(c.path)
    final, sink2, _ = run(tmp_path, spec)
    starts = sink2.of("attempt_start")
    assert starts[0]["restored_step"] == mids[0].step
    assert sink2.of("epoch")[0]["global_step"] == steps and "test_accuracy" in final


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_keras_rnns_read_digit_rows(tmp_path: Path, cell: str) -> None:
    spec = spec_of({"type": "rnn", "cell": cell, "hidden": 48},
                   training={"epochs": 8 if cell != "simple" else 3, "batch_size": 32, "learning_rate": 0.005})
    final, sink, _ = run(tmp_path, spec)
    first, last = sink.of("epoch")[0]["metrics"], sink.of("epoch")[-1]["metrics"]
    assert last["train_loss"] < first["train_loss"]
    if cell != "simple":
        assert last["val_accuracy"] >= 0.90, last


def test_the_keras_example_trains_from_its_spec_in_tensorflow(tmp_path: Path) -> None:
    spec = spec_of({"type": "sequential", "layers": KERAS_EXAMPLE},
                   training={"epochs": 10, "batch_size": 32, "learning_rate": 0.002})
    final, sink, _ = run(tmp_path, spec)
    assert sink.of("model")[0]["parameters"] == 64 * 128 + 128 + 4 * 128 + 128 * 10 + 10  # Keras' count
    assert sink.of("epoch")[-1]["metrics"]["val_accuracy"] >= 0.93


def test_sine_forecasting_in_tensorflow_beats_the_last_value(tmp_path: Path) -> None:
    spec = spec_of({"type": "rnn", "cell": "gru", "hidden": 32},
                   data={"source": "sine"}, training={"epochs": 15, "batch_size": 32, "learning_rate": 0.005})
    final, sink, _ = run(tmp_path, spec)
    assert "val_accuracy" not in sink.of("epoch")[-1]["metrics"]
    assert final["val_baseline_mse"] >= 2 * sink.of("epoch")[-1]["metrics"]["val_loss"], final


def test_a_keras_cnn_still_learns_with_every_augmentation_on(tmp_path: Path) -> None:
    spec = spec_of({"type": "cnn", "conv_filters": [16, 32], "dense_units": [64]},
                   data={"augment": {"rotate": 10, "translate": 0.1, "scale": [0.9, 1.1], "crop": 1, "noise": 0.05}},
                   training={"epochs": 25, "batch_size": 64, "learning_rate": 0.003})
    final, _, _ = run(tmp_path, spec)
    # 25 epochs: at 15 the test accuracy over seeds 0-4 spans 0.89-0.95, too close to the bar
    assert final["test_accuracy"] >= 0.90


def test_object_collectives_of_one_rank_are_the_identity() -> None:
    c = tfm.TFCollectives(tf.distribute.get_strategy(), 0, 1)
    assert c.all_gather_object({"a": 1}) == [{"a": 1}] and c.broadcast_object([1, 2]) == [1, 2]
    assert c.any_rank(True) and not c.any_rank(False)
    np.testing.assert_array_equal(c.sum(np.array([1.0, 2.0])), [1.0, 2.0])


def test_the_keras_gan_trains_draws_its_grid_and_exports_a_raw_unit_generator(tmp_path: Path) -> None:
    spec = spec_of({"type": "gan", "latent": 16, "generator_units": [64, 128], "discriminator_units": [128, 64]},
                   data={"source": "digits", "preprocessing": "normalize", "validation_fraction": 0.05,
                         "test_fraction": 0.05},
                   training={"epochs": 30, "batch_size": 64, "seed": 0})
    final, sess, _ = run(tmp_path, spec)
    epochs = sess.of("epoch")
    assert len(epochs) == 30
    assert all(math.isfinite(e["metrics"]["generator_loss"]) and math.isfinite(e["metrics"]["discriminator_loss"])
               for e in epochs)
    assert final["confident_real"] >= 0.9 and 0.0 <= final["confident_samples"] <= 1.0
    assert final["confident_samples"] >= 0.3, final  # 30 small epochs: well above noise (about 0.1)
    images = sess.of("image")
    assert len(images) == 30 and images[0]["tag"] == "samples/grid"
    assert (tmp_path / "samples" / "epoch-0030.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = tf.saved_model.load(str(tmp_path / "model" / "generator_saved_model"))
    drawn = loaded.generate(tf.random.normal([64, 16])).numpy()
    assert drawn.shape == (64, 1, 8, 8) and drawn.min() >= -1e-4 and drawn.max() <= 16.0 + 1e-3  # raw digit units
    assert drawn.max() > 8.0  # ink, not a blank page
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["framework"] == "tensorflow" and meta["task"] == "generation"


def test_a_resumed_run_ends_with_the_weights_of_the_straight_run_dropout_draws_included(tmp_path: Path) -> None:
    """Dropout's generator state is checkpointed: 2 epochs + resume + 1 epoch, and a stop in the
    middle of epoch 2 + resume, both end with exactly the weights of 3 straight epochs."""
    spec = spec_of({"type": "cnn", "conv_filters": [8], "dense_units": [32], "dropout": 0.5},
                   training={"epochs": 3, "batch_size": 64, "learning_rate": 0.005, "seed": 3})
    _, straight, _ = run(tmp_path / "straight", spec)
    [done] = straight.of("final")

    two = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 2})})
    run(tmp_path / "resumed", two)
    _, resumed, _ = run(tmp_path / "resumed", spec)
    assert [a["restored_epoch"] for a in resumed.of("attempt_start")] == [2]
    assert resumed.of("final")[0]["param_checksum"] == done["param_checksum"]

    _, stopped, _ = run(tmp_path / "stopped", spec, stop_after=25)  # 20 steps an epoch: mid-epoch 2
    assert stopped.of("stopped") and not stopped.of("final")
    ckpt = max((tmp_path / "stopped" / "checkpoints").glob("ckpt-*"))
    with np.load(ckpt / tfm.STATE_FILE) as npz:
        assert any(k.startswith("r") for k in npz.files)  # the dropout generator's state
    _, continued, _ = run(tmp_path / "stopped", spec)
    assert continued.of("final")[0]["param_checksum"] == done["param_checksum"]


class _Payload:
    """Unpickling this creates ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickled_object_array_is_refused_and_never_runs(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "ckpt-0000000004"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    np.savez(ckpt / tfm.STATE_FILE, m0=np.zeros(3, dtype=np.float32),
             o0=np.array([_Payload(marker)], dtype=object))  # savez pickles an object array
    (ckpt / tfm.META_FILE).write_text(json.dumps({"epoch": 1, "global_step": 4}))
    with pytest.raises(CheckpointError) as caught:
        tfm.load_state(ckpt)
    assert not marker.exists()
    text = caught.value.render()
    assert str(ckpt / tfm.STATE_FILE) in text and "refused to load this checkpoint" in text
    assert "Python object arrays" in text and "fix: orchestrator did not write this file" in text
    assert f"move {ckpt} aside" in text


@pytest.mark.parametrize("damage", ["empty", "not-a-zip", "no-meta"])
def test_an_unreadable_tensorflow_checkpoint_is_a_checkpoint_error(tmp_path: Path, damage: str) -> None:
    ckpt = tmp_path / "ckpt-0000000001"
    ckpt.mkdir()
    np.savez(ckpt / tfm.STATE_FILE, m0=np.ones(2, dtype=np.float32))
    (ckpt / tfm.META_FILE).write_text(json.dumps({"epoch": 1, "global_step": 1}))
    if damage == "empty":
        (ckpt / tfm.STATE_FILE).write_bytes(b"")
    elif damage == "not-a-zip":
        (ckpt / tfm.STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    else:
        (ckpt / tfm.META_FILE).unlink()
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
        tfm.load_state(ckpt)
    assert f"move {ckpt} aside" in caught.value.render()


def test_a_good_tensorflow_checkpoint_loads_its_arrays_and_meta(tmp_path: Path) -> None:
    np.savez(tmp_path / tfm.STATE_FILE, m0=np.arange(3, dtype=np.float32), r0=np.array([7, 9], dtype=np.int64))
    (tmp_path / tfm.META_FILE).write_text(json.dumps({"epoch": 2, "global_step": 6}))
    meta, arrays = tfm.load_state(tmp_path)
    assert meta == {"epoch": 2, "global_step": 6}
    assert arrays["m0"].tolist() == [0.0, 1.0, 2.0] and arrays["r0"].tolist() == [7, 9]


def test_a_new_job_starts_from_another_jobs_keras_model_in_storage(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """init_from: the exported model.keras of a job (uploaded to its storage) becomes the first
    weights of a new job, exactly: the new job's model event reports the source's final checksum."""
    from orchestrator.storage import Storage

    monkeypatch.setenv("ORCHESTRATOR_CACHE_DIR", str(tmp_path / "cache"))
    spec = spec_of({"type": "cnn", "conv_filters": [8], "dense_units": [16]},
                   training={"epochs": 1, "batch_size": 64, "learning_rate": 0.005, "seed": 1})
    job = Storage.open(str(tmp_path / "shared")).child("source-job")
    _, first, _ = run(tmp_path / "a", spec, paths=JobPaths(tmp_path / "a", None, tmp_path / "a" / "model",
                                                          "source-job", job))
    assert job.is_file("model/model.keras") and job.list_dirs("checkpoints") == ["ckpt-0000000020"]
    source_checksum = first.of("final")[0]["param_checksum"]
    _, second, _ = run(tmp_path / "b", spec, paths=JobPaths(tmp_path / "b", tmp_path / "b" / "ckpt",
                                                           tmp_path / "b" / "model", "new-job",
                                                           init_from=job.child("model")))
    assert second.of("model")[0]["param_checksum"] == source_checksum
    assert any("initialised the model from" in line for e in second.of("log") for line in e["lines"])
    # another architecture: a CheckpointError naming the difference
    wider = spec_of({"type": "cnn", "conv_filters": [16], "dense_units": [16]},
                    training={"epochs": 1, "batch_size": 64, "learning_rate": 0.005, "seed": 1})
    from orchestrator.errors import CheckpointError

    with pytest.raises(CheckpointError, match="shapes differ"):
        run(tmp_path / "c", wider, paths=JobPaths(tmp_path / "c", tmp_path / "c" / "ckpt", tmp_path / "c" / "model",
                                                  "other-job", init_from=job.child("model")))
