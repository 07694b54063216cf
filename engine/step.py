"""One training iteration of DADA (or of a plain proxy loss): discriminator updates, then generator updates.

The fused step (default) runs the backbone once: the `d_step` discriminator updates use the detached
embeddings of that forward, and the generator objective reuses the same forward. The reference
implementation runs a second, no-grad forward for the discriminators (`fused=False` reproduces it, for the
equality test and the benchmark); with frozen BatchNorm and no dropout in the backbone both orderings do the
same mathematics, because the discriminator updates do not touch the backbone or the proxies.

Under torchrun the embeddings (and labels) of all ranks are gathered, so the criterion sees the global batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.forward import PRECISIONS, ForwardPolicy  # noqa: F401 - PRECISIONS: the `precision` values
from utilities.distributed import DistInfo, gather_batch


@dataclass(kw_only=True)
class StepContext:
    """Everything an iteration needs besides the batch."""

    model: nn.Module
    criterion: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    d_step: int = 3
    g_step: int = 1
    dist: DistInfo = field(default_factory=DistInfo)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward policy's autocast (`engine.forward`)."""
        return ForwardPolicy(self.device, self.precision).autocast()


@dataclass
class StepResult:
    """Detached loss tensors of the iteration (no GPU sync) and the number of skipped updates."""

    logs: dict[str, torch.Tensor]
    skipped: int = 0


def _embed(ctx: StepContext, images: torch.Tensor, warmup: bool, grad: bool) -> torch.Tensor:
    with torch.set_grad_enabled(grad), ctx.autocast():
        embeddings = ctx.model(images, warmup=warmup)
    return gather_batch(embeddings.float(), ctx.dist)


def _finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss).item())


def _discriminator_updates(ctx: StepContext, embeddings: torch.Tensor, labels: torch.Tensor) -> StepResult:
    optimizer = ctx.optimizers["discriminator"]
    totals: dict[str, torch.Tensor] = {}
    skipped = 0
    for _ in range(ctx.d_step):
        optimizer.zero_grad(set_to_none=True)
        loss, logs = ctx.criterion.discriminator_loss(embeddings, labels)
        if not _finite(loss):
            skipped += 1
            continue
        loss.backward()
        optimizer.step()
        for key, value in logs.items():
            totals[key] = totals.get(key, 0) + value / ctx.d_step
    return StepResult(totals, skipped)


def _generator_update(ctx: StepContext, embeddings: torch.Tensor, labels: torch.Tensor) -> StepResult:
    backbone, proxy = ctx.optimizers["backbone"], ctx.optimizers["proxy"]
    backbone.zero_grad(set_to_none=True)
    proxy.zero_grad(set_to_none=True)
    loss, logs = ctx.criterion.generator_loss(embeddings, labels)
    if not _finite(loss):
        return StepResult({}, 1)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(proxy)
        ctx.scaler.step(backbone)
        ctx.scaler.update()
    else:
        loss.backward()
        proxy.step()
        backbone.step()
    return StepResult(logs)


def train_step(
    ctx: StepContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    warmup: bool = False,
    d_warmup: bool = False,
    fused: bool = True,
) -> StepResult:
    """One iteration: `d_step` discriminator updates, then (unless `d_warmup`) `g_step` generator updates.

    `warmup` trains only the embedding head and the proxies (the trunk runs without gradient); `d_warmup`
    trains only the discriminators. `fused=False` is the reference ordering with a second backbone forward.
    """
    labels = gather_batch(labels, ctx.dist)
    adversarial = getattr(ctx.criterion, "adversarial", False)
    result = StepResult({})
    generator_forward = not d_warmup and fused
    embeddings = _embed(ctx, images, warmup, grad=generator_forward) if (adversarial or not d_warmup) else None
    if adversarial:
        d_result = _discriminator_updates(ctx, embeddings.detach(), labels)
        result.logs.update(d_result.logs)
        result.skipped += d_result.skipped
    if d_warmup:
        return result
    for g in range(ctx.g_step):
        if g > 0 or not fused:
            embeddings = _embed(ctx, images, warmup, grad=True)
        g_result = _generator_update(ctx, embeddings, labels)
        result.logs.update(g_result.logs)
        result.skipped += g_result.skipped
    return result
