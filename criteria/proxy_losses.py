"""Base proxy losses: small modules that do NOT own their proxies.

One calling convention for all of them::

    loss = base_loss(embeddings, labels, proxies)   # [N, D] float, [N] long, [C, D] float -> scalar

The criterion that wraps a base loss (``ProxyCriterion`` or ``DADACriterion``) owns the proxies, so the
same loss can be used with or without the DADA adversarial part, and tests can hand any proxies in.
Every loss L2-normalises embeddings and proxies itself and computes in float32 even under autocast.
The four losses of this module are registered in ``criteria.registry`` through the entries at the end.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from criteria.base import LossEntry, LossKey, ProxyLoss, register_loss
from criteria.precision import float32_forward
from utilities.errors import UserError

POSITIVE_MEANS = ("sample", "proxy")


def masked_logsumexp(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """log(1 + Σ_{mask} exp(values)) along ``dim``, and exactly 0 where the mask is empty along ``dim``.

    The "1 +" comes from a column of zeros appended along ``dim``; masked-out entries are set to the most
    negative finite float rather than -inf so that the backward pass never produces NaN. This is the
    soft-plus-of-a-sum that Proxy-Anchor style losses need (docs/reference.md §1.4). ``dim`` is reduced away.
    """
    filled = values.masked_fill(~mask, torch.finfo(values.dtype).min)
    zeros_shape = list(values.shape)
    zeros_shape[dim] = 1
    padded = torch.cat([filled, filled.new_zeros(zeros_shape)], dim=dim)
    return torch.logsumexp(padded, dim=dim).masked_fill(~mask.any(dim=dim), 0.0)


def _cosine(embeddings: Tensor, proxies: Tensor) -> tuple[Tensor, Tensor]:
    """Row-normalised embeddings and proxies (F.normalize, eps 1e-12, as the reference)."""
    return F.normalize(embeddings, dim=-1), F.normalize(proxies, dim=-1)


class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020) with separate positive/negative scales and margins.

    With cosine similarities s_{n,c} = <n̂(e_n), n̂(w_c)>:

    * L_neg = (1/C) Σ_c log(1 + Σ_{n: y_n ≠ c} exp(α₋ (s_{n,c} − δ₋)))       (δ₋ = −0.1 by default)
    * L_pos, ``positive_mean="sample"`` (the DADA reference, docs/reference.md §1.4, proxy_dim 0): averaged over the
      N per-sample columns, column j being the proxy of sample j's class —
      (1/N) Σ_j log(1 + Σ_{n: y_n = y_j} exp(−α₊ (s_{n,y_j} − δ₊))).
      Each positive proxy is thus weighted by its count in the batch. It is computed, like the reference,
      from the N×N matrix s⁺_{n,j} = <n̂(e_n), n̂(w_{y_j})> so that numbers match it to float rounding.
    * L_pos, ``positive_mean="proxy"`` (the Proxy-Anchor paper): averaged over the distinct proxies with
      at least one positive in the batch — (1/|P⁺|) Σ_{c ∈ P⁺} log(1 + Σ_{n: y_n = c} exp(−α₊ (s_{n,c} − δ₊))).
      Equals pytorch-metric-learning's ProxyAnchorLoss when α₊ = α₋ and δ₊ = −δ₋.

    Both modes agree when every class present has the same count in the batch.
    """

    def __init__(
        self,
        pos_alpha: float = 32.0,
        neg_alpha: float = 32.0,
        pos_delta: float = 0.1,
        neg_delta: float = -0.1,
        positive_mean: str = "sample",
    ) -> None:
        super().__init__()
        if positive_mean not in POSITIVE_MEANS:
            raise ValueError(f"positive_mean must be one of {POSITIVE_MEANS}, got {positive_mean!r}")
        self.pos_alpha = float(pos_alpha)
        self.neg_alpha = float(neg_alpha)
        self.pos_delta = float(pos_delta)
        self.neg_delta = float(neg_delta)
        self.positive_mean = positive_mean

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        x, w = _cosine(embeddings, proxies)
        sims = x @ w.T  # N × C
        class_ids = torch.arange(w.shape[0], device=labels.device)
        neg_mask = labels[:, None] != class_ids[None, :]
        neg_term = masked_logsumexp(self.neg_alpha * (sims - self.neg_delta), neg_mask, dim=0).mean()

        if self.positive_mean == "sample":
            pos_sims = x @ w[labels].T  # N × N: column j is the proxy of sample j's class
            pos_mask = labels[:, None] == labels[None, :]
            pos_term = masked_logsumexp(-self.pos_alpha * (pos_sims - self.pos_delta), pos_mask, 0).mean()
        else:
            pos_mask = ~neg_mask
            per_proxy = masked_logsumexp(-self.pos_alpha * (sims - self.pos_delta), pos_mask, dim=0)
            n_with_positives = pos_mask.any(dim=0).sum().clamp(min=1)
            pos_term = per_proxy.sum() / n_with_positives
        return pos_term + neg_term


