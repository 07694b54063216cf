"""The loss registry and the criterion seams: schema keys, optimizer-group coverage, learnable loss
parameters, the DADA / several-centres check."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from step_helpers import build, one_iteration, tiny_config

import main
from config import FIELDS, Config
from config.command_line import build_parser
from criteria import AdversarialCriterion, Criterion, ProxyLoss, build_criterion
from criteria.base import group
from criteria.registry import LOSS_KEYS, LOSS_NAMES, LOSSES
from engine.optim import build_optimizers, check_group_coverage
from utilities.errors import EXIT_USER_ERROR, UserError

SCHEMA_TYPES = typing.get_type_hints(Config)


def learnable_variant(name: str) -> dict[str, bool]:
    """Every boolean key of the loss set to true: its learnable options (temperature, scale) switched on."""
    return {key.name: True for key in LOSSES[name].keys if isinstance(key.default, bool)}


# -- the schema derives from the registry ----------------------------------------------------------------


def test_loss_choices_and_help_come_from_the_registry():
    assert FIELDS["loss"].metadata["choices"] == LOSS_NAMES
    help_text = build_parser("test").format_help()
    for name, entry in LOSSES.items():
        assert name in help_text
        for key in entry.keys:
            assert f"--{key.name}" in help_text


@pytest.mark.parametrize("name", sorted(LOSS_KEYS))
def test_every_key_a_loss_reads_is_in_the_schema_with_the_same_default(name):
    key = LOSS_KEYS[name]
    assert name in FIELDS, f"loss key {name} is not a configuration key"
    field = FIELDS[name]
    assert field.default == key.default and field.default is not dataclasses.MISSING
    assert type(key.default) is SCHEMA_TYPES[name]
    assert field.metadata["help"] == key.help
    assert field.metadata["choices"] == key.choices


def test_entries_are_complete():
    for name, entry in LOSSES.items():
        assert entry.name == name and entry.doc and issubclass(entry.loss_class, ProxyLoss)
        loss = entry.build(Config())
        assert isinstance(loss, entry.loss_class)
        assert (loss.proxies_per_class == 1) is entry.one_proxy_per_class


# -- every trainable parameter is in exactly one optimizer group -----------------------------------------

CASES = [
    pytest.param(name, dada, mix_mode, learn, id=f"{name}-{'dada-' + mix_mode if dada else 'plain'}-{learn}")
    for name in LOSS_NAMES
    for learn in (["default", "learnable"] if learnable_variant(name) else ["default"])
    for dada, mix_mode in [(True, "random"), (True, "individual"), (True, "linear"), (False, "random")]
    if LOSSES[name].one_proxy_per_class or not dada
]


@pytest.mark.parametrize("name, dada, mix_mode, learn", CASES)
def test_every_trainable_parameter_is_in_exactly_one_optimizer_group(name, dada, mix_mode, learn):
    overrides = learnable_variant(name) if learn == "learnable" else {}
    cfg = tiny_config(loss=name, dada=dada, mix_mode=mix_mode, **overrides)
    model, criterion = build(cfg)
    assert isinstance(criterion, AdversarialCriterion if dada else Criterion)
    optimizers = build_optimizers(cfg, model, criterion)
    trainable = [p for module in (model, criterion) for p in module.parameters() if p.requires_grad]
    grouped = [id(p) for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainable)
    assert len(set(grouped)) == len(grouped)


class _DeclaredByDefaultLoss(ProxyLoss):
    """A loss with a parameter of its own and the default ``param_groups``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, embeddings, labels, proxies):
        return self.scale * (embeddings @ proxies.T).mean()


class _HiddenParameterLoss(_DeclaredByDefaultLoss):
    """A loss that owns a parameter but overrides ``param_groups`` and leaves it out."""

    def param_groups(self, proxies, proxy_lr):
        return [group([proxies], proxy_lr)]


def test_a_loss_parameter_joins_the_optimizer_by_default():
    cfg = tiny_config(dada=False)
    model, criterion = build(cfg)
    criterion.base_loss = _DeclaredByDefaultLoss()
    optimizers = build_optimizers(cfg, model, criterion)
    assert any(p is criterion.base_loss.scale for g in optimizers["proxy"].param_groups for p in g["params"])


