"""Normalized-Softmax / CosFace proxy loss (Zhai & Wu, BMVC 2019; Wang et al., CVPR 2018)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from criteria.base import LossEntry, LossKey, ProxyLoss, register_loss
from criteria.precision import float32_forward
from utilities.errors import UserError


class NormSoftmaxLoss(ProxyLoss):
    """Cross-entropy of scaled cosine logits with an optional additive margin on the true class.

    With s_{n,c} = n̂(e_n)·n̂(w_c), scale σ and margin m:

        L = (1/N) Σ_n −log( exp(σ(s_{n,y_n} − m)) / (exp(σ(s_{n,y_n} − m)) + Σ_{c≠y_n} exp(σ s_{n,c})) )

    m = 0 is Normalized-Softmax (σ = 1/temperature; 20 is temperature 0.05), m > 0 is CosFace (σ = 64,
    m = 0.35 in the paper). With ``learn_scale`` σ is a parameter, learnt as log σ (so σ stays > 0) at the
    proxies' learning rate (``param_groups``), starting at ``scale``.
    """

    def __init__(self, scale: float = 20.0, margin: float = 0.0, learn_scale: bool = False) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin = float(margin)
        self.fixed_scale = float(scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale))) if learn_scale else None

    @property
    def scale(self) -> float:
        """The current scale σ, as a Python float."""
        return self.fixed_scale if self.log_scale is None else float(self.log_scale.detach().exp())

    @float32_forward
    def forward(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        cosines = F.normalize(embeddings, dim=-1) @ F.normalize(proxies, dim=-1).T
        if self.margin:
            cosines = cosines - self.margin * F.one_hot(labels, cosines.shape[1]).to(cosines.dtype)
        scale = self.fixed_scale if self.log_scale is None else self.log_scale.float().exp()
        return F.cross_entropy(scale * cosines, labels)


def _check(cfg: Any) -> None:
    if not cfg.normsoftmax_scale > 0:
        raise UserError(f"key 'normsoftmax_scale' must be > 0; got {cfg.normsoftmax_scale}")


ENTRY = register_loss(
    LossEntry(
        name="norm_softmax",
        loss_class=NormSoftmaxLoss,
        build=lambda cfg: NormSoftmaxLoss(
            cfg.normsoftmax_scale, margin=cfg.normsoftmax_margin, learn_scale=cfg.normsoftmax_learn_scale
        ),
        keys=(
            LossKey("normsoftmax_scale", 20.0, "Normalized-Softmax: scale of the cosine logits (1 / temperature)"),
            LossKey(
                "normsoftmax_learn_scale", False, "Normalized-Softmax: learn the scale (as log scale, at proxy_lr)"
            ),
            LossKey(
                "normsoftmax_margin", 0.0, "Normalized-Softmax: additive cosine margin on the true class (CosFace)"
            ),
        ),
        one_proxy_per_class=True,
        doc="Normalized-Softmax, CosFace with a margin (Zhai & Wu 2019, Wang et al. 2018)",
        check=_check,
    )
)