class SoftplusProxyLoss(ProxyLoss):
    """The reference's ``proxy_dim = 1`` loss: a per-sample decoupled soft-plus loss (docs/reference.md §1.4).

    The reference calls it the "ProxyNCA" switch, but it is neither ProxyNCA (a softmax over negatives)
    nor ProxyNCA++; it is reproduced here under an honest name. Per sample n, with n_y the number of rows
    of class y in the batch (the reference sums the same positive proxy n_y times):

    * L_pos = (1/N) Σ_n log(1 + n_{y_n} · exp(−α₊ (s_{n,y_n} − δ₊)))
    * L_neg = (1/N) Σ_n log(1 + Σ_{c ≠ y_n} exp(α₋ (s_{n,c} − δ₋)))

    computed from the same N×N / N×C matrices as the reference, reduced along the proxy axis.
    """

    def __init__(
        self, pos_alpha: float = 32.0, neg_alpha: float = 32.0, pos_delta: float = 0.1, neg_delta: float = -0.1
    ) -> None:
        super().__init__()
        self.pos_alpha = float(pos_alpha)
        self.neg_alpha = float(neg_alpha)
        self.pos_delta = float(pos_delta)
        self.neg_delta = float(neg_delta)

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        x, w = _cosine(embeddings, proxies)
        sims = x @ w.T
        class_ids = torch.arange(w.shape[0], device=labels.device)
        neg_mask = labels[:, None] != class_ids[None, :]
        neg_term = masked_logsumexp(self.neg_alpha * (sims - self.neg_delta), neg_mask, dim=1).mean()
        pos_sims = x @ w[labels].T
        pos_mask = labels[:, None] == labels[None, :]
        pos_term = masked_logsumexp(-self.pos_alpha * (pos_sims - self.pos_delta), pos_mask, dim=1).mean()
        return pos_term + neg_term


def _squared_distances_of_unit_vectors(embeddings: Tensor, proxies: Tensor) -> Tensor:
    """‖n̂(e) − n̂(w)‖² = 2 − 2 cos, clamped at 0 against rounding (N × C)."""
    x, w = _cosine(embeddings, proxies)
    return (2.0 - 2.0 * (x @ w.T)).clamp(min=0.0)


