"""Keep criterion math in float32 even when the caller runs under autocast.

Proxies, the logits of the proxy losses and the discriminators' losses are small and numerically
sensitive (exp of α·cos with α up to 200, nuclear norms); the design keeps them in float32 whatever the
backbone's precision. The cast happens once at the criterion's entry, then autocast is switched off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


def _to_float32(value: object) -> object:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.float()
    return value


def float32_forward(method: F) -> F:
    """Decorate a method taking tensors: floating tensors arrive as float32 and autocast is disabled.

    The device type of autocast is taken from the first tensor argument, so the same code serves CPU
    and CUDA (bf16 / fp16 autocast alike).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        args = tuple(_to_float32(a) for a in args)
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        with torch.autocast(device_type=device_type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
