"""The built-in supervised training loop for torch models (classification and regression).

The epoch loop itself is :func:`orchestrator.runtime.epoch_loop.run_epochs`; this module is its torch
side: :class:`TorchState` saves, restores and all-reduces a module and its optimizer (the gan's
loop uses it too), and :class:`TorchSupervised` trains one DDP step, evaluates across ranks and
exports the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.runtime.augment import augment_batch, batch_generator
from orchestrator.runtime.epoch_loop import EpochAdapter, ModelSummary, SupervisedAdapter, run_epochs
from orchestrator.runtime.loop_common import RestorePoint, test_metrics
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.torch_ddp import (
    all_reduce_sum,
    build_model,
    evaluate,
    evaluate_batches,
    export_torch_model,
    make_optimizer,
    optimizer_checksum,
    param_checksum,
    restore_checkpoint,
    save_checkpoint,
    sync_backend_in_use,
    task_loss,
    wrap_ddp,
)
from orchestrator.spec.models import JobSpec


class TorchState:
    """A torch module and its optimizer as the epoch loop checkpoints, restores and summarises them."""

    def __init__(self, module: nn.Module, optimizer: Any, dev: torch.device) -> None:
        self.module, self.optimizer, self.dev = module, optimizer, dev

    def restore(self) -> RestorePoint:
        return restore_checkpoint(self.module, self.optimizer)

    def summary(self) -> ModelSummary:
        return ModelSummary(parameters=sum(p.numel() for p in self.module.parameters()),
                            param_checksum=param_checksum(self.module),
                            optimizer_checksum=optimizer_checksum(self.optimizer),
                            device=str(self.dev), sync_backend=sync_backend_in_use())

    def all_reduce(self, counts: list[float]) -> list[float]:
        return all_reduce_sum(counts, self.dev)

    def save(self, *, epoch: int, step: int, step_in_epoch: int = 0, extra: dict[str, Any] | None = None) -> float:
        return save_checkpoint(self.module, self.optimizer, epoch=epoch, step=step, step_in_epoch=step_in_epoch,
                               extra=extra)


class TorchSupervised(SupervisedAdapter):
    """A built-in classifier or regressor under DDP."""

    def __init__(self, sess: TrainSession, spec: JobSpec, dev: torch.device) -> None:
        super().__init__(sess, spec)
        self.dev = dev
        torch.manual_seed(spec.training.seed * 1000 + self.rank)
        self.model = build_model(spec, self.data).to(dev)
        self.optimizer = make_optimizer(spec, self.model.parameters())
        self.state = TorchState(self.model, self.optimizer, dev)
        self.net: nn.Module = self.model

    def restore(self) -> RestorePoint:
        point = self.state.restore()
        # The spec's optimizer settings win over the restored ones: equal when a job resumes, and a PBT
        # sweep trial that continues another trial's checkpoint trains with its own (perturbed) rate.
        for group in self.optimizer.param_groups:
            group["lr"] = self.spec.training.learning_rate
            group["weight_decay"] = self.spec.training.weight_decay
            if "momentum" in group:
                group["momentum"] = self.spec.training.momentum
        return point

    def prepare(self) -> None:
        self.net = wrap_ddp(self.model, self.spec, self.dev)

    def train_mode(self) -> None:
        self.net.train()

    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        dev, augment = self.dev, self.spec.data.augment
        xb = torch.from_numpy(self.data.x_train[sel]).to(dev, non_blocking=True)
        yb = torch.from_numpy(self.data.y_train[sel]).to(dev, non_blocking=True)
        if not self.classify and yb.dtype != torch.float32:  # streamed targets keep the files' dtype
            yb = yb.float()
        elif self.classify and yb.dtype != torch.int64:
            yb = yb.long()
        if augment.active:  # training split only; the same draws after a resume
            xb = augment_batch(xb, augment, batch_generator(self.spec.training.seed, epoch, self.rank, step))
        self.optimizer.zero_grad(set_to_none=True)
        out = self.net(xb)
        loss = task_loss(out, yb)
        loss.backward()
        self.optimizer.step()
        batch_loss = float(loss.detach())
        correct = float((out.detach().argmax(1) == yb).sum()) if self.classify else 0.0
        return batch_loss, batch_loss * len(sel), correct

    def evaluate(self, epoch: int, totals: Sequence[float]) -> tuple[float, ...]:
        return self._evaluate("validation")

    def _evaluate(self, split: str) -> tuple[float, float]:
        data = self.data
        if data.stream is not None:  # this rank's files of the split, streamed
            from orchestrator.runtime.datasets import SPLITS, eval_batches

            batches = eval_batches(data.stream, SPLITS[split], self.rank, self.world, 512)
            target = np.int64 if data.task == "classification" else np.float32
            batches = ((x, y.astype(target, copy=False)) for x, y in batches)
            return evaluate_batches(self.net, batches, self.dev)
        x, y = (data.x_val, data.y_val) if split == "validation" else (data.x_test, data.y_test)
        return evaluate(self.net, x, y, self.rank, self.world, 512, self.dev)

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0].get("lr", self.spec.training.learning_rate))

    def finish(self) -> tuple[dict[str, float], str | None]:
        data = self.data
        final = test_metrics(data, *self._evaluate("test"))
        if self.rank != 0:
            return final, None
        export_torch_model(self.model, data, self.spec, self.sess.paths.model_dir)
        return final, param_checksum(self.model)


def torch_adapter(sess: TrainSession, spec: JobSpec, dev: torch.device) -> EpochAdapter:
    """The adapter for the spec's built-in model: the gan's or the supervised one."""
    if spec.model is not None and spec.model.type == "gan":  # an adversarial pair: its own step
        from orchestrator.runtime.gan_loop import TorchGan

        return TorchGan(sess, spec, dev)
    return TorchSupervised(sess, spec, dev)


def train_builtin(sess: TrainSession, spec: JobSpec, dev: torch.device) -> dict[str, float]:
    """Train the spec's built-in model; returns the test metrics (empty if stopped early)."""
    return run_epochs(sess, spec, torch_adapter(sess, spec, dev))