class ProxyNCALoss(ProxyLoss):
    """ProxyNCA (Movshovitz-Attias et al., ICCV 2017, "No Fuss Distance Metric Learning using Proxies").

    With x̂ = scale·n̂(e) and p̂_c = scale·n̂(w_c), d_{n,c} = ‖x̂_n − p̂_c‖² = scale²·‖n̂(e_n) − n̂(w_c)‖²:

        L = (1/N) Σ_n −log( exp(−d_{n,y_n}) / Σ_{c ≠ y_n} exp(−d_{n,c}) )
          = (1/N) Σ_n [ d_{n,y_n} + log Σ_{c ≠ y_n} exp(−d_{n,c}) ]

    The positive proxy is excluded from the denominator (NCA over negatives only), so the loss can be
    negative. Needs at least two proxies.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        dists = self.scale**2 * _squared_distances_of_unit_vectors(embeddings, proxies)
        positive = dists.gather(1, labels[:, None]).squeeze(1)
        class_ids = torch.arange(proxies.shape[0], device=labels.device)
        negatives = (-dists).masked_fill(labels[:, None] == class_ids[None, :], torch.finfo(dists.dtype).min)
        return (positive + torch.logsumexp(negatives, dim=1)).mean()


class ProxyNCAPlusPlusLoss(ProxyLoss):
    """ProxyNCA++ loss (Teh et al., ECCV 2020, "ProxyNCA++: Revisiting and Revitalizing Proxy NCA").

    With d_{n,c} = ‖n̂(e_n) − n̂(w_c)‖² and temperature T (1/9 in the paper):

        L = (1/N) Σ_n −log( exp(−d_{n,y_n}/T) / Σ_c exp(−d_{n,c}/T) )

    i.e. the cross-entropy of softmax(−d/T) over all proxies, the positive included. Only the loss is
    provided: the paper's other ingredients (fast proxies, global max pooling, layer norm) live elsewhere.

    With ``learn_temperature`` the temperature is a parameter, learnt as log T (so T stays > 0) and
    stepped with the proxies at their learning rate (``param_groups``); it starts at ``temperature``.
    """

    def __init__(self, temperature: float = 1.0 / 9.0, learn_temperature: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.learn_temperature = bool(learn_temperature)
        self.fixed_temperature = float(temperature)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature))) if self.learn_temperature else None

    @property
    def temperature(self) -> float:
        """The current temperature T, as a Python float."""
        if self.log_temperature is None:
            return self.fixed_temperature
        return float(self.log_temperature.detach().exp())

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        distances = _squared_distances_of_unit_vectors(embeddings, proxies)
        if self.log_temperature is None:
            logits = -distances / self.fixed_temperature
        else:
            logits = -distances / self.log_temperature.float().exp()
        return F.cross_entropy(logits, labels)


# -- registry entries (criteria.registry lists them) ------------------------------------------------------

POS_ALPHA = LossKey("pos_alpha", 32.0, "Proxy-Anchor positive scale alpha+")
NEG_ALPHA = LossKey("neg_alpha", 32.0, "Proxy-Anchor negative scale alpha-")
POS_DELTA = LossKey("pos_delta", 0.1, "Proxy-Anchor positive margin delta+")
NEG_DELTA = LossKey("neg_delta", -0.1, "Proxy-Anchor negative margin delta-")
PA_POSITIVE_MEAN = LossKey(
    "pa_positive_mean",
    "sample",
    "Proxy-Anchor positive term: per sample row (reference) or per proxy (paper)",
    POSITIVE_MEANS,
)
NCA_TEMPERATURE = LossKey("nca_temperature", 1.0 / 9.0, "ProxyNCA++ softmax temperature")
NCA_LEARN_TEMPERATURE = LossKey(
    "nca_learn_temperature",
    False,
    "ProxyNCA++: learn the temperature (as log T, at proxy_lr), starting at nca_temperature",
)
_MARGIN_KEYS = (POS_ALPHA, NEG_ALPHA, POS_DELTA, NEG_DELTA)


def _check_nca_temperature(cfg: Any) -> None:
    if not cfg.nca_temperature > 0:
        raise UserError(f"key 'nca_temperature' must be > 0; got {cfg.nca_temperature!r}")


PROXY_ANCHOR = register_loss(
    LossEntry(
        name="proxy_anchor",
        loss_class=ProxyAnchorLoss,
        build=lambda cfg: ProxyAnchorLoss(
            cfg.pos_alpha, cfg.neg_alpha, cfg.pos_delta, cfg.neg_delta, positive_mean=cfg.pa_positive_mean
        ),
        keys=(*_MARGIN_KEYS, PA_POSITIVE_MEAN),
        one_proxy_per_class=True,
        doc="Proxy-Anchor (Kim et al. 2020), the reference's proxy_dim 0",
    )
)
SOFTPLUS_PROXY = register_loss(
    LossEntry(
        name="softplus_proxy",
        loss_class=SoftplusProxyLoss,
        build=lambda cfg: SoftplusProxyLoss(cfg.pos_alpha, cfg.neg_alpha, cfg.pos_delta, cfg.neg_delta),
        keys=_MARGIN_KEYS,
        one_proxy_per_class=True,
        doc="per-sample soft-plus proxy loss, the reference's proxy_dim 1",
    )
)
PROXY_NCA = register_loss(
    LossEntry(
        name="proxy_nca",
        loss_class=ProxyNCALoss,
        build=lambda cfg: ProxyNCALoss(),
        keys=(),
        one_proxy_per_class=True,
        doc="ProxyNCA (Movshovitz-Attias et al. 2017)",
    )
)
PROXY_NCA_PP = register_loss(
    LossEntry(
        name="proxy_nca_pp",
        loss_class=ProxyNCAPlusPlusLoss,
        build=lambda cfg: ProxyNCAPlusPlusLoss(cfg.nca_temperature, learn_temperature=cfg.nca_learn_temperature),
        keys=(NCA_TEMPERATURE, NCA_LEARN_TEMPERATURE),
        one_proxy_per_class=True,
        doc="ProxyNCA++ (Teh et al. 2020), fixed or learnt temperature",
        check=_check_nca_temperature,
    )
)
