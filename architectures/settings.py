"""The configuration keys of the embedding network, declared once with their default, help and bounds
(`utilities.settings`); `architectures.build_model` reads exactly these."""

from __future__ import annotations

from dataclasses import dataclass

from architectures.backbones import PRETRAINED_FORMATS
from architectures.embedding import EMBED_NORMS, POOLINGS
from utilities.settings import setting


@dataclass
class ModelSettings:
    """Backbone, pooling and embedding head."""

    arch: str = setting("resnet50.tv_in1k", "backbone: any timm model name, or bninception")
    pretrained: bool = setting(True, "start from ImageNet weights (timm hub cache, or pretrained_path)")
    pretrained_path: str = setting("", "local weights file for the backbone (no download)")
    pretrained_format: str = setting(
        "auto",
        "what pretrained_path holds: a state dict, a reference implementation checkpoint, or auto: by its content",
        PRETRAINED_FORMATS,
    )
    pooling: str = setting("avgmax", "pooling of CNN feature maps", tuple(POOLINGS))
    embed_dim: int = setting(512, "embedding dimension", at_least=1)
    embed_norm: str = setting("layernorm", "embedding normalisation", EMBED_NORMS)
    frozen_bn: bool = setting(True, "freeze backbone BatchNorm statistics (affine parameters still train)")
