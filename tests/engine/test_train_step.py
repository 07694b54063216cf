"""The fused adversarial step equals the reference's two-forward ordering; precision and skip behaviour."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from step_helpers import all_parameters, batch, build, one_iteration, tiny_config

from engine.optim import build_optimizers, build_schedulers, schedule_steps_after
from engine.step import StepContext, train_step


@pytest.mark.parametrize("g_step", [1, 2])
def test_fused_step_equals_two_forward_reference(g_step):
    cfg = tiny_config(g_step=g_step)
    model, criterion = build(cfg)
    ref_model, ref_criterion = copy.deepcopy(model), copy.deepcopy(criterion)
    before = {k: v.clone() for k, v in all_parameters(model, criterion).items()}

    fused = one_iteration(cfg, model, criterion, fused=True)
    reference = one_iteration(cfg, ref_model, ref_criterion, fused=False)

    after, ref_after = all_parameters(model, criterion), all_parameters(ref_model, ref_criterion)
    changed = 0
    for key, value in after.items():
        torch.testing.assert_close(value, ref_after[key], rtol=0, atol=1e-6, msg=key)
        changed += int(not torch.equal(value, before[key]))
    # backbone, head, proxies, both discriminators all moved
    assert changed > 50
    assert not torch.equal(after["criterion.proxies"], before["criterion.proxies"])
    assert not torch.equal(after["model.head.weight"], before["model.head.weight"])
    assert not torch.equal(after["model.trunk.conv1.0.weight"], before["model.trunk.conv1.0.weight"])
    for key in ("generator_loss", "discriminator_loss", "proxy_loss"):
        torch.testing.assert_close(fused.logs[key], reference.logs[key], rtol=0, atol=1e-6)


def test_warmup_trains_head_and_proxies_only_and_d_warmup_only_discriminators():
    cfg = tiny_config()
    model, criterion = build(cfg)
    before = {k: v.clone() for k, v in all_parameters(model, criterion).items()}
    one_iteration(cfg, model, criterion, fused=True, warmup=True)
    after = all_parameters(model, criterion)
    assert torch.equal(after["model.trunk.conv1.0.weight"], before["model.trunk.conv1.0.weight"])
    assert not torch.equal(after["model.head.weight"], before["model.head.weight"])
    assert not torch.equal(after["criterion.proxies"], before["criterion.proxies"])

    model, criterion = build(cfg)
    before = {k: v.clone() for k, v in all_parameters(model, criterion).items()}
    result = one_iteration(cfg, model, criterion, fused=True, d_warmup=True)
    after = all_parameters(model, criterion)
    assert "generator_loss" not in result.logs and "discriminator_loss" in result.logs
    assert torch.equal(after["model.head.weight"], before["model.head.weight"])
    assert torch.equal(after["criterion.proxies"], before["criterion.proxies"])
    assert not torch.equal(after["criterion.domain.fc1.weight"], before["criterion.domain.fc1.weight"])


def test_plain_baseline_has_no_discriminator_phase():
    cfg = tiny_config(dada=False)
    model, criterion = build(cfg)
    optimizers = build_optimizers(cfg, model, criterion)
    assert set(optimizers) == {"backbone", "proxy"}
    result = one_iteration(cfg, model, criterion, fused=True)
    assert set(result.logs) == {"proxy_loss"}


def test_non_finite_loss_skips_the_update():
    cfg = tiny_config()
    model, criterion = build(cfg)
    with torch.no_grad():
        criterion.proxies[0, 0] = float("nan")
    before = {k: v.clone() for k, v in all_parameters(model, criterion).items()}
    result = one_iteration(cfg, model, criterion, fused=True)
    assert result.skipped == cfg.d_step + cfg.g_step
    after = all_parameters(model, criterion)
    for key, value in after.items():
        if "running" in key or "num_batches" in key:
            continue  # discriminator BatchNorm statistics update in the forward pass
        assert torch.equal(value, before[key]) or torch.isnan(value).any(), key


def test_bf16_autocast_step_runs_and_keeps_loss_math_in_float32():
    cfg = tiny_config(precision="bf16")
    model, criterion = build(cfg)
    optimizers = build_optimizers(cfg, model, criterion)
    ctx = StepContext(
        model=model, criterion=criterion, optimizers=optimizers, device=torch.device("cpu"), precision="bf16"
    )
    images, labels = batch()
    result = train_step(ctx, images, labels)
    assert result.skipped == 0
    assert all(v.dtype == torch.float32 for v in result.logs.values())
    assert criterion.proxies.dtype == torch.float32


def test_optimizer_groups_and_schedules_follow_the_reference():
    cfg = tiny_config(mix_mode="individual", weight_decay=1e-4, disc_decay=4e-4, lr_step=4, lr_gamma=0.45)
    model, criterion = build(cfg)
    optimizers = build_optimizers(cfg, model, criterion)
    assert optimizers["backbone"].defaults["lr"] == cfg.lr
    assert optimizers["backbone"].defaults["weight_decay"] == 1e-4
    proxy_groups = optimizers["proxy"].param_groups
    assert [(g["lr"], g["weight_decay"]) for g in proxy_groups] == [(0.04, 0.0), (5e-4, 0.0)]
    assert all(g["weight_decay"] == 4e-4 and g["lr"] == 5e-4 for g in optimizers["discriminator"].param_groups)
    schedulers = build_schedulers(cfg, optimizers)
    assert set(schedulers) == set(optimizers)
    # steps count only after warm-up epochs: epoch 0 is d_warmup (and warmup) in the CUB setting
    assert not schedule_steps_after(0, warmup=1, d_warmup=1) and schedule_steps_after(1, warmup=1, d_warmup=1)
    none = build_schedulers(types.SimpleNamespace(**{**cfg.to_dict(), "scheduler": "none"}), optimizers)
    assert none == {}
