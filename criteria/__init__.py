"""Proxy losses and the DADA criterion.

Entry point: ``build_criterion(cfg, n_classes)`` builds the base proxy loss named by ``cfg.loss`` (one of
``criteria.registry.LOSSES``) and wraps it either in ``DADACriterion`` (``cfg.dada``) or in the plain
``ProxyCriterion`` baseline; both satisfy the ``Criterion`` protocol of ``criteria.base``.
"""

from __future__ import annotations

from typing import Any

from criteria.base import AdversarialCriterion, Criterion, LossEntry, LossKey, ProxyLoss
from criteria.dada import DADACriterion, ProxyCriterion
from criteria.mixing import FixedDraws, MixSource, SeededBetaSource
from criteria.norm_softmax import NormSoftmaxLoss
from criteria.proxy_losses import (
    ProxyAnchorLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    SoftplusProxyLoss,
    masked_logsumexp,
)
from criteria.registry import LOSS_KEYS, LOSSES, PROXY_LOSSES, build_base_loss
from criteria.settings import CriterionInputs, CriterionSettings, DADASettings, check_criterion
from criteria.softtriple import SoftTripleLoss
from utilities.settings import defaults_of, settings_of

__all__ = [
    "CRITERION_DEFAULTS",
    "LOSSES",
    "AdversarialCriterion",
    "CriterionInputs",
    "CriterionSettings",
    "Criterion",
    "DADACriterion",
    "DADASettings",
    "FixedDraws",
    "LossEntry",
    "LossKey",
    "MixSource",
    "NormSoftmaxLoss",
    "PROXY_LOSSES",
    "ProxyAnchorLoss",
    "ProxyCriterion",
    "ProxyLoss",
    "ProxyNCALoss",
    "ProxyNCAPlusPlusLoss",
    "SeededBetaSource",
    "SoftTripleLoss",
    "SoftplusProxyLoss",
    "build_base_loss",
    "build_criterion",
    "masked_logsumexp",
]


OTHER_PARTS_DEFAULTS: dict[str, Any] = {"embed_dim": 512, "samples_per_class": 2, "seed": 0}
"""The schema defaults of the keys `build_criterion` reads from other parts (tests/criteria checks them)."""

CRITERION_DEFAULTS: dict[str, Any] = {
    **defaults_of(CriterionSettings),
    **{name: key.default for name, key in LOSS_KEYS.items()},
    **defaults_of(DADASettings),
    **OTHER_PARTS_DEFAULTS,
}
"""Every key `build_criterion` reads, with its default: for building a criterion without a configuration."""


def build_criterion(cfg: CriterionInputs, n_classes: int) -> DADACriterion | ProxyCriterion:
    """``DADACriterion`` (``cfg.dada``) or ``ProxyCriterion`` around the base loss ``cfg.loss``.

    ``UserError`` for impossible settings (`criteria.settings.check_criterion`, the one check), and for
    ``dada`` with a loss of several proxies per class. The Beta draws come from ``SeededBetaSource(cfg.seed)``:
    identical on every process.
    """
    check_criterion(cfg)
    base_loss = build_base_loss(cfg)
    if not cfg.dada:
        return ProxyCriterion(base_loss, n_classes, cfg.embed_dim, proxy_init_std=cfg.proxy_init_std)
    return DADACriterion(
        base_loss,
        n_classes,
        cfg.embed_dim,
        settings_of(DADASettings, cfg),
        samples_per_class=cfg.samples_per_class,
        proxy_init_std=cfg.proxy_init_std,
        mix_source=SeededBetaSource(cfg.seed),
    )
