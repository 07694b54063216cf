"""Embedding networks: `build_model(cfg)` gives a backbone + pooling + embedding head."""

from __future__ import annotations

from collections.abc import Sequence

from architectures.backbones import SPECIAL_BACKBONES, WeightReader, build_trunk, input_spec_for
from architectures.embedding import EmbeddingModel, pool_feature_map
from architectures.settings import ModelSettings

__all__ = [
    "EmbeddingModel",
    "ModelSettings",
    "SPECIAL_BACKBONES",
    "WeightReader",
    "build_model",
    "input_spec_for",
    "pool_feature_map",
]


def build_model(cfg: ModelSettings, readers: Sequence[WeightReader] = ()) -> EmbeddingModel:
    """The embedding network of the model keys (`ModelSettings`: the whole configuration is one);
    `readers` read `pretrained_path` files that `torch.load` cannot."""
    trunk = build_trunk(cfg.arch, cfg.pretrained, cfg.pretrained_path, readers)
    return EmbeddingModel(
        trunk.module,
        trunk.num_features,
        trunk.input_spec,
        embed_dim=cfg.embed_dim,
        pooling=cfg.pooling,
        embed_norm=cfg.embed_norm,
        frozen_bn=cfg.frozen_bn,
        token_pool=trunk.token_pool,
    )
