"""Backbones and the embedding head: frozen BatchNorm, pooling, normalisation, weights files, errors."""

from __future__ import annotations

import types

import pytest
import timm
import torch

from architectures import SPECIAL_BACKBONES, build_model, input_spec_for, pool_feature_map
from datasets.transforms import BNINCEPTION, IMAGENET
from utilities.errors import UserError


def model_config(**overrides) -> types.SimpleNamespace:
    values = dict(arch="test_resnet", pretrained=False, pretrained_path="", pretrained_format="auto",
                  pooling="avgmax", embed_dim=24, embed_norm="layernorm", frozen_bn=True)  # fmt: skip
    values.update(overrides)
    return types.SimpleNamespace(**values)


def test_frozen_batchnorm_keeps_statistics_but_trains_affine_parameters():
    model = build_model(model_config())
    model.train()
    bn = model.trunk.bn1
    assert not bn.training and model.head.training
    before = bn.running_mean.clone()
    out = model(torch.randn(4, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)
    out.sum().backward()
    assert bn.weight.requires_grad and bn.weight.grad is not None

    trainable = build_model(model_config(frozen_bn=False))
    trainable.train()
    trainable(torch.randn(4, 3, 32, 32))
    assert trainable.trunk.bn1.training and not torch.equal(trainable.trunk.bn1.running_mean, before)


def test_pooling_and_embedding_normalisations():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool_feature_map(features, "avg"), features.mean(dim=(2, 3)))
    assert torch.equal(pool_feature_map(features, "max"), features.amax(dim=(2, 3)))
    assert torch.equal(pool_feature_map(features, "avgmax"), features.mean(dim=(2, 3)) + features.amax(dim=(2, 3)))
    # seeded: LayerNorm's output norm is sqrt(24 var / (var + eps)), within 1e-3 of sqrt(24) only when the
    # embedding's variance is well above eps, which unseeded random weights and images did not always give
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    layer = build_model(model_config(embed_norm="layernorm")).eval()(images)
    torch.testing.assert_close(layer.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.norm(dim=1), torch.full((3,), 24**0.5), atol=1e-3, rtol=0)
    unit = build_model(model_config(embed_norm="l2")).eval()(images)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
    raw = build_model(model_config(embed_norm="none", embed_dim=7)).eval()(images)
    assert raw.shape == (3, 7)


def test_warmup_forward_trains_only_the_head():
    model = build_model(model_config())
    model(torch.randn(4, 3, 32, 32), warmup=True).sum().backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.trunk.parameters())


def test_token_backbones_use_their_own_pooling():
    model = build_model(model_config(arch="test_vit"))
    size = model.trunk.pretrained_cfg["input_size"][-1]
    assert model.token_pool and model(torch.randn(2, 3, size, size)).shape == (2, 24)


def test_local_weights_file_is_loaded_without_network(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.nn.init.constant_(source.conv1[0].weight, 0.25)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)  # includes the ImageNet-style classifier, which is dropped
    model = build_model(model_config(pretrained=True, pretrained_path=str(path)))
    assert torch.equal(model.trunk.conv1[0].weight, source.conv1[0].weight)


def test_weights_without_batchnorm_counters_load(tmp_path):
    """Converted weights often lack BatchNorm's num_batches_tracked buffers; they load, every tensor in place."""
    source = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.nn.init.constant_(source.conv1[0].weight, 0.5)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(source.state_dict())
    path = tmp_path / "converted.pth"
    torch.save(state, path)
    model = build_model(model_config(pretrained=True, pretrained_path=str(path)))
    for key, value in model.trunk.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key
    # a real mismatch is still refused: one weight missing besides the counters
    del state["conv1.0.weight"]
    torch.save(state, path)
    with pytest.raises(
        UserError, match=r"does not fit backbone 'test_resnet' \(1 missing tensors, e.g. conv1.0.weight"
    ):
        build_model(model_config(pretrained=True, pretrained_path=str(path)))


def test_weights_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pretrained_path: file not found"):
        build_model(model_config(pretrained=True, pretrained_path=str(tmp_path / "none.pth")))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_convnext", num_classes=0).state_dict(), other)
    with pytest.raises(UserError, match="does not fit backbone 'test_resnet'"):
        build_model(model_config(pretrained=True, pretrained_path=str(other)))
    import huggingface_hub.constants

    # no network and no cache: the hub client is told so directly (its environment is read at import time)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match="set pretrained_path: FILE"):
        build_model(model_config(pretrained=True))
    with pytest.raises(UserError, match="unknown backbone 'resnet5000'"):
        build_model(model_config(arch="resnet5000"))


def test_input_normalisation_comes_from_the_backbone():
    assert input_spec_for("resnet50.tv_in1k") == IMAGENET
    assert input_spec_for("bninception") == BNINCEPTION
    assert input_spec_for("vit_small_patch16_224.augreg_in21k").mean == (0.5, 0.5, 0.5)


def test_bninception_builds_with_its_own_input_convention():
    model = build_model(model_config(arch="bninception"))
    assert model.input_spec.bgr and model(torch.randn(2, 3, 224, 224)).shape == (2, 24)


@pytest.mark.parametrize("name", sorted(SPECIAL_BACKBONES))
def test_special_backbones_declare_the_normalisation_they_build_with(name):
    """A non-timm backbone's registry entry is the one place that says its input normalisation."""
    from architectures.backbones import build_trunk

    trunk = build_trunk(name, pretrained=False)
    assert trunk.input_spec == SPECIAL_BACKBONES[name].input_spec == input_spec_for(name)
    assert trunk.module.forward_features(torch.zeros(1, 3, 64, 64)).dim() == 4
