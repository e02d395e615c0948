"""PyTorch DDP helpers for training functions inside Ray Train workers.

Used by the built-in loop (:mod:`orchestrator.runtime.torch_loop`) and by user entrypoints:
DDP wrapping with the spec's sync settings, split evaluation across ranks, checkpoints that
hold every rank's RNG state (so a resumed run continues exactly as an uninterrupted one), and
model export (state_dict and TorchScript).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from orchestrator.errors import CheckpointError
from orchestrator.runtime import session as session_mod
from orchestrator.runtime.data import PreparedData, eval_indices
from orchestrator.runtime.loop_common import RestorePoint, write_model_json
from orchestrator.runtime.session import TrainSession
from orchestrator.spec.models import JobSpec

STATE_FILE = "state.pt"


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


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all ranks (as is, outside a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sync_backend_in_use() -> str:
    """The torch.distributed backend of this worker's process group (``none`` without one)."""
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return "none"


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
    from orchestrator.models.torch_models import build_cnn, build_rnn, build_sequential

    assert spec.model is not None
    outputs = data.num_classes if data.task == "classification" else 1  # regression: one value
    if spec.model.type == "cnn":
        return build_cnn(spec.model, data.sample_shape, outputs)
    if spec.model.type == "rnn":
        return build_rnn(spec.model, data.sample_shape, outputs)
    if spec.model.type == "sequential":
        return build_sequential(spec.model, data.sample_shape, outputs)
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
    return evaluate_batches(model, ((x[idx[s : s + batch]], y[idx[s : s + batch]]) for s in range(0, len(idx), batch)),
                            dev)


def evaluate_batches(model: nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                     dev: torch.device) -> tuple[float, float]:
    """Loss and accuracy over this rank's ``batches`` (arrays) and every other rank's: sums all-reduced."""
    model.eval()
    loss_sum = correct = seen = 0.0
    touch = session_mod.touch_if_active
    with torch.no_grad():
        for xs, ys in batches:
            touch()
            xb = torch.from_numpy(xs).to(dev)
            yb = torch.from_numpy(ys).to(dev)
            out = model(xb)
            loss_sum += float(task_loss(out, yb, reduction="sum"))
            seen += len(xs)
            if yb.dtype != torch.float32:  # classification
                correct += float((out.argmax(1) == yb).sum())
    total_loss, total_correct, count = all_reduce_sum([loss_sum, correct, seen], dev)
    return total_loss / max(count, 1), total_correct / max(count, 1)


def task_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for class labels (integers), mean squared error for values (floats)."""
    if y.dtype == torch.float32:
        return nn.functional.mse_loss(out.reshape(y.shape), y, reduction=reduction)
    return nn.functional.cross_entropy(out, y, reduction=reduction)


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
    spec = sess.spec
    dev = dev or _session_device(sess)
    return wrap_ddp(model.to(dev), spec, dev)


def _session_device(sess: TrainSession) -> torch.device:
    return getattr(sess.collectives, "device", torch.device("cpu"))


def load_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A torch checkpoint file's contents, loaded without running any code it may hold.

    ``torch.load(weights_only=True)``: only tensors and plain values (numbers, strings, lists,
    tuples, dicts) are rebuilt, which is all :func:`save_checkpoint` writes. Anyone who can
    write the checkpoint directory could otherwise run code in the workers through a pickled
    object; a file that needs one is refused with a :class:`CheckpointError`, the object never
    built.
    """
    import pickle

    try:
        with warnings.catch_warnings():  # a non-torch pickle warns about its protocol before it is refused
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(Unsupported (?:global|operand)[^\n]*)", str(exc), re.IGNORECASE)
        why = found.group(1).strip().rstrip(".") if found else str(exc).splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: refused to load this checkpoint: it is not made only of tensors, numbers, strings, "
            f"lists and dicts; anything else would be unpickled, which can run code ({why})",
            fix=f"orchestrator did not write this file (or it was altered): check who can write {path.parent.parent}; "
            f"move {path.parent} aside to resume from an older checkpoint (or start afresh)",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})",
            fix=f"move {path.parent} aside to resume from an older checkpoint (or start afresh)",
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer"} <= state.keys():
        raise CheckpointError(
            f"{path}: not an orchestrator torch checkpoint (expected a dict with 'model' and 'optimizer')",
            fix=f"move {path.parent} aside to resume from an older checkpoint (or start afresh)",
        )
    return state


