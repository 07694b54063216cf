"""The configuration keys of the criterion, declared once with their default, help and bounds
(`utilities.settings`): the base loss and its proxies (`CriterionSettings`; each loss's own keys are in its
registry entry) and DADA (`DADASettings`, the reference implementation's defaults). `check_criterion` is the
one check of their values, run by the configuration and by `build_criterion`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from criteria.discriminators import ACTIVATIONS, DISCREPANCIES
from criteria.mixing import MIX_MODES
from criteria.registry import LOSS_NAMES, LossInputs, check_loss_config, loss_help
from utilities.errors import UserError
from utilities.settings import check_settings, setting, settings_of


@dataclass
class CriterionSettings:
    """The base proxy loss, its proxies, and whether DADA wraps it."""

    loss: str = setting("proxy_anchor", loss_help(), LOSS_NAMES, table="base proxy loss (the table below)")
    dada: bool = setting(True, "wrap the base loss with the DADA criterion (false: plain baseline)")
    proxy_init_std: float = setting(0.125, "proxies start as N(0, std^2)", at_least=0)


@dataclass
class DADASettings:
    """DADA's weights, mixup and discriminators (`criteria.dada.DADACriterion`)."""

    proxy_loss_weight: float = setting(0.0075, "r: weight of the proxy loss in the generator objective")
    adv_weight: float = setting(1.0, "gamma: weight of the adversarial terms in the generator objective")
    class_ratio: float = setting(0.01, "rho: share of the class-discrepancy part (1 - rho: domain part)")
    discrepancy_weight: float = setting(0.5, "kappa: weight of the discrepancy inside the class part")
    discrepancy: str = setting("nwd", "discrepancy between sample and mix predictions", tuple(DISCREPANCIES))
    normalize_features: bool = setting(True, "L2-normalise the discriminators' inputs (samples, mixes, proxies)")
    mix_mode: str = setting("random", "sample-proxy mixup", MIX_MODES)
    shift_scale: float = setting(1.0, "shift scale s of the random mixup, -1 < s <= 1", more_than=-1.0, at_most=1.0)
    mix_alpha: float = setting(0.5, "Beta(a, b) of the sample-proxy mix coefficient: a", more_than=0.0)
    mix_beta: float = setting(0.5, "Beta(a, b) of the sample-proxy mix coefficient: b", more_than=0.0)
    pos_class_mix: bool = setting(False, "add mixes of positive pairs to the batch (needs samples_per_class >= 2)")
    domain_hidden: int = setting(512, "hidden width of the 3-way domain discriminator", at_least=1)
    domain_out_bn: bool = setting(False, "BatchNorm on the domain discriminator's output")
    class_hidden1: int = setting(512, "first hidden width of the class discrepancy predictor", at_least=1)
    class_hidden2: int = setting(128, "second hidden width of the class discrepancy predictor", at_least=1)
    class_out_bn: bool = setting(False, "BatchNorm on the class predictor's output")
    dropout: float = setting(0.5, "dropout of the class predictor", at_least=0.0, less_than=1.0)
    activation: str = setting("relu", "activation of the discriminators", tuple(ACTIVATIONS))


def check_dada(settings: DADASettings, samples_per_class: int) -> None:
    """DADA's keys and what they need of the batch."""
    check_settings(DADASettings, settings)
    if settings.pos_class_mix and samples_per_class < 2:
        raise UserError("key 'pos_class_mix' needs samples_per_class >= 2")


class CriterionInputs(LossInputs, Protocol):
    """What `build_criterion` and `check_criterion` read besides the DADA keys (`DADASettings`) and the loss's
    own keys (its registry entry); the configuration is one."""

    proxy_init_std: float
    embed_dim: int
    samples_per_class: int
    seed: int


def check_criterion(cfg: CriterionInputs) -> None:
    """`UserError` (one line naming the key) for the loss, its keys, the proxies and, with `dada`, DADA's keys."""
    check_loss_config(cfg)  # the loss, the values of its own keys, dada with several centres per class
    check_settings(CriterionSettings, cfg)
    if cfg.dada:
        check_dada(settings_of(DADASettings, cfg), cfg.samples_per_class)
