"""Built-in PyTorch models, built from the spec's model section."""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.spec.models import CNNModel


def build_cnn(spec: CNNModel, sample_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Conv blocks (conv -> [batch norm] -> ReLU -> [2x2 max-pool]) then a dense head.

    Pooling is skipped once the feature map is smaller than 2x2, so the same spec works on
    8x8 digits and on larger images.
    """
    if len(sample_shape) != 3:
        raise ValueError(
            f"the cnn model needs image samples shaped (channels, height, width), got {sample_shape}"
        )
    channels, height, width = sample_shape
    layers: list[nn.Module] = []
    for filters in spec.conv_filters:
        layers.append(nn.Conv2d(channels, filters, spec.kernel_size, padding=spec.kernel_size // 2))
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(filters))
        layers.append(nn.ReLU())
        if spec.pool and height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = filters
    layers.append(nn.Flatten())
    features = channels * height * width
    for units in spec.dense_units:
        layers += [nn.Dropout(spec.dropout), nn.Linear(features, units), nn.ReLU()]
        features = units
    layers += [nn.Dropout(spec.dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


class WithPreprocessing(nn.Module):
    """Applies the training preprocessing (clip, shift, scale) before the model.

    The exported TorchScript model takes raw inputs, exactly like the data file's ``x``.
    """

    def __init__(
        self,
        model: nn.Module,
        shift: torch.Tensor,
        scale: torch.Tensor,
        clip_low: torch.Tensor | None,
        clip_high: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.clip = clip_low is not None and clip_high is not None
        self.register_buffer("clip_low", clip_low if clip_low is not None else shift.clone())
        self.register_buffer("clip_high", clip_high if clip_high is not None else shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.shift.dtype)
        if self.clip:
            x = torch.maximum(torch.minimum(x, self.clip_high), self.clip_low)
        return self.model((x - self.shift) / self.scale)