def restore_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> RestorePoint:
    """Start an attempt: wait the restart backoff, then load the newest valid checkpoint.

    Loads model, optimizer and this rank's RNG state. Returns where to continue
    (``RestorePoint()``: epoch 1, step 0, when there is no checkpoint). Call it on every rank
    before wrapping the model for DDP.
    """
    sess = session_mod.get_session()
    sess.begin_attempt()
    restored = sess.find_restore_point()
    point = RestorePoint()
    if restored is not None:
        dev = next(iter(model.parameters())).device
        state = load_state(restored.path / STATE_FILE, dev)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        point = RestorePoint.from_saved(state)
        rng = state.get("rng") or []
        if len(rng) == sess.world_size:
            _set_rng_state(rng[sess.rank])
        else:  # the world size changed: reseed deterministically for this rank and epoch
            seed = sess.spec.training.seed
            torch.manual_seed(seed * 1000 + sess.rank + 7919 * point.start_epoch)
    elif (source := sess.init_model_dir()) is not None:  # a new job fine-tuning another's weights
        load_initial_weights(model, source)
    sess.attempt_started()
    return point


def load_initial_weights(model: nn.Module, source: Path) -> None:
    """Load another job's exported ``model.pt`` (``init_from``) into ``model``, every tensor by name
    and shape; a mismatch is a CheckpointError naming the tensors (the driver checked model.json)."""
    dev = next(iter(model.parameters())).device
    try:
        state = torch.load(source / "model.pt", map_location=dev, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"init_from: {source} has no model.pt (a torch job's export)") from None
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or extra:
        raise CheckpointError(
            "init_from: the saved model does not fit this job's model: "
            + "; ".join(filter(None, [f"shapes differ: {', '.join(wrong[:5])}" if wrong else "",
                                      f"missing: {', '.join(missing[:5])}" if missing else "",
                                      f"unexpected: {', '.join(extra[:5])}" if extra else ""])),
            fix="give the same model section (layers, units, kernel sizes) and data as the job it starts from",
        )
    model.load_state_dict(state)


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    step: int,
    step_in_epoch: int = 0,
    extra: dict[str, Any] | None = None,
) -> float:
    """Gather every rank's RNG state, then rank 0 writes model, optimizer, epoch and RNG.

    ``step`` is the global step; a mid-epoch checkpoint also gives ``step_in_epoch`` (steps of
    ``epoch`` done so far) and whatever the loop needs to finish the epoch (``extra``). Call it
    on every rank (it is a collective) with the unwrapped model, not the DDP wrapper. Returns
    the seconds rank 0 spent writing (0 on other ranks).
    """
    sess = session_mod.get_session()
    rng = sess.collectives.all_gather_object(_rng_state())
    if sess.rank != 0:
        return 0.0
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "global_step": step,
        "step_in_epoch": step_in_epoch,
        "extra": extra or {},
        "rng": rng,
        "world_size": sess.world_size,
    }

    def write(directory: Path) -> None:
        # through a Python file: a full disk raises OSError(ENOSPC), where torch's own writer on a
        # path raises "unexpected pos" (CheckpointManager.save turns ENOSPC into a clear error)
        with (directory / STATE_FILE).open("wb") as fh:
            torch.save(state, fh)

    return sess.save_checkpoint(
        write, epoch=epoch, step=step,
        meta={"framework": "torch", "step_in_epoch": step_in_epoch, "param_checksum": param_checksum(model),
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
    whole = optimizer.state_dict()
    # one optimizer, or several saved as one (a gan's {"generator": ..., "discriminator": ...})
    parts = [whole] if "state" in whole else [whole[name] for name in sorted(whole)]
    for state in parts:
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
    spec = sess.spec
    export_torch_model(model, sess.data, spec, sess.paths.model_dir)
    return sess.paths.model_dir / "model.pt"


def export_torch_model(model: nn.Module, data: PreparedData, spec: JobSpec, model_dir: Path) -> None:
    """Save the state_dict, a TorchScript model that takes raw inputs, and metadata.

    Exports a CPU copy: ``model`` itself stays on its device and in its mode (train or eval),
    so a training loop may export mid-run and go on. A DDP-wrapped model is unwrapped first.
    """
    import copy

    from torch.nn.parallel import DistributedDataParallel

    from orchestrator.models.torch_models import WithPreprocessing

    model_dir.mkdir(parents=True, exist_ok=True)
    module = model.module if isinstance(model, DistributedDataParallel) else model
    cpu_model = copy.deepcopy(module).to("cpu").eval()
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
    write_model_json(model_dir, "torch", spec, data, {"state_dict": "model.pt", "torchscript": "model.torchscript.pt"})
