"""Every registry is a read-only view: nothing outside the place that registers an entry can change it."""

from __future__ import annotations

import importlib
from types import MappingProxyType

import pytest

REGISTRIES = [
    ("architectures.backbones", "SPECIAL_BACKBONES"),
    ("architectures.embedding", "POOLINGS"),
    ("compat.options", "REFERENCE_OPTIONS"),
    ("criteria.discriminators", "ACTIVATIONS"),
    ("criteria.discriminators", "DISCREPANCIES"),
    ("criteria.registry", "LOSSES"),
    ("criteria.registry", "LOSS_KEYS"),
    ("criteria.registry", "PROXY_LOSSES"),
    ("datasets.base", "IMAGE_LOADERS"),
    ("datasets.build", "DATASETS"),
    ("datasets.samplers", "SAMPLERS"),
    ("datasets.transforms", "AUGMENTATIONS"),
    ("engine.forward", "PRECISIONS"),
    ("engine.optim", "OPTIMIZERS"),
    ("engine.optim", "SCHEDULES"),
]


@pytest.mark.parametrize(("module", "name"), REGISTRIES)
def test_a_registry_refuses_assignment_and_deletion(module: str, name: str) -> None:
    registry = getattr(importlib.import_module(module), name)
    assert isinstance(registry, MappingProxyType) and registry
    first = next(iter(registry))
    with pytest.raises(TypeError):
        registry["another"] = registry[first]
    with pytest.raises(TypeError):
        del registry[first]
    assert "another" not in registry and first in registry


def test_register_loss_is_the_way_into_the_loss_registry() -> None:
    from criteria import base
    from criteria.registry import LOSSES

    entry = base.LossEntry(
        name="registered_by_a_test",
        loss_class=base.ProxyLoss,
        build=lambda cfg: base.ProxyLoss(),
        keys=(),
        one_proxy_per_class=True,
        doc="a test's entry",
    )
    try:
        assert base.register_loss(entry) is entry
        assert LOSSES["registered_by_a_test"] is entry
    finally:
        base._REGISTERED.pop("registered_by_a_test", None)
    assert "registered_by_a_test" not in LOSSES
