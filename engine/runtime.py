"""Run-time choices derived from the configuration: the device and the input normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utilities.errors import UserError


def resolve_device(device: str, gpu: Sequence[int] = (0,), local_rank: int | None = None) -> torch.device:
    """`auto` picks CUDA when available; under torchrun each rank uses its LOCAL_RANK device."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("key 'device' is cuda but no CUDA device is available (use device: auto or cpu)")
    index = local_rank if local_rank is not None else (gpu[0] if gpu else 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"key 'gpu': device {index} does not exist ({torch.cuda.device_count()} visible)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
