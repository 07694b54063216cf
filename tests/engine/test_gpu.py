"""CUDA paths: the training step under bf16 and fp16 autocast, fused == two-forward on CUDA, kNN backends.

Every test is marked `gpu` (skipped without CUDA; `bash benchmarks/gpu_check.sh` runs them on a GPU machine).
The checks are written as `check_*` functions of a device so that their logic can also be exercised on the
CPU by hand (`check_low_precision_step(torch.device("cpu"), "bf16")`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from step_helpers import tiny_config as cpu_tiny_config

from architectures import build_model
from config import Config
from criteria import build_criterion
from engine.optim import build_optimizers
from engine.step import StepContext, train_step

N_CLASSES = 6


def tiny_config(**overrides) -> Config:
    """The CPU step tests' tiny setting, without dropout (deterministic across devices)."""
    return cpu_tiny_config(**{"dropout": 0.0, **overrides})


def build(cfg: Config, device: torch.device):
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    criterion = build_criterion(cfg, N_CLASSES).to(device)
    return model, criterion


def batch(device: torch.device, resolution: int = 32):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, resolution, resolution, generator=generator)
    labels = torch.arange(12) // 2 % N_CLASSES
    return images.to(device), labels.to(device)


def snapshot(model, criterion) -> dict[str, torch.Tensor]:
    named = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    named.update({f"criterion.{k}": v.detach().clone() for k, v in criterion.state_dict().items()})
    return named


def check_low_precision_step(device: torch.device, precision: str, iterations: int = 3) -> None:
    """bf16 / fp16 autocast steps (fp16 with a GradScaler): finite float32 losses, every part of the model
    moves, proxies stay float32, the scaler's scale stays finite."""
    cfg = tiny_config(precision=precision)
    model, criterion = build(cfg, device)
    model = model.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(cfg, model, criterion)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ctx = StepContext(
        model=model, criterion=criterion, optimizers=optimizers, device=device, precision=precision, scaler=scaler
    )
    images, labels = batch(device)
    images = images.contiguous(memory_format=torch.channels_last)
    before = snapshot(model, criterion)
    model.train()
    for _ in range(iterations):
        result = train_step(ctx, images, labels)
        assert result.skipped == 0
        for key in ("generator_loss", "discriminator_loss", "proxy_loss"):
            value = result.logs[key]
            assert value.dtype == torch.float32 and torch.isfinite(value), key
    after = snapshot(model, criterion)
    for key in ("model.trunk.conv1.0.weight", "model.head.weight", "criterion.proxies", "criterion.domain.fc1.weight"):
        assert not torch.equal(after[key], before[key]), f"{key} did not move under {precision}"
        assert torch.isfinite(after[key]).all(), key
    assert criterion.proxies.dtype == torch.float32
    if scaler is not None:
        assert 0 < scaler.get_scale() <= 2.0**16 and np.isfinite(scaler.get_scale())


def check_fused_equals_two_forward(device: torch.device) -> None:
    """The fused step and the reference's two-forward ordering give the same parameters on `device`.

    float32 with TF32 off and deterministic cuDNN algorithms: both orderings then run the same kernels on the
    same inputs, and the only possible difference is the accumulation order of a convolution algorithm that
    cuDNN might pick differently for the no-grad forward. SGD (not Adam, whose first step is lr * sign(g)
    and would turn a rounding-level gradient difference near zero into a 2 * lr jump) keeps parameter
    differences proportional to gradient differences, so 1e-5 absolute (about 100 float32 ulps of the
    O(0.1) weights, 1000 times below the size of one update) detects any real difference in the mathematics.
    """
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        cfg = tiny_config()
        results, states = [], []
        model, criterion = build(cfg, device)
        pristine = (copy.deepcopy(model), copy.deepcopy(criterion))
        for fused in (True, False):
            model, criterion = copy.deepcopy(pristine[0]), copy.deepcopy(pristine[1])
            optimizers = {
                "backbone": torch.optim.SGD(model.parameters(), lr=0.05),
                "proxy": torch.optim.SGD([criterion.proxies], lr=0.05),
                "discriminator": torch.optim.SGD(
                    [*criterion.domain.parameters(), *criterion.classifier.parameters()], lr=0.05
                ),
            }
            ctx = StepContext(model=model, criterion=criterion, optimizers=optimizers, device=device)
            criterion.mix_source.set_epoch(3)
            images, labels = batch(device)
            model.train()
            results.append(train_step(ctx, images, labels, fused=fused))
            states.append(snapshot(model, criterion))
        before = snapshot(*pristine)
        moved = 0
        for key, value in states[0].items():
            torch.testing.assert_close(value, states[1][key], rtol=0, atol=1e-5, msg=key)
            moved += int(not torch.equal(value, before[key]))
        assert moved > 50
        for key in ("generator_loss", "discriminator_loss", "proxy_loss"):
            torch.testing.assert_close(results[0].logs[key], results[1].logs[key], rtol=1e-5, atol=1e-6)
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved


def clustered(items: int = 3000, classes: int = 60, dim: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(items) % classes)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    x = centres[labels] + 0.9 * rng.standard_normal((items, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


RETRIEVAL = ["recall@1", "recall@4", "map@r", "r_precision", "map@r_legacy", "map@1000"]


def check_knn_backends(device: torch.device) -> None:
    """The torch kNN backend on `device` (bf16 candidates + exact re-scoring) returns exactly the CPU
    reference's retrieval metrics; `auto` picks it; query/gallery evaluation likewise. Duplicated rows check
    that ties are still broken by index on the device."""
    from metrics import compute_metrics, compute_query_gallery_metrics, resolve_backend

    x, y = clustered()
    x[100:110] = x[200]  # exact duplicates of one row: ties
    y[100:110] = y[200]
    reference = compute_metrics(x, y, RETRIEVAL, backend="torch", device="cpu")
    on_device, info = compute_metrics(x, y, RETRIEVAL, backend="torch", device=device, return_info=True)
    assert on_device == reference
    assert info["backend"] == "torch"
    assert resolve_backend("auto", device)[0] == "torch"
    assert compute_metrics(x, y, RETRIEVAL, backend="auto", device=device) == reference
    queries, gallery = slice(0, 1000), slice(1000, None)
    args = (x[queries], y[queries], x[gallery], y[gallery], ["recall@1", "recall@10", "map@r"])
    assert compute_query_gallery_metrics(*args, backend="torch", device=device) == compute_query_gallery_metrics(
        *args, backend="torch", device="cpu"
    )
    clustering = compute_metrics(x, y, ["nmi", "f1"], backend="torch", device=device)
    assert all(0.5 < value <= 1.0 for value in clustering.values()), clustering


CUDA = torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_step_on_cuda(precision: str) -> None:
    check_low_precision_step(CUDA, precision)


@pytest.mark.gpu
def test_fused_step_equals_two_forward_on_cuda() -> None:
    check_fused_equals_two_forward(CUDA)


@pytest.mark.gpu
def test_knn_backends_on_cuda_match_the_cpu() -> None:
    check_knn_backends(CUDA)
