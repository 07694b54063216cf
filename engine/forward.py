"""The one forward policy: how a network runs on a device, for training, evaluation and inference alike.

* precision: `fp32` runs in float32 (autocast off); `bf16` / `fp16` run the forward pass under autocast in that
  dtype (the criterion's math stays float32, `criteria.precision`); embeddings leave as float32;
* channels_last: on CUDA, the network and its input batches use the channels_last memory format when the
  configuration's `channels_last` is on (faster convolutions); on the CPU, never.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

PRECISIONS: Mapping[str, torch.dtype | None] = MappingProxyType(
    {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
)
"""The `precision` values: the autocast dtype of the forward passes (None: plain float32)."""


@dataclass(frozen=True)
class ForwardPolicy:
    """Precision and memory format of a network's forward passes on `device`."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = True

    @property
    def uses_channels_last(self) -> bool:
        return self.channels_last and self.device.type == "cuda"

    def place_model(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device (in channels_last where the policy says so); returns it."""
        model.to(self.device)
        if self.uses_channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def place_inputs(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """An image batch on the device, in the model's memory format (and `dtype` when given)."""
        images = images.to(self.device, dtype=dtype, non_blocking=True)
        if self.uses_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (off in fp32, whatever an outer context says)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=dtype)
