"""Weights of the reference implementation's networks, renamed onto this project's `EmbeddingModel`.

The reference wraps a pretrainedmodels network as ``model`` and replaces its ``last_linear`` by the
embedding Linear layer. Its ResNet-50 state dict therefore names ``model.conv1.weight`` ...
``model.layer4.*``, ``model.last_linear.*``, and again every residual stage under ``layer_blocks.{0..3}.*``
(a ModuleList holding the same modules); its BN-Inception names ``model.<layer>.*`` and
``model.last_linear.*``. Here the same tensors are ``trunk.*`` (timm's ResNet-50 uses torchvision's names;
BN-Inception sits in ``trunk.model``) and ``head.*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from architectures import ReferenceReader
from utilities.errors import UserError


def is_reference_checkpoint(obj: Any) -> bool:
    """The shape of a reference checkpoint: a dict with a `state_dict` and its options namespace `opt`."""
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "opt" in obj


_TRUNK_PREFIX = {"resnet50.tv_in1k": "trunk.", "bninception": "trunk.model."}


def reference_state_dict(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The reference network's `state_dict` under this project's names, for backbone `arch`.

    The ``layer_blocks`` duplicates must equal their ``model.layer*`` twins (they are the same modules);
    anything else that is not under ``model.`` is a `UserError`.
    """
    if arch not in _TRUNK_PREFIX:
        raise UserError(f"weights of the reference implementation exist for {', '.join(_TRUNK_PREFIX)}, not {arch}")
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("layer_blocks."):
            index, rest = key.removeprefix("layer_blocks.").split(".", 1)
            twin = f"model.layer{int(index) + 1}.{rest}"
            if twin not in state or not torch.equal(state[twin], value):
                raise UserError(f"reference weights: {key} does not repeat {twin} (a damaged checkpoint?)")
        elif key.startswith("model.last_linear."):
            renamed["head." + key.removeprefix("model.last_linear.")] = value
        elif key.startswith("model."):
            renamed[_TRUNK_PREFIX[arch] + key.removeprefix("model.")] = value
        else:
            raise UserError(f"reference weights: unexpected tensor {key} (not a network of the reference?)")
    return renamed


def reference_trunk_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone tensors of a reference `state_dict` under the pretrainedmodels / timm names (``conv1.weight``),
    for `pretrained_path`: the embedding layer and the ``layer_blocks`` duplicates are left out."""
    return {
        key.removeprefix("model."): value
        for key, value in state.items()
        if key.startswith("model.") and not key.startswith("model.last_linear.")
    }


def _read_restricted(path: Path) -> Any:
    from compat.unpickler import load_restricted

    return load_restricted(path).obj


REFERENCE_READER = ReferenceReader(
    read=_read_restricted,
    is_reference=is_reference_checkpoint,
    trunk_state=lambda checkpoint: reference_trunk_state(checkpoint["state_dict"]),
)
"""Checkpoints of the reference implementation as `pretrained_path` (read without executing any of their pickled
objects): what training plugs into `architectures.build_model`."""


def load_reference_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Load a reference `state_dict` into `model` (strict: every tensor must find its place and shape)."""
    renamed = reference_state_dict(state, arch)
    own = model.state_dict()
    missing = [key for key in own if key not in renamed]
    unexpected = [key for key in renamed if key not in own]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(
            f"reference weights do not fit the {arch} network: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (e.g. {example})"
        )
    for key, value in renamed.items():
        if value.shape != own[key].shape:
            raise UserError(
                f"reference weights: {key} has shape {tuple(value.shape)}, the network expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(renamed, strict=True)
