"""Backbone trunks: any timm model, and BN-Inception through pretrainedmodels.

Pretrained weights are data: `pretrained: true` loads them through timm's hub cache (a download on first
use), `pretrained_path: FILE` loads a local file and never touches the network. What the file holds is
`pretrained_format` (`PretrainedFile`): `state_dict` (a state dict, or a checkpoint holding one under
`state_dict` / `model`, read with `torch.load(weights_only=True)`, or a `.safetensors` file), `reference` (a
checkpoint of the reference implementation, whose backbone is then used: read by the `ReferenceReader` that the
composition plugs in, this package does not know that format), or `auto`: decided by the file's content, read
once. Without a network and without a cached or local file, the failure is a `UserError` that says what to do.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from architectures.normalization import BNINCEPTION, IMAGENET, Normalization
from utilities.errors import UserError

BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"


@dataclass
class Trunk:
    """A backbone without its classifier: module, pooled feature width, input normalisation."""

    module: nn.Module
    num_features: int
    input_spec: Normalization
    token_pool: bool = False


def _weights_help(name: str) -> str:
    return (
        f"could not load pretrained weights for '{name}' (no network and no cached copy?): "
        "download them once, set pretrained_path: FILE to a local weights file, or set pretrained: false"
    )


PRETRAINED_FORMATS = ("auto", "state_dict", "reference")


@dataclass(frozen=True)
class ReferenceReader:
    """How checkpoints of the reference implementation are read, plugged in by the composition (the trainer:
    `compat.weights.REFERENCE_READER`). `read`: the content of a torch zip checkpoint of either kind, read without
    executing anything it holds; `is_reference`: that content is a checkpoint of the reference; `trunk_state`: its
    backbone's tensors under the timm / pretrainedmodels names."""

    read: Callable[[Path], Any]
    is_reference: Callable[[Any], bool]
    trunk_state: Callable[[Any], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PretrainedFile:
    """`pretrained_path` (empty: none), its `pretrained_format`, and the reader of the reference's checkpoints
    (None: not available, so `reference` is an error and `auto` means `state_dict`)."""

    path: str = ""
    format: str = "auto"
    reference: ReferenceReader | None = None

    def read(self) -> dict[str, torch.Tensor]:
        """The backbone state dict the file holds, read once, as its format says (UserErrors name the file)."""
        path = Path(self.path)
        if self.format not in PRETRAINED_FORMATS:
            raise UserError(f"pretrained_format: {self.format!r} is not one of {', '.join(PRETRAINED_FORMATS)}")
        if not path.is_file():
            raise UserError(f"pretrained_path: file not found: {path}")
        if self.format == "reference":
            if self.reference is None:
                raise UserError("pretrained_format: reference: no reader of the reference's checkpoints is plugged in")
            content = self.reference.read(path)
            if not self.reference.is_reference(content):
                raise UserError(
                    f"pretrained_format: reference: {path} is not a checkpoint of the reference implementation "
                    "(a dict with 'state_dict' and 'opt'); a state dict needs pretrained_format: state_dict or auto"
                )
            return self.reference.trunk_state(content)
        if self.format == "auto" and self.reference is not None and zipfile.is_zipfile(path):
            content = self.reference.read(path)  # the restricted reader reads both kinds of torch zip checkpoint
            if self.reference.is_reference(content):
                return self.reference.trunk_state(content)
            return _unwrap(content, path)
        return _unwrap(_load_state_dict_file(path), path)


def _load_state_dict_file(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]  # its first sentence
        raise UserError(
            f"pretrained_path: cannot read weights from {path} as a state dict ({first}); a checkpoint of the "
            "reference implementation needs pretrained_format: reference or auto"
        ) from None


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """A state dict, or the one a checkpoint holds under `state_dict` or `model`."""
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"pretrained_path: {path} does not hold a state dict")
    return state


