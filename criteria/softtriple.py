"""SoftTriple loss (Qian et al., ICCV 2019, "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling").

K centres per class; the criterion's proxy matrix holds them, row c·K + k being centre k of class c.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from criteria.base import LossEntry, LossKey, ParamGroup, ProxyLoss, group, register_loss
from criteria.precision import float32_forward
from utilities.errors import UserError

REGULARISER_EPS = 1e-5  # inside the square root of the regulariser, so that it has a gradient at 0


class SoftTripleLoss(ProxyLoss):
    """SoftTriple: a softmax over classes whose similarity is a soft maximum over the class's K centres.

    With unit embeddings x̂_n and unit centres ŵ_c^k:

    * S_{n,c} = Σ_k softmax_k(x̂_n·ŵ_c^k / γ) · x̂_n·ŵ_c^k                   (relaxed similarity to class c)
    * L_n = −log( exp(λ(S_{n,y} − δ)) / (exp(λ(S_{n,y} − δ)) + Σ_{c≠y} exp(λ S_{n,c})) )
    * R = Σ_c Σ_{t<s} √(2 + 2ε − 2 ŵ_c^t·ŵ_c^s) / (C·K·(K − 1))          (merges a class's close centres)

    and the loss is mean_n L_n + τ R (R = 0 when K = 1). Paper values: K = 10, λ = 20, γ = 0.1, τ = 0.2,
    δ = 0.01, centres learnt at 0.01 (``center_lr``; ``param_groups`` puts the centres there).
    """

    def __init__(
        self,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        tau: float = 0.2,
        margin: float = 0.01,
        center_lr: float = 0.01,
    ) -> None:
        super().__init__()
        if centers_per_class < 1 or gamma <= 0:
            raise ValueError(f"need centers_per_class >= 1 and gamma > 0, got {centers_per_class}, {gamma}")
        self.proxies_per_class = int(centers_per_class)
        self.la = float(la)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.margin = float(margin)
        self.center_lr = float(center_lr)

    def param_groups(self, proxies: nn.Parameter, proxy_lr: float) -> list[ParamGroup]:
        """The centres at ``center_lr`` (not ``proxy_lr``) without weight decay."""
        return [group([proxies], self.center_lr)]

    def class_similarities(self, x: Tensor, centres: Tensor) -> Tensor:
        """S (N × C) from unit embeddings (N × D) and unit centres (C·K × D)."""
        sims = (x @ centres.T).unflatten(1, (-1, self.proxies_per_class))  # N × C × K
        return (F.softmax(sims / self.gamma, dim=2) * sims).sum(dim=2)

    def regulariser(self, centres: Tensor) -> Tensor:
        """R of the class docstring, from unit centres (C·K × D)."""
        k = self.proxies_per_class
        if k == 1:
            return centres.new_zeros(())
        per_class = centres.unflatten(0, (-1, k))  # C × K × D
        sims = per_class @ per_class.transpose(1, 2)  # C × K × K
        rows, cols = torch.triu_indices(k, k, offset=1, device=centres.device)
        distances = torch.sqrt((2.0 + 2.0 * REGULARISER_EPS - 2.0 * sims[:, rows, cols]).clamp(min=0.0))
        return distances.sum() / (per_class.shape[0] * k * (k - 1))

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        if proxies.shape[0] % self.proxies_per_class:
            raise ValueError(f"{proxies.shape[0]} centres is not a multiple of K = {self.proxies_per_class}")
        x, centres = F.normalize(embeddings, dim=-1), F.normalize(proxies, dim=-1)
        similarities = self.class_similarities(x, centres)
        margins = F.one_hot(labels, similarities.shape[1]).to(similarities.dtype) * self.margin
        loss = F.cross_entropy(self.la * (similarities - margins), labels)
        if self.tau:
            loss = loss + self.tau * self.regulariser(centres)
        return loss


def _check(cfg: Any) -> None:
    if cfg.softtriple_centers < 1:
        raise UserError(f"key 'softtriple_centers' must be at least 1; got {cfg.softtriple_centers}")
    if not cfg.softtriple_gamma > 0:
        raise UserError(f"key 'softtriple_gamma' must be > 0; got {cfg.softtriple_gamma}")
    if cfg.softtriple_tau < 0 or cfg.softtriple_lr < 0:
        raise UserError("keys 'softtriple_tau' and 'softtriple_lr' must not be negative")


ENTRY = register_loss(
    LossEntry(
        name="softtriple",
        loss_class=SoftTripleLoss,
        build=lambda cfg: SoftTripleLoss(
            cfg.softtriple_centers,
            la=cfg.softtriple_la,
            gamma=cfg.softtriple_gamma,
            tau=cfg.softtriple_tau,
            margin=cfg.softtriple_margin,
            center_lr=cfg.softtriple_lr,
        ),
        keys=(
            LossKey("softtriple_centers", 10, "SoftTriple: centres per class K"),
            LossKey("softtriple_la", 20.0, "SoftTriple: scale lambda of the class logits"),
            LossKey(
                "softtriple_gamma", 0.1, "SoftTriple: temperature gamma of the soft maximum over a class's centres"
            ),
            LossKey("softtriple_tau", 0.2, "SoftTriple: weight tau of the regulariser merging a class's centres"),
            LossKey("softtriple_margin", 0.01, "SoftTriple: margin delta on the true class"),
            LossKey("softtriple_lr", 0.01, "SoftTriple: learning rate of the centres (instead of proxy_lr)"),
        ),
        one_proxy_per_class=False,
        doc="SoftTriple (Qian et al. 2019), K centres per class; not with dada",
        check=_check,
    )
)
