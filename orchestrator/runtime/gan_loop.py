"""The adversarial training loop of the built-in ``gan`` model (torch, DDP).

Each step: the discriminator (its own Adam) learns real (label 1 - smoothing) from generated
(label 0), then the generator (its own Adam) learns to make the discriminator say real. Both are
DDP-wrapped: each backward all-reduces that network's gradients over the ranks, every rank runs the
same sequence of backwards, and generated samples are detached for the discriminator's step, so the
two networks stay identical on every rank. Data is min-max normalised to [0, 1] (the generator ends
in a sigmoid). After every epoch rank 0 draws a fixed grid of samples (the same latent vectors each
epoch) as a PNG under the job's `samples/` folder and as a TensorBoard image. At the end, the share
of 256 samples that a classifier trained on the real training split assigns a class with
probability >= 0.8 is reported as ``confident_samples`` (a quality proxy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.metrics import names
from orchestrator.models.torch_models import GeneratorToRaw, build_gan
from orchestrator.runtime.images import GRID, QUALITY_SAMPLES, confident_share, emit_grid
from orchestrator.runtime.loop_common import check_gan_losses_finite, checkpoint_due, gan_epoch_metrics
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.torch_ddp import (
    all_reduce_sum,
    optimizer_checksum,
    param_checksum,
    restore_checkpoint,
    save_checkpoint,
    sync_backend_in_use,
    wrap_ddp,
)
from orchestrator.spec.models import GANModel, JobSpec


class PairOptimizer:
    """The generator's and the discriminator's optimizers, saved and restored as one."""

    def __init__(self, generator: torch.optim.Optimizer, discriminator: torch.optim.Optimizer) -> None:
        self.generator = generator
        self.discriminator = discriminator
        self.param_groups = generator.param_groups + discriminator.param_groups

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])


def gan_step(g_net: nn.Module, d_net: nn.Module, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
             real: torch.Tensor, latent: int, real_label: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One adversarial step: the discriminator on real vs generated (detached), then the generator."""
    bce = nn.functional.binary_cross_entropy_with_logits
    n, dev = len(real), real.device
    fake = g_net(torch.randn(n, latent, device=dev))
    d_opt.zero_grad(set_to_none=True)
    d_loss = bce(d_net(real), torch.full((n, 1), real_label, device=dev)) + \
        bce(d_net(fake.detach()), torch.zeros(n, 1, device=dev))
    d_loss.backward()
    d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    g_loss = bce(d_net(fake), torch.ones(n, 1, device=dev))
    g_loss.backward()
    g_opt.step()
    return g_loss.detach(), d_loss.detach()