def load_trunk_weights(module: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """Load backbone weights, ignoring the ImageNet classifier; any other mismatch is an error.

    BatchNorm's `num_batches_tracked` counters may be absent (converted weights usually lack them, and they
    only matter for momentum-free BatchNorm): those buffers then keep their initial value.
    """
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in usable and not k.endswith(".num_batches_tracked")]
    if missing:
        raise UserError(
            f"pretrained_path: {path} does not fit backbone '{name}' "
            f"({len(missing)} missing tensors, e.g. {missing[0]})"
        )
    for key, value in usable.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"pretrained_path: {path}: {key} is not a tensor (not a state dict?)")
        if own[key].shape != value.shape:
            raise UserError(
                f"pretrained_path: {path}: tensor {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(own[key].shape)} for '{name}'"
            )
    module.load_state_dict(usable, strict=False)  # only counters can be missing here, and nothing is unexpected


def timm_trunk(name: str, pretrained: bool, weights: PretrainedFile) -> Trunk:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"key 'arch': unknown backbone '{name}'{hint}")
    try:
        module = timm.create_model(name, pretrained=pretrained and not weights.path, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
        if pretrained and not weights.path:
            raise UserError(_weights_help(name)) from exc
        raise
    if pretrained and weights.path:
        load_trunk_weights(module, weights.read(), name, Path(weights.path))
    cfg = module.pretrained_cfg
    spec = Normalization(tuple(cfg.get("mean", IMAGENET.mean)), tuple(cfg.get("std", IMAGENET.std)))
    token_pool = not hasattr(module, "global_pool") or not isinstance(getattr(module, "global_pool", None), nn.Module)
    return Trunk(module, module.num_features, spec, token_pool=_is_token_model(module) or token_pool)


def _is_token_model(module: nn.Module) -> bool:
    """True for transformer-style backbones whose forward_features returns tokens, not a B×C×H×W map."""
    with torch.no_grad():
        was_training = module.training
        module.eval()
        size = module.pretrained_cfg.get("input_size", (3, 224, 224))
        out = module.forward_features(torch.zeros(1, *size))
        module.train(was_training)
    return out.dim() != 4


class _BNInceptionTrunk(nn.Module):
    """pretrainedmodels' BN-Inception exposing the timm-style `forward_features`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


def bninception_trunk(name: str, pretrained: bool, weights: PretrainedFile) -> Trunk:
    import pretrainedmodels

    model = pretrainedmodels.bninception(num_classes=1000, pretrained=None)
    if pretrained:
        if weights.path:
            state = weights.read()
        else:
            try:
                state = torch.hub.load_state_dict_from_url(BNINCEPTION_URL, map_location="cpu")
            except Exception as exc:  # noqa: BLE001
                raise UserError(_weights_help(name)) from exc
        load_trunk_weights(model, state, name, Path(weights.path or BNINCEPTION_URL))
    model.last_linear = nn.Identity()
    return Trunk(_BNInceptionTrunk(model), 1024, BNINCEPTION)


@dataclass(frozen=True)
class SpecialBackbone:
    """A backbone that is not a timm model: its builder `(name, pretrained, weights: PretrainedFile) -> Trunk`, the
    input normalisation it expects (known without building it, so data pipelines can be set up first)."""

    build: Callable[[str, bool, PretrainedFile], Trunk]
    input_spec: Normalization
    description: str


# Backbones that are not timm models; every other name is looked up in timm. Adding one: a builder returning a
# `Trunk` (a module with `forward_features`, its feature width, its input normalisation), then one entry here.
SPECIAL_BACKBONES: Mapping[str, SpecialBackbone] = MappingProxyType(
    {
        "bninception": SpecialBackbone(
            bninception_trunk,
            BNINCEPTION,
            "BN-Inception (pretrainedmodels), Caffe convention: BGR, 0-255, mean subtracted",
        ),
    }
)


def input_spec_for(name: str) -> Normalization:
    """The input normalisation a backbone expects, known without building it."""
    if name in SPECIAL_BACKBONES:
        return SPECIAL_BACKBONES[name].input_spec
    import timm

    cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None:
        return IMAGENET
    return Normalization(tuple(cfg.mean or IMAGENET.mean), tuple(cfg.std or IMAGENET.std))


def build_trunk(name: str, pretrained: bool, weights: PretrainedFile | None = None) -> Trunk:
    """The backbone `name`; with `pretrained`, its weights from `weights` (a local file) or else from the hub."""
    special = SPECIAL_BACKBONES.get(name)
    return (special.build if special else timm_trunk)(name, pretrained, weights or PretrainedFile())
