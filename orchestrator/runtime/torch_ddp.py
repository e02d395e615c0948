"""PyTorch DDP inside Ray Train workers: the built-in training loop and the worker entry.

Every worker runs :func:`train_loop_per_worker`. It builds the :class:`TrainSession`, restores
the newest valid checkpoint (chosen on rank 0, agreed by all), then runs either the built-in
loop for the spec's model or the user's entrypoint function.

Determinism: each epoch's shard order depends only on (seed, epoch); each rank's torch RNG is
seeded with (seed, rank) and saved in every checkpoint, so a resumed run continues exactly as
an uninterrupted one would.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from orchestrator.metrics import names
from orchestrator.runtime import session as session_mod
from orchestrator.runtime.data import PreparedData, eval_indices
from orchestrator.runtime.session import Collectives, JobPaths, LocalCollectives, TrainSession
from orchestrator.spec.models import JobSpec

STATE_FILE = "state.pt"
#: How often (in steps) ranks agree on whether the driver asked them to stop.
STOP_CHECK_EVERY = 10


class TorchCollectives:
    """Collectives over the torch.distributed process group Ray Train set up."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        dist.barrier()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def make_optimizer(spec: JobSpec, params: Any) -> torch.optim.Optimizer:
    t = spec.training
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.RMSprop(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)


def build_model(spec: JobSpec, data: PreparedData) -> nn.Module:
    from orchestrator.models.torch_models import build_cnn

    assert spec.model is not None
    if spec.model.type == "cnn":
        return build_cnn(spec.model, data.sample_shape, data.num_classes)
    raise ValueError(f"model type {spec.model.type!r} has no torch builder")


def wrap_ddp(model: nn.Module, spec: JobSpec, device: torch.device) -> nn.Module:
    """DistributedDataParallel with the spec's bucket size and optional fp16 compression."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=spec.sync.bucket_mb,
    )
    if spec.sync.compression == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    return ddp


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, rank: int, world: int, batch: int, dev: torch.device
) -> tuple[float, float]:
    """Loss and accuracy over the whole split: each rank takes a slice, sums are all-reduced."""
    idx = eval_indices(len(x), rank, world)
    model.eval()
    loss_sum = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            sel = idx[start : start + batch]
            xb = torch.from_numpy(x[sel]).to(dev)
            yb = torch.from_numpy(y[sel]).to(dev)
            out = model(xb)
            loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += float((out.argmax(1) == yb).sum())
    total_loss, total_correct, count = _all_reduce_sum([loss_sum, correct, float(len(idx))], dev)
    return total_loss / max(count, 1), total_correct / max(count, 1)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def worker_device() -> torch.device:
    """The device this worker trains on (its GPU when the job asked for GPUs, else the CPU)."""
    return _session_device(session_mod.get_session())


def evaluate_split(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on a whole split, computed across all ranks (a collective)."""
    sess = session_mod.get_session()
    return evaluate(model, x, y, sess.rank, sess.world_size, batch, _session_device(sess))


def prepare_model(model: nn.Module, dev: torch.device | None = None) -> nn.Module:
    """Move ``model`` to this worker's device and wrap it for DDP with the spec's sync settings."""
    sess = session_mod.get_session()
    spec = JobSpec.model_validate(sess.config)
    dev = dev or _session_device(sess)
    return wrap_ddp(model.to(dev), spec, dev)


def _session_device(sess: TrainSession) -> torch.device:
    return getattr(sess.collectives, "device", torch.device("cpu"))