def train_gan(sess: TrainSession, spec: JobSpec, dev: torch.device) -> dict[str, float]:
    """Train the spec's gan; returns the final metrics (empty if stopped early)."""
    data = sess.data
    assert data is not None and isinstance(spec.model, GANModel)
    gan = spec.model
    rank = sess.rank
    torch.manual_seed(spec.training.seed * 1000 + rank)
    generator, discriminator = build_gan(gan, data.sample_shape)
    pair = nn.ModuleDict({"generator": generator, "discriminator": discriminator}).to(dev)
    g_opt = torch.optim.Adam(generator.parameters(), lr=gan.generator_learning_rate, betas=(gan.beta1, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=gan.discriminator_learning_rate, betas=(gan.beta1, 0.999))
    optimizer = PairOptimizer(g_opt, d_opt)
    point = restore_checkpoint(pair, optimizer)  # type: ignore[arg-type]
    # the spec's rates win over the checkpoint's (a PBT trial restored from another trial's checkpoint)
    for opt, rate in ((g_opt, gan.generator_learning_rate), (d_opt, gan.discriminator_learning_rate)):
        for group in opt.param_groups:
            group["lr"] = rate
    if rank == 0:
        sess.model_built(parameters=sum(p.numel() for p in pair.parameters()),
                         param_checksum=param_checksum(pair), optimizer_checksum=optimizer_checksum(optimizer),  # type: ignore[arg-type]
                         device=str(dev), sync_backend=sync_backend_in_use())
    g_net, d_net = wrap_ddp(generator, spec, dev), wrap_ddp(discriminator, spec, dev)
    fixed_z = torch.randn(GRID * GRID, gan.latent, generator=torch.Generator().manual_seed(spec.training.seed))
    real_label = 1.0 - gan.label_smoothing
    bs = spec.per_worker_batch_size
    global_step, stopped, epoch, checkpoint_seconds = point.global_step, False, point.start_epoch, 0.0
    for epoch in range(point.start_epoch, spec.training.epochs + 1):
        idx = sess.shard(epoch)
        # a last batch of one sample is dropped: the generator's batch norm needs two or more
        steps = max(1, len(idx) // bs + (1 if len(idx) % bs >= 2 else 0))
        sess.epoch_started(epoch, global_step)
        g_net.train()
        d_net.train()
        sums = {"g": 0.0, "d": 0.0, "seen": 0.0}
        t0 = time.perf_counter()
        for step in range(steps):
            sel = idx[step * bs : (step + 1) * bs]
            real = torch.from_numpy(data.x_train[sel]).to(dev)
            n = len(sel)
            g_loss, d_loss = gan_step(g_net, d_net, g_opt, d_opt, real, gan.latent, real_label)
            global_step += 1
            sums["g"] += float(g_loss) * n
            sums["d"] += float(d_loss) * n
            sums["seen"] += n
            sess.progress(epoch=epoch, step=step + 1, steps=steps, loss=float(g_loss), global_step=global_step)
        # no mid-epoch stop: an epoch is a few dozen steps, and a stop asked for during it is taken
        # at its end, with a checkpoint (below), so cancel and preemption lose nothing
        seconds = time.perf_counter() - t0
        sess.record_shard(epoch, idx[: steps * bs])
        g_sum, d_sum, seen = all_reduce_sum([sums["g"], sums["d"], sums["seen"]], dev)
        check_gan_losses_finite(epoch, g_sum, d_sum)
        stop_now = sess.should_stop()
        if checkpoint_due(spec, epoch, stop_now):
            checkpoint_seconds = save_checkpoint(pair, optimizer, epoch=epoch, step=global_step)  # type: ignore[arg-type]
        if rank == 0:
            _emit_grid(sess, generator, fixed_z, epoch, dev)
        sess.report(epoch=epoch, global_step=global_step, **gan_epoch_metrics(
            g_sum=g_sum, d_sum=d_sum, seen=seen, seconds=seconds, learning_rate=gan.generator_learning_rate,
            checkpoint_seconds=checkpoint_seconds))
        if stop_now:
            stopped = True
            break
    if stopped:
        sess.stopped(epoch, global_step)
        return {}
    final: dict[str, float] = {}
    if rank == 0:
        generator.eval()
        with torch.no_grad():
            z = torch.randn(QUALITY_SAMPLES, gan.latent, generator=torch.Generator().manual_seed(spec.training.seed + 1))
            samples = generator(z.to(dev)).cpu().numpy()
        if data.task == "classification":  # labelled data: a classifier can judge the samples
            share, real_share = confident_share(data.x_train, data.y_train, [samples, data.x_val])
            final[names.CONFIDENT_SAMPLES] = share
            final[names.CONFIDENT_REAL] = real_share
        export_gan(generator, data, spec, sess.paths.model_dir)
        sess.finished(final, param_checksum(pair))
    return final


def _emit_grid(sess: TrainSession, generator: nn.Module, z: torch.Tensor, epoch: int, dev: torch.device) -> None:
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        samples = generator(z.to(dev)).cpu().numpy()
    generator.train(was_training)
    emit_grid(sess, samples, epoch)


def export_gan(generator: nn.Module, data: Any, spec: JobSpec, model_dir: Path) -> None:
    """The generator's state_dict and a TorchScript generator giving samples in raw units, plus metadata."""
    import copy
    import json
    import warnings

    model_dir.mkdir(parents=True, exist_ok=True)
    cpu = copy.deepcopy(generator).to("cpu").eval()
    torch.save(cpu.state_dict(), model_dir / "generator.pt")
    pre = data.preprocessor
    wrapped = GeneratorToRaw(cpu, torch.from_numpy(np.array(pre.shift, dtype=np.float32)),
                             torch.from_numpy(np.array(pre.scale, dtype=np.float32))).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(wrapped).save(str(model_dir / "generator.torchscript.pt"))
    meta = {"framework": "torch", "model": spec.model.model_dump(mode="json") if spec.model else {},
            "task": "generation", "sample_shape": list(data.sample_shape), "latent": getattr(spec.model, "latent", 0),
            "files": {"state_dict": "generator.pt", "torchscript": "generator.torchscript.pt"}}
    (model_dir / "model.json").write_text(json.dumps(meta, indent=1))
