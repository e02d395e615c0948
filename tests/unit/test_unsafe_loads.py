"""Nothing a checkpoint directory holds runs as code: torch checkpoints load without pickle.

Anyone who can write a checkpoint directory (shared storage) could otherwise run code in every
worker through a pickled object in ``state.pt``. A crafted file is refused with a message that
names it and says what to do, and its payload never runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from orchestrator.errors import CheckpointError
from orchestrator.runtime import session as session_mod
from orchestrator.runtime import torch_ddp
from orchestrator.runtime.checkpoints import MANIFEST
from orchestrator.runtime.session import JobPaths, LocalCollectives, TrainSession
from orchestrator.spec.models import JobSpec


class Payload:
    """Unpickling this creates ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def session(tmp_path: Path) -> Iterator[TrainSession]:
    spec = JobSpec(name="unsafe", model={"type": "cnn"}, training={"epochs": 1, "seed": 2})
    paths = JobPaths(tmp_path / "job", tmp_path / "checkpoints", tmp_path / "job" / "model")
    sess = TrainSession(
        spec=spec,
        rank=0,
        world_size=1,
        paths=paths,
        data=None,
        sink=None,
        collectives=LocalCollectives(torch.device("cpu")),
        keep_checkpoints=3,
    )
    session_mod.set_session(sess)
    yield sess
    sess.close()
    session_mod.set_session(None)


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return model, opt


def _replace_state(checkpoint: Path, payload: bytes) -> None:
    """Put ``payload`` in as state.pt with a matching manifest, as someone who can write the dir could."""
    (checkpoint / torch_ddp.STATE_FILE).write_bytes(payload)
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"][torch_ddp.STATE_FILE] = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
    }
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))


def _torch_file(obj: object, tmp_path: Path) -> bytes:
    path = tmp_path / "crafted.pt"
    torch.save(obj, path)
    return path.read_bytes()


def test_a_checkpoint_saved_here_restores_exactly_without_pickle(
    session: TrainSession, tmp_path: Path
) -> None:
    model, opt = _model_and_optimizer()
    torch_ddp.save_checkpoint(model, opt, epoch=2, step=8, step_in_epoch=0, extra={"loss": 1.5})
    [ckpt] = session.checkpoints.list()
    state = torch_ddp.load_state(ckpt.path / torch_ddp.STATE_FILE)
    assert (state["epoch"], state["global_step"], state["extra"]) == (2, 8, {"loss": 1.5})
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    point = torch_ddp.restore_checkpoint(fresh, fresh_opt)
    assert (point.start_epoch, point.global_step) == (3, 8)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert torch_ddp.optimizer_checksum(fresh_opt) == torch_ddp.optimizer_checksum(opt)


@pytest.mark.parametrize("form", ["torch-file", "plain-pickle"])
def test_a_checkpoint_that_needs_pickle_is_refused_and_its_payload_never_runs(
    session: TrainSession, tmp_path: Path, form: str
) -> None:
    model, opt = _model_and_optimizer()
    torch_ddp.save_checkpoint(model, opt, epoch=1, step=4)
    [ckpt] = session.checkpoints.list()
    marker = tmp_path / "payload-ran"
    state = {"model": model.state_dict(), "optimizer": Payload(marker), "epoch": 1, "global_step": 4}
    _replace_state(ckpt.path, _torch_file(state, tmp_path) if form == "torch-file" else pickle.dumps(state))

    fresh = torch.nn.Linear(4, 3)
    with pytest.raises(CheckpointError) as caught:
        torch_ddp.restore_checkpoint(fresh, torch.optim.Adam(fresh.parameters()))
    assert not marker.exists()
    text = caught.value.render()
    assert str(ckpt.path / torch_ddp.STATE_FILE) in text
    assert "refused to load this checkpoint" in text and "can run code" in text
    assert "fix: orchestrator did not write this file" in text and f"move {ckpt.path} aside" in text
    if form == "torch-file":
        assert "posix.system" in text  # what it tried to build


def test_an_old_checkpoint_with_an_arbitrary_object_is_refused(tmp_path: Path) -> None:
    import numpy as np  # harmless, but an object outside tensors and plain values

    path = tmp_path / "ckpt-0000000001" / torch_ddp.STATE_FILE
    path.parent.mkdir()
    torch.save({"model": {}, "optimizer": {}, "extra": {"seen": np.arange(3)}}, path)
    with pytest.raises(CheckpointError, match="refused to load this checkpoint"):
        torch_ddp.load_state(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "unreadable checkpoint"),
        (b"not a zip, not a pickle", "refused to load this checkpoint"),
    ],
)
def test_an_unreadable_or_foreign_state_file_is_a_checkpoint_error(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / torch_ddp.STATE_FILE
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        torch_ddp.load_state(path)
    assert f"move {tmp_path} aside" in caught.value.render()


def test_a_state_that_is_not_a_checkpoint_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / torch_ddp.STATE_FILE
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not an orchestrator torch checkpoint"):
        torch_ddp.load_state(path)


def test_a_gan_checkpoint_restores_both_optimizers_without_pickle(session: TrainSession) -> None:
    from orchestrator.models.torch_models import build_gan
    from orchestrator.runtime.gan_loop import PairOptimizer, gan_step
    from orchestrator.spec.models import GANModel

    def pair_of(seed: int) -> tuple[torch.nn.ModuleDict, PairOptimizer]:
        torch.manual_seed(seed)
        generator, discriminator = build_gan(GANModel(type="gan"), (1, 8, 8))
        pair = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
        return pair, PairOptimizer(
            torch.optim.Adam(generator.parameters(), betas=(0.5, 0.999)),
            torch.optim.Adam(discriminator.parameters(), betas=(0.5, 0.999)),
        )

    pair, opt = pair_of(0)
    gan_step(
        pair["generator"],
        pair["discriminator"],
        opt.generator,
        opt.discriminator,
        torch.rand(16, 1, 8, 8),
        32,
        0.9,
    )
    torch_ddp.save_checkpoint(pair, opt, epoch=1, step=1)  # type: ignore[arg-type]
    again, again_opt = pair_of(1)
    assert torch_ddp.param_checksum(again) != torch_ddp.param_checksum(pair)
    point = torch_ddp.restore_checkpoint(again, again_opt)  # type: ignore[arg-type]
    assert point.start_epoch == 2
    assert torch_ddp.param_checksum(again) == torch_ddp.param_checksum(pair)
    assert torch_ddp.optimizer_checksum(again_opt) == torch_ddp.optimizer_checksum(opt)  # type: ignore[arg-type]
    assert again_opt.generator.param_groups[0]["betas"] == (0.5, 0.999)