def restore_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Load the newest valid checkpoint into ``model``/``optimizer`` (and this rank's RNG).

    Returns ``(first_epoch_to_run, global_step)``: ``(1, 0)`` when there is no checkpoint.
    Call it on every rank before wrapping the model for DDP.
    """
    sess = session_mod.get_session()
    restored = sess.find_restore_point()
    start_epoch, global_step = 1, 0
    if restored is not None:
        dev = next(iter(model.parameters())).device
        state = torch.load(restored.path / STATE_FILE, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, global_step = int(state["epoch"]) + 1, int(state["global_step"])
        rng = state.get("rng") or []
        if len(rng) == sess.world_size:
            _set_rng_state(rng[sess.rank])
        else:  # the world size changed: reseed deterministically for this rank and epoch
            seed = int(sess.config["training"]["seed"])
            torch.manual_seed(seed * 1000 + sess.rank + 7919 * start_epoch)
    sess.attempt_started()
    return start_epoch, global_step


def train_builtin(sess: TrainSession, spec: JobSpec, dev: torch.device) -> dict[str, float]:
    """The built-in supervised loop for classification models (cnn)."""
    data = sess.data
    assert data is not None
    rank, world = sess.rank, sess.world_size
    torch.manual_seed(spec.training.seed * 1000 + rank)
    model = build_model(spec, data).to(dev)
    optimizer = make_optimizer(spec, model.parameters())
    start_epoch, global_step = restore_checkpoint(model, optimizer)
    if rank == 0:
        sess.emit({"type": "model", "parameters": sum(p.numel() for p in model.parameters()),
                   "param_checksum": param_checksum(model),
                   "optimizer_checksum": optimizer_checksum(optimizer)})

    net = wrap_ddp(model, spec, dev)
    bs = spec.per_worker_batch_size
    epochs = spec.training.epochs
    x_train, y_train = data.x_train, data.y_train
    lr = spec.training.learning_rate
    stopped = False
    checkpoint_seconds = 0.0
    epoch = start_epoch

    for epoch in range(start_epoch, epochs + 1):
        idx = sess.shard(epoch)
        steps = max(1, math.ceil(len(idx) / bs))
        net.train()
        loss_sum = correct = seen = 0.0
        t0 = time.perf_counter()
        for step in range(steps):
            sel = idx[step * bs : (step + 1) * bs]
            xb = torch.from_numpy(x_train[sel]).to(dev, non_blocking=True)
            yb = torch.from_numpy(y_train[sel]).to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            out = net(xb)
            loss = nn.functional.cross_entropy(out, yb)
            loss.backward()
            optimizer.step()
            global_step += 1
            batch_loss = float(loss.detach())
            loss_sum += batch_loss * len(sel)
            correct += float((out.detach().argmax(1) == yb).sum())
            seen += len(sel)
            sess.progress(epoch=epoch, step=step + 1, steps=steps, loss=batch_loss, global_step=global_step)
            if (step + 1) % STOP_CHECK_EVERY == 0 and step + 1 < steps and sess.should_stop():
                stopped = True
                break
        train_seconds = time.perf_counter() - t0
        sess.record_shard(epoch, idx[: int(seen)])
        t_loss, t_correct, t_seen = _all_reduce_sum([loss_sum, correct, seen], dev)
        if stopped:
            break
        val_loss, val_acc = evaluate(net, data.x_val, data.y_val, rank, world, 512, dev)
        stop_now = sess.should_stop()
        if epoch % spec.checkpoint.every_epochs == 0 or epoch == epochs or stop_now:
            checkpoint_seconds = save_checkpoint(model, optimizer, epoch=epoch, step=global_step)
        sess.report(
            epoch=epoch,
            **{
                names.TRAIN_LOSS: t_loss / max(t_seen, 1),
                names.TRAIN_ACCURACY: t_correct / max(t_seen, 1),
                names.VAL_LOSS: val_loss,
                names.VAL_ACCURACY: val_acc,
                names.LEARNING_RATE: optimizer.param_groups[0].get("lr", lr),
                names.SAMPLES_PER_SECOND: t_seen / max(train_seconds, 1e-9),
                names.EPOCH_SECONDS: train_seconds,
                names.CHECKPOINT_SECONDS: checkpoint_seconds,
            },
        )
        if stop_now:
            stopped = True
            break

    if stopped:
        sess.emit({"type": "stopped", "epoch": epoch, "global_step": global_step})
        return {}
    test_loss, test_acc = evaluate(net, data.x_test, data.y_test, rank, world, 512, dev)
    final = {names.TEST_LOSS: test_loss, names.TEST_ACCURACY: test_acc}
    if rank == 0:
        export_torch_model(model, data, spec, sess.paths.model_dir)
        sess.emit({"type": "final", "metrics": final, "model_dir": str(sess.paths.model_dir),
                   "param_checksum": param_checksum(model)})
    return final


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, step: int) -> float:
    """Gather every rank's RNG state, then rank 0 writes model, optimizer, epoch and RNG.

    Call it on every rank (it is a collective); pass the unwrapped model, not the DDP wrapper.
    Returns the seconds rank 0 spent writing (0 on other ranks).
    """
    sess = session_mod.get_session()
    global_step = step
    rng = sess.collectives.all_gather_object(_rng_state())
    if sess.rank != 0:
        return 0.0
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "global_step": global_step,
        "rng": rng,
        "world_size": sess.world_size,
    }

    def write(directory: Path) -> None:
        torch.save(state, directory / STATE_FILE)

    return sess.save_checkpoint(
        write, epoch=epoch, step=global_step,
        meta={"framework": "torch", "param_checksum": param_checksum(model),
              "optimizer_checksum": optimizer_checksum(optimizer)},
    )


def param_checksum(model: nn.Module) -> str:
    """A short hash of every parameter and buffer, to compare weights across processes."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def optimizer_checksum(optimizer: torch.optim.Optimizer) -> str:
    """A short hash of the optimizer's state tensors and hyperparameters."""
    import hashlib

    digest = hashlib.sha256()
    state = optimizer.state_dict()
    for key in sorted(state["state"]):
        for name, value in sorted(state["state"][key].items()):
            digest.update(f"{key}.{name}".encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(repr(value).encode())
    digest.update(repr(state["param_groups"]).encode())
    return digest.hexdigest()[:16]


def export_model(model: nn.Module) -> Path | None:
    """Rank 0 saves a user model (state_dict and TorchScript) in the job's model directory."""
    sess = session_mod.get_session()
    if sess.rank != 0 or sess.data is None:
        return None
    spec = JobSpec.model_validate(sess.config)
    export_torch_model(model, sess.data, spec, sess.paths.model_dir)
    return sess.paths.model_dir / "model.pt"


def export_torch_model(model: nn.Module, data: PreparedData, spec: JobSpec, model_dir: Path) -> None:
    """Save the state_dict, a TorchScript model that takes raw inputs, and metadata."""
    import json

    from orchestrator.models.torch_models import WithPreprocessing

    model_dir.mkdir(parents=True, exist_ok=True)
    cpu_model = model.to("cpu").eval()
    torch.save(cpu_model.state_dict(), model_dir / "model.pt")
    pre = data.preprocessor

    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.array(a, dtype=np.float32))

    shift, scale = tensor(pre.shift), tensor(pre.scale)
    assert shift is not None and scale is not None
    wrapped = WithPreprocessing(cpu_model, shift, scale, tensor(pre.clip_low), tensor(pre.clip_high)).eval()
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still the portable format
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(wrapped)
        scripted.save(str(model_dir / "model.torchscript.pt"))
    meta = {
        "framework": "torch",
        "model": spec.model.model_dump(mode="json") if spec.model else {"entrypoint": spec.entrypoint},
        "sample_shape": list(data.sample_shape),
        "num_classes": data.num_classes,
        "task": data.task,
        "preprocessing": pre.to_json(),
        "files": {"state_dict": "model.pt", "torchscript": "model.torchscript.pt"},
    }
    (model_dir / "model.json").write_text(json.dumps(meta, indent=1))


def _load_user_function(entrypoint: str) -> Callable[[dict[str, Any]], Any]:
    file_part, func_name = entrypoint.rsplit(":", 1)
    module_name = "orchestrator_user_" + Path(file_part).stem
    spec = importlib.util.spec_from_file_location(module_name, file_part)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file_part}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise AttributeError(f"{file_part} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: set up the session, then train."""
    import ray.train
    import ray.train.torch

    spec = JobSpec.model_validate(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    dev = ray.train.torch.get_device()
    data = config.get("data")
    if data is not None and not isinstance(data, PreparedData):
        data = ray.get(data)
    collectives: Collectives = TorchCollectives(dev) if world > 1 else LocalCollectives(dev)
    sess = TrainSession(
        config=config["spec"],
        rank=rank,
        world_size=world,
        paths=JobPaths.from_config(config["paths"]),
        data=data,
        sink=config.get("sink"),
        collectives=collectives,
        keep_checkpoints=spec.checkpoint.keep,
    )
    session_mod.set_session(sess)
    try:
        with session_mod.captured_output(sess):
            if spec.entrypoint:
                func = _load_user_function(spec.entrypoint)
                func(dict(config["spec"]))
            else:
                train_builtin(sess, spec, dev)
    finally:
        session_mod.set_session(None)