def test_a_parameter_missing_from_the_groups_stops_the_optimizer_build():
    cfg = tiny_config(dada=False)
    model, criterion = build(cfg)
    criterion.base_loss = _HiddenParameterLoss()
    with pytest.raises(RuntimeError, match="no optimizer group: base_loss.scale"):
        build_optimizers(cfg, model, criterion)
    groups = [group([criterion.proxies], 0.1), group([criterion.proxies], 0.1)]
    with pytest.raises(RuntimeError, match="two optimizer groups"):
        check_group_coverage([criterion], groups)


# -- learnable loss parameters train ---------------------------------------------------------------------

LEARNABLE = [
    ("proxy_nca_pp", {"nca_learn_temperature": True}, "base_loss.log_temperature", True),
    ("proxy_nca_pp", {"nca_learn_temperature": True}, "base_loss.log_temperature", False),
    ("norm_softmax", {"normsoftmax_learn_scale": True, "normsoftmax_margin": 0.35}, "base_loss.log_scale", True),
    ("softtriple", {"softtriple_centers": 3}, "proxies", False),
]


@pytest.mark.parametrize("name, overrides, parameter, dada", LEARNABLE)
def test_learnable_loss_parameters_change_after_one_step(name, overrides, parameter, dada):
    cfg = tiny_config(loss=name, dada=dada, d_step=1, **overrides)
    model, criterion = build(cfg)
    before = criterion.get_parameter(parameter).detach().clone()
    result = one_iteration(cfg, model, criterion, fused=True)
    assert result.skipped == 0
    assert not torch.equal(criterion.get_parameter(parameter), before)


def test_softtriple_centres_have_their_own_learning_rate_and_k_rows_per_class():
    cfg = tiny_config(loss="softtriple", dada=False, softtriple_centers=4, softtriple_lr=0.02)
    model, criterion = build(cfg, n_classes=6)
    assert criterion.proxies.shape == (6 * 4, cfg.embed_dim)
    optimizers = build_optimizers(cfg, model, criterion)
    assert [(g["lr"], g["weight_decay"]) for g in optimizers["proxy"].param_groups] == [(0.02, 0.0)]


def test_learnable_temperature_starts_at_the_configured_value_and_default_stays_fixed():
    fixed = build_criterion(tiny_config(loss="proxy_nca_pp", dada=False, nca_temperature=0.25), 6)
    assert fixed.base_loss.log_temperature is None and fixed.base_loss.temperature == 0.25
    learnt = build_criterion(tiny_config(loss="proxy_nca_pp", dada=False, nca_learn_temperature=True), 6)
    assert learnt.base_loss.temperature == pytest.approx(1 / 9)


# -- dada with several centres per class -----------------------------------------------------------------


def test_dada_with_a_multi_centre_loss_stops_at_start(capsys, tmp_path):
    code = main.main(["--loss", "softtriple", "--save_path", str(tmp_path)])
    assert code == EXIT_USER_ERROR == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DADA's domains need one proxy per class" in err[0] and "softtriple" in err[0]
    assert not any(tmp_path.iterdir())
    with pytest.raises(UserError, match="several centres per class"):
        tiny_config(loss="softtriple", dada=True)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"loss": "proxy_nca_pp", "nca_temperature": 0.0}, "nca_temperature"),
        ({"loss": "softtriple", "dada": False, "softtriple_centers": 0}, "softtriple_centers"),
        ({"loss": "softtriple", "dada": False, "softtriple_gamma": 0.0}, "softtriple_gamma"),
        ({"loss": "norm_softmax", "normsoftmax_scale": -1.0}, "normsoftmax_scale"),
    ],
)
def test_impossible_loss_values_are_user_errors(overrides, key):
    with pytest.raises(UserError, match=key):
        tiny_config(**overrides)


def test_the_registry_is_read_only_and_a_name_registers_once():
    from criteria.base import register_loss
    from criteria.registry import LOSSES

    with pytest.raises(TypeError):
        LOSSES["another"] = LOSSES["proxy_anchor"]  # type: ignore[index]
    with pytest.raises(RuntimeError, match="two losses named 'proxy_anchor'"):
        register_loss(LOSSES["proxy_anchor"])
