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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.models.torch_models import GeneratorToRaw, build_gan
from orchestrator.runtime.epoch_loop import GanAdapter
from orchestrator.runtime.images import GRID, QUALITY_SAMPLES, confident_metrics, emit_grid
from orchestrator.runtime.loop_common import RestorePoint
from orchestrator.runtime.session import TrainSession
from orchestrator.runtime.torch_ddp import param_checksum, wrap_ddp
from orchestrator.runtime.torch_loop import TorchState
from orchestrator.spec.models import JobSpec


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


class TorchGan(GanAdapter):
    """The built-in gan under DDP: both networks wrapped, a step is :func:`gan_step`."""

    def __init__(self, sess: TrainSession, spec: JobSpec, dev: torch.device) -> None:
        super().__init__(sess, spec)
        gan = self.gan
        self.dev = dev
        torch.manual_seed(spec.training.seed * 1000 + self.rank)
        self.generator, self.discriminator = build_gan(gan, self.data.sample_shape)
        self.pair = nn.ModuleDict({"generator": self.generator, "discriminator": self.discriminator}).to(dev)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=gan.generator_learning_rate,
                                      betas=(gan.beta1, 0.999))
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=gan.discriminator_learning_rate,
                                      betas=(gan.beta1, 0.999))
        self.state = TorchState(self.pair, PairOptimizer(self.g_opt, self.d_opt), dev)
        self.g_net: nn.Module = self.generator
        self.d_net: nn.Module = self.discriminator

    def restore(self) -> RestorePoint:
        point = self.state.restore()
        # the spec's rates win over the checkpoint's (a PBT trial restored from another trial's checkpoint)
        for opt, rate in ((self.g_opt, self.gan.generator_learning_rate),
                          (self.d_opt, self.gan.discriminator_learning_rate)):
            for group in opt.param_groups:
                group["lr"] = rate
        return point

    def prepare(self) -> None:
        self.g_net = wrap_ddp(self.generator, self.spec, self.dev)
        self.d_net = wrap_ddp(self.discriminator, self.spec, self.dev)
        self.fixed_z = torch.randn(GRID * GRID, self.gan.latent,
                                   generator=torch.Generator().manual_seed(self.spec.training.seed))

    def train_mode(self) -> None:
        self.g_net.train()
        self.d_net.train()

    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        real = torch.from_numpy(self.data.x_train[sel]).to(self.dev)
        g_loss, d_loss = gan_step(self.g_net, self.d_net, self.g_opt, self.d_opt, real, self.gan.latent,
                                  1.0 - self.gan.label_smoothing)
        n = len(sel)
        return float(g_loss), float(g_loss) * n, float(d_loss) * n

    def after_checkpoint(self, epoch: int) -> None:
        if self.rank == 0:
            _emit_grid(self.sess, self.generator, self.fixed_z, epoch, self.dev)

    def finish(self) -> tuple[dict[str, float], str | None]:
        final: dict[str, float] = {}
        if self.rank != 0:
            return final, None
        data, generator, seed = self.data, self.generator, self.spec.training.seed
        generator.eval()
        with torch.no_grad():
            z = torch.randn(QUALITY_SAMPLES, self.gan.latent, generator=torch.Generator().manual_seed(seed + 1))
            samples = generator(z.to(self.dev)).cpu().numpy()
        if data.task == "classification":  # labelled data: a classifier can judge the samples
            final.update(confident_metrics(data, samples))
        export_gan(generator, data, self.spec, self.sess.paths.model_dir)
        return final, param_checksum(self.pair)


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
