"""The embedding network: a backbone trunk, pooling, a Linear head and an embedding normalisation.

This is the reference implementation's head (docs/reference.md §2.1) for any backbone: CNN feature maps are pooled with
`avg`, `max` or `avgmax` (global max + global average, the reference's `double`), token outputs (ViT, DeiT)
use the backbone's own pooling; then Linear(features, embed_dim) with PyTorch's default initialisation,
then LayerNorm without affine parameters (the reference), L2 normalisation, or nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from architectures.normalization import Normalization

POOLINGS: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = MappingProxyType(
    {
        "avg": lambda features: features.mean(dim=(2, 3)),
        "max": lambda features: features.amax(dim=(2, 3)),
        "avgmax": lambda features: features.mean(dim=(2, 3)) + features.amax(dim=(2, 3)),
    }
)
"""Global poolings of a B×C×H×W map to B×C (`avgmax`: their sum, the reference's `double`)."""

EMBED_NORMS = ("layernorm", "l2", "none")
"""Normalisations after the embedding Linear layer: LayerNorm without affine (the reference's), L2, none."""


def pool_feature_map(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """Global pooling of a B×C×H×W map to B×C: `avg`, `max`, or `avgmax` (their sum)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling '{pooling}'")
    return POOLINGS[pooling](features)


class EmbeddingModel(nn.Module):
    """Backbone + pooling + Linear + normalisation, with frozen-BatchNorm and warm-up behaviour.

    * `frozen_bn`: every BatchNorm of the trunk stays in eval mode (ImageNet running statistics) even when
      `train()` is called; its affine parameters still train, as in the reference.
    * `forward(images, warmup=True)`: the trunk and pooling run without gradient, so only the head learns
      (the reference's warm-up epochs).
    """

    def __init__(
        self,
        trunk: nn.Module,
        num_features: int,
        input_spec: Normalization,
        *,
        embed_dim: int = 512,
        pooling: str = "avgmax",
        embed_norm: str = "layernorm",
        frozen_bn: bool = True,
        token_pool: bool = False,
    ) -> None:
        super().__init__()
        if embed_norm not in EMBED_NORMS:
            raise ValueError(f"unknown embed_norm '{embed_norm}'")
        self.trunk = trunk
        self.head = nn.Linear(num_features, embed_dim)
        self.input_spec = input_spec
        self.pooling = pooling
        self.embed_norm = embed_norm
        self.frozen_bn = frozen_bn
        self.token_pool = token_pool
        self.embed_dim = embed_dim
        self.train()

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if self.frozen_bn:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.trunk.forward_features(images)
        if self.token_pool:
            return self.trunk.forward_head(features, pre_logits=True)
        return pool_feature_map(features, self.pooling)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Head and normalisation on pooled features (float32 LayerNorm / L2 even under autocast)."""
        embeddings = self.head(pooled)
        if self.embed_norm == "layernorm":
            return F.layer_norm(embeddings.float(), (self.embed_dim,), eps=1e-5)
        if self.embed_norm == "l2":
            return F.normalize(embeddings.float(), dim=-1)
        return embeddings

    def forward(self, images: torch.Tensor, warmup: bool = False) -> torch.Tensor:
        context = torch.no_grad() if warmup else contextlib.nullcontext()
        with context:
            pooled = self.pooled_features(images)
        return self.embed(pooled)
