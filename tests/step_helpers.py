"""A tiny model, criterion and batch for training-step tests (shared by the engine and criteria tests)."""

from __future__ import annotations

import torch

from architectures import build_model
from config import Config, config_from_dict
from criteria import build_criterion
from engine.optim import build_optimizers
from engine.step import StepContext, train_step


def tiny_config(**overrides) -> Config:
    values = dict(
        arch="test_resnet",
        pretrained=False,
        embed_dim=16,
        frozen_bn=True,
        batch_size=12,
        pos_class_mix=True,
        domain_hidden=8,
        class_hidden1=8,
        class_hidden2=6,
        domain_out_bn=True,
        class_out_bn=True,
        dropout=0.5,
        lr=1e-3,
        evaluation_metrics=["recall@1"],
        best_metric="recall@1",
    )
    values.update(overrides)
    return config_from_dict(values)


def build(cfg: Config, n_classes: int = 6):
    torch.manual_seed(0)
    model = build_model(cfg)
    criterion = build_criterion(cfg, n_classes)
    return model, criterion


def batch(n_classes: int = 6, size: int = 12, resolution: int = 32):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, resolution, resolution, generator=generator)
    labels = torch.arange(size) // 2 % n_classes
    return images, labels


def one_iteration(cfg: Config, model, criterion, fused: bool, **flags):
    optimizers = build_optimizers(cfg, model, criterion)
    ctx = StepContext(
        model=model,
        criterion=criterion,
        optimizers=optimizers,
        device=torch.device("cpu"),
        d_step=cfg.d_step,
        g_step=cfg.g_step,
    )
    images, labels = batch()
    criterion.set_epoch(3)
    torch.manual_seed(5)  # dropout of the class predictor
    model.train()
    return train_step(ctx, images, labels, fused=fused, **flags)


def all_parameters(model, criterion) -> dict[str, torch.Tensor]:
    named = {f"model.{k}": v for k, v in model.state_dict().items()}
    named.update({f"criterion.{k}": v for k, v in criterion.state_dict().items()})
    return named
