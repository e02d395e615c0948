"""The torch training loop and checkpoint restore, in one process (no Ray, world size 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from orchestrator.runtime import session as session_mod
from orchestrator.runtime import torch_ddp
from orchestrator.runtime.data import prepare_data
from orchestrator.runtime.session import JobPaths, LocalCollectives, TrainSession
from orchestrator.runtime.torch_loop import train_builtin
from orchestrator.spec.models import JobSpec

_open_sessions: list[TrainSession] = []


def make_session(tmp_path: Path, spec: JobSpec) -> TrainSession:
    data = prepare_data(spec.data, spec.training.seed)
    paths = JobPaths(tmp_path, tmp_path / "checkpoints", tmp_path / "model")
    sess = TrainSession(
        spec=spec, rank=0, world_size=1, paths=paths, data=data,
        sink=None, collectives=LocalCollectives(torch.device("cpu")), keep_checkpoints=spec.checkpoint.keep,
    )
    session_mod.set_session(sess)
    _open_sessions.append(sess)
    return sess


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    """Close every session a test made, as the Ray worker does: an open session's hang watchdog
    would SIGKILL this pytest process once it saw no progress for failure.hang_timeout_s."""
    yield
    while _open_sessions:
        _open_sessions.pop().close()
    session_mod.set_session(None)


@pytest.fixture
def spec() -> JobSpec:
    return JobSpec(
        name="unit",
        model={"type": "cnn", "conv_filters": [8], "dense_units": [16]},
        resources={"workers": 1},
        training={"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "seed": 1},
    )


def test_builtin_loop_trains_checkpoints_and_exports(tmp_path: Path, spec: JobSpec) -> None:
    sess = make_session(tmp_path, spec)
    try:
        final = train_builtin(sess, spec, torch.device("cpu"))
    finally:
        session_mod.set_session(None)
    assert final["test_accuracy"] > 0.5  # 2 tiny epochs; chance is 0.1
    ckpts = sess.checkpoints.list()
    assert [c.epoch for c in ckpts] == [2, 1]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["num_classes"] == 10 and meta["sample_shape"] == [1, 8, 8]
    # the TorchScript model takes raw (unpreprocessed) inputs and matches the trained model
    scripted = torch.jit.load(str(tmp_path / "model" / "model.torchscript.pt"))
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images[:16, None].astype("float32"))
    model = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
    model.load_state_dict(torch.load(tmp_path / "model" / "model.pt"))
    model.eval()
    pre = sess.data.preprocessor  # type: ignore[union-attr]
    expected = model(torch.from_numpy(pre.apply(raw.numpy())))
    assert torch.allclose(scripted(raw), expected, atol=1e-5)


def test_restore_gives_identical_weights_optimizer_and_next_epoch(tmp_path: Path, spec: JobSpec) -> None:
    sess = make_session(tmp_path, spec)
    try:
        torch.manual_seed(0)
        model = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
        opt = torch_ddp.make_optimizer(spec, model.parameters())
        x = torch.from_numpy(sess.data.x_train[:32])  # type: ignore[union-attr]
        y = torch.from_numpy(sess.data.y_train[:32])  # type: ignore[union-attr]
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        torch_ddp.save_checkpoint(model, opt, epoch=3, step=30)
        rng_after_save = torch.get_rng_state()
        expected_model = torch_ddp.param_checksum(model)
        expected_opt = torch_ddp.optimizer_checksum(opt)

        torch.manual_seed(123)  # a different process state
        fresh = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
        fresh_opt = torch_ddp.make_optimizer(spec, fresh.parameters())
        assert torch_ddp.param_checksum(fresh) != expected_model
        point = torch_ddp.restore_checkpoint(fresh, fresh_opt)
    finally:
        session_mod.set_session(None)
    assert (point.start_epoch, point.global_step, point.step_in_epoch) == (4, 30, 0)
    assert torch_ddp.param_checksum(fresh) == expected_model
    assert torch_ddp.optimizer_checksum(fresh_opt) == expected_opt
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng_after_save)  # dropout continues identically


def test_no_checkpoint_starts_at_epoch_one(tmp_path: Path, spec: JobSpec) -> None:
    sess = make_session(tmp_path, spec)
    try:
        model = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
        opt = torch_ddp.make_optimizer(spec, model.parameters())
        assert torch_ddp.restore_checkpoint(model, opt) == torch_ddp.RestorePoint(1, 0)
    finally:
        session_mod.set_session(None)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_every_optimizer_builds(spec: JobSpec, optimizer: str) -> None:
    s = spec.model_copy(update={"training": spec.training.model_copy(update={"optimizer": optimizer})})
    opt = torch_ddp.make_optimizer(s, torch.nn.Linear(2, 2).parameters())
    assert type(opt).__name__.lower() == optimizer


def test_cnn_shapes_for_larger_images() -> None:
    from orchestrator.models.torch_models import build_cnn
    from orchestrator.spec.models import CNNModel

    net = build_cnn(CNNModel(conv_filters=[4, 8, 16]), (3, 32, 32), 7)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    tiny = build_cnn(CNNModel(conv_filters=[4, 8, 16, 32]), (1, 4, 4), 2)  # pools stop at 1x1
    assert tiny(torch.zeros(2, 1, 4, 4)).shape == (2, 2)


def test_close_disarms_the_hang_watchdog(tmp_path: Path, spec: JobSpec) -> None:
    spec = spec.model_copy(update={"failure": spec.failure.model_copy(update={"hang_timeout_s": 4.0})})
    sess = make_session(tmp_path, spec)
    sess.attempt_started()
    watchdog = sess._watchdog
    assert watchdog is not None and watchdog.is_alive()
    sess.close()
    watchdog.join(timeout=3.0)  # it checks once a second; alive after close, it would kill this process
    assert not watchdog.is_alive()


def test_export_leaves_the_training_model_as_it_was(tmp_path: Path, spec: JobSpec) -> None:
    """A loop may export mid-run (``export_model``) and go on training: same mode, same weights."""
    sess = make_session(tmp_path, spec)
    model = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
    model.train()
    before = torch_ddp.param_checksum(model)
    params = [id(p) for p in model.parameters()]
    torch_ddp.export_torch_model(model, sess.data, spec, tmp_path / "export")  # type: ignore[arg-type]
    assert model.training  # still in train mode: dropout and batch norm keep training
    assert [id(p) for p in model.parameters()] == params  # the optimizer's parameters are untouched
    assert torch_ddp.param_checksum(model) == before
    exported = torch_ddp.build_model(spec, sess.data)  # type: ignore[arg-type]
    exported.load_state_dict(torch.load(tmp_path / "export" / "model.pt"))
    assert torch_ddp.param_checksum(exported) == before
    assert (tmp_path / "export" / "model.torchscript.pt").stat().st_size > 0


def test_init_from_loads_another_jobs_state_dict_exactly_or_names_the_mismatch(tmp_path: Path, spec: JobSpec,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import CheckpointError
    from orchestrator.runtime.torch_ddp import build_model
    from orchestrator.storage import Storage

    monkeypatch.setenv("ORCHESTRATOR_CACHE_DIR", str(tmp_path / "cache"))
    data = prepare_data(spec.data, spec.training.seed)
    source = build_model(spec, data)
    (tmp_path / "src" / "model").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "src" / "model" / "model.pt")
    fresh = build_model(spec, data)
    torch_ddp.load_initial_weights(fresh, tmp_path / "src" / "model")
    assert torch_ddp.param_checksum(fresh) == torch_ddp.param_checksum(source)

    wider = JobSpec(name="unit", model={"type": "cnn", "conv_filters": [16], "dense_units": [16]},
                    resources={"workers": 1}, training=spec.training)
    with pytest.raises(CheckpointError, match="shapes differ") as err:
        torch_ddp.load_initial_weights(build_model(wider, data), tmp_path / "src" / "model")
    assert "fix" in err.value.render()
    with pytest.raises(CheckpointError, match="has no model.pt"):
        torch_ddp.load_initial_weights(fresh, tmp_path)
    # through a session: the model rank 0 reports is the source's
    storage = Storage.open(str(tmp_path / "src"))
    sess = make_session(tmp_path / "job", spec)
    object.__setattr__(sess.paths, "init_from", storage.child("model"))
    model = build_model(spec, data)
    torch_ddp.restore_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert torch_ddp.param_checksum(model) == torch_ddp.param_checksum(source)
