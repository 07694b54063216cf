"""Proxy losses and the DADA criterion.

Entry point: ``build_criterion(cfg, n_classes)`` builds the base proxy loss named by ``cfg.loss`` (one of
``criteria.registry.LOSSES``) and wraps it either in ``DADACriterion`` (``cfg.dada``) or in the plain
``ProxyCriterion`` baseline; both satisfy the ``Criterion`` protocol of ``criteria.base``.
"""

from __future__ import annotations

from typing import Any

from criteria.base import AdversarialCriterion, Criterion, LossEntry, LossKey, ProxyLoss
from criteria.dada import DADACriterion, ProxyCriterion
from criteria.discriminators import ACTIVATIONS, DISCREPANCIES
from criteria.mixing import MIX_MODES, FixedDraws, MixSource, SeededBetaSource
from criteria.norm_softmax import NormSoftmaxLoss
from criteria.proxy_losses import (
    ProxyAnchorLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    SoftplusProxyLoss,
    masked_logsumexp,
)
from criteria.registry import LOSS_KEYS, LOSSES, PROXY_LOSSES, build_base_loss, check_loss_config
from criteria.softtriple import SoftTripleLoss
from utilities.errors import UserError

__all__ = [
    "CRITERION_DEFAULTS",
    "LOSSES",
    "AdversarialCriterion",
    "Criterion",
    "DADACriterion",
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

# Every configuration key read by build_criterion, with the reference implementation's default value
# (its parameters.py / docs/reference.md §5.3); the keys of the base losses come from their registry entries.
# The configuration schema owns the defaults; this documents them.
CRITERION_DEFAULTS: dict[str, Any] = {
    "loss": "proxy_anchor",
    "dada": True,
    "embed_dim": 512,
    **{name: key.default for name, key in LOSS_KEYS.items()},
    "proxy_loss_weight": 0.0075,
    "adv_weight": 1.0,
    "class_ratio": 0.01,
    "discrepancy_weight": 0.5,
    "discrepancy": "nwd",
    "normalize_features": True,
    "mix_mode": "random",
    "shift_scale": 1.0,
    "mix_alpha": 0.5,
    "mix_beta": 0.5,
    "pos_class_mix": False,
    "samples_per_class": 2,
    "domain_hidden": 512,
    "domain_out_bn": False,
    "class_hidden1": 512,
    "class_hidden2": 128,
    "class_out_bn": False,
    "dropout": 0.5,
    "activation": "relu",
    "proxy_init_std": 0.125,
    "seed": 0,
}


def _require_choice(cfg: Any, key: str, choices: Any) -> None:
    value = getattr(cfg, key)
    if value not in choices:
        raise UserError(f"{key}: unknown value {value!r}; expected one of {', '.join(sorted(choices))}")


def _check_dada_config(cfg: Any) -> None:
    _require_choice(cfg, "discrepancy", DISCREPANCIES)
    _require_choice(cfg, "mix_mode", MIX_MODES)
    _require_choice(cfg, "activation", ACTIVATIONS)
    if not -1.0 < cfg.shift_scale <= 1.0:
        raise UserError(f"shift_scale: expected -1 < shift_scale <= 1, got {cfg.shift_scale!r}")
    if cfg.pos_class_mix and cfg.samples_per_class < 2:
        raise UserError(f"samples_per_class: pos_class_mix needs at least 2, got {cfg.samples_per_class!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"dropout: expected 0 <= dropout < 1, got {cfg.dropout!r}")
    if cfg.mix_alpha <= 0 or cfg.mix_beta <= 0:
        raise UserError(f"mix_alpha/mix_beta: Beta parameters must be > 0, got {cfg.mix_alpha}, {cfg.mix_beta}")


def build_criterion(cfg: Any, n_classes: int) -> DADACriterion | ProxyCriterion:
    """``DADACriterion`` (``cfg.dada``) or ``ProxyCriterion`` around the base loss ``cfg.loss``.

    ``UserError`` for impossible loss settings, and for ``dada`` with a loss of several proxies per class.
    The Beta draws come from ``SeededBetaSource(cfg.seed)``: identical on every process.
    """
    check_loss_config(cfg)
    base_loss = build_base_loss(cfg)
    if not cfg.dada:
        return ProxyCriterion(base_loss, n_classes, cfg.embed_dim, proxy_init_std=cfg.proxy_init_std)
    _check_dada_config(cfg)
    return DADACriterion(
        base_loss,
        n_classes,
        cfg.embed_dim,
        proxy_loss_weight=cfg.proxy_loss_weight,
        adv_weight=cfg.adv_weight,
        class_ratio=cfg.class_ratio,
        discrepancy_weight=cfg.discrepancy_weight,
        discrepancy=cfg.discrepancy,
        normalize_features=cfg.normalize_features,
        mix_mode=cfg.mix_mode,
        shift_scale=cfg.shift_scale,
        mix_alpha=cfg.mix_alpha,
        mix_beta=cfg.mix_beta,
        pos_class_mix=cfg.pos_class_mix,
        samples_per_class=cfg.samples_per_class,
        domain_hidden=cfg.domain_hidden,
        domain_out_bn=cfg.domain_out_bn,
        class_hidden1=cfg.class_hidden1,
        class_hidden2=cfg.class_hidden2,
        class_out_bn=cfg.class_out_bn,
        dropout=cfg.dropout,
        activation=cfg.activation,
        proxy_init_std=cfg.proxy_init_std,
        mix_source=SeededBetaSource(cfg.seed),
    )
