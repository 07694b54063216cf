"""Embedding networks: `build_model(cfg)` gives a backbone + pooling + embedding head."""

from __future__ import annotations

from architectures.backbones import (
    PRETRAINED_FORMATS,
    SPECIAL_BACKBONES,
    PretrainedFile,
    ReferenceReader,
    build_trunk,
    input_spec_for,
)
from architectures.embedding import EmbeddingModel, pool_feature_map
from architectures.settings import ModelSettings

__all__ = [
    "EmbeddingModel",
    "ModelSettings",
    "PRETRAINED_FORMATS",
    "PretrainedFile",
    "ReferenceReader",
    "SPECIAL_BACKBONES",
    "build_model",
    "input_spec_for",
    "pool_feature_map",
]


def build_model(cfg: ModelSettings, reference: ReferenceReader | None = None) -> EmbeddingModel:
    """The embedding network of the model keys (`ModelSettings`: the whole configuration is one); `reference`
    reads checkpoints of the reference implementation as `pretrained_path` (`PretrainedFile`)."""
    weights = PretrainedFile(cfg.pretrained_path, cfg.pretrained_format, reference)
    trunk = build_trunk(cfg.arch, cfg.pretrained, weights)
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
