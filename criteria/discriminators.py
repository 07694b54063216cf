"""The two DADA discriminators (docs/reference.md §1.7) and the class-prediction discrepancies.

Both are plain MLPs that stay in training mode, as in the reference (whose criterion is never switched
to eval): BatchNorm always normalises with the statistics of the batch it is given, and Dropout is always
active. ``train(False)`` / ``eval()`` are therefore ignored by these modules. The criterion forwards each
domain (samples, mixed features, proxies) in a separate call, so every domain gets its own BatchNorm
statistics — concatenating the domains would change the results.

Submodule names (fc1, bn1, fc2, bn2, fc3, bn3) match the keys of the reference fixtures. The output
BatchNorm exists only when ``out_bn`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.01),
    }
)


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class _AlwaysTrainMode(nn.Module):
    """Pins training mode: the reference never evaluates its discriminators in eval mode."""

    def train(self, mode: bool = True) -> _AlwaysTrainMode:
        return super().train(True)


class DomainDiscriminator(_AlwaysTrainMode):
    """3-way domain classifier (samples / mixed / proxies), the reference's ``Uni_Predictor``.

    Linear(D, h) → BatchNorm1d(h) → activation → Linear(h, 3) → BatchNorm1d(3) if ``out_bn``.
    """

    def __init__(self, embed_dim: int, hidden: int, *, out_bn: bool = False, activation: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, 3)
        self.bn2 = nn.BatchNorm1d(3) if out_bn else None

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, 3] for ONE domain batch (call once per domain)."""
        x = self.fc2(self.act(self.bn1(self.fc1(x))))
        return self.bn2(x) if self.bn2 is not None else x


class ClassDiscrepancyPredictor(_AlwaysTrainMode):
    """Category-level discriminator over the training classes, the reference's ``Dis_Predictor``.

    Linear(D, h1) → BN(h1) → act → Dropout → Linear(h1, h2) → BN(h2) → act → Dropout → Linear(h2, C)
    → BatchNorm1d(C) if ``out_bn``.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden1: int,
        hidden2: int,
        n_classes: int,
        *,
        dropout: float = 0.5,
        out_bn: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden1)
        self.bn1 = nn.BatchNorm1d(hidden1)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.bn2 = nn.BatchNorm1d(hidden2)
        self.fc3 = nn.Linear(hidden2, n_classes)
        self.bn3 = nn.BatchNorm1d(n_classes) if out_bn else None
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(p=float(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [N, C] for ONE domain batch (call once per domain)."""
        x = self.dropout(self.act(self.bn1(self.fc1(x))))
        x = self.dropout(self.act(self.bn2(self.fc2(x))))
        x = self.fc3(x)
        return self.bn3(x) if self.bn3 is not None else x


def _nuclear_norm(probabilities: Tensor) -> Tensor:
    """Nuclear norm that yields NaN (instead of an SVD error) for non-finite input, without a device sync.

    Non-finite entries are zeroed for the SVD and the NaN is carried by `sum() * 0`, so the training step can
    detect the non-finite loss and skip the update.
    """
    carrier = probabilities.sum() * 0.0
    return (
        torch.linalg.matrix_norm(torch.nan_to_num(probabilities, nan=0.0, posinf=0.0, neginf=0.0), ord="nuc") + carrier
    )


def nuclear_norm_discrepancy(source_logits: Tensor, target_logits: Tensor) -> Tensor:
    """NWD (Chen et al., CVPR 2022): (‖softmax(S)‖_* − ‖softmax(T)‖_*) / N, nuclear norms of N×C matrices."""
    source = _nuclear_norm(F.softmax(source_logits, dim=1))
    target = _nuclear_norm(F.softmax(target_logits, dim=1))
    return (source - target) / source_logits.shape[0]


def l1_discrepancy(source_logits: Tensor, target_logits: Tensor) -> Tensor:
    """Mean absolute difference of the two softmax matrices."""
    return (F.softmax(source_logits, dim=1) - F.softmax(target_logits, dim=1)).abs().mean()


DISCREPANCIES: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(
    {
        "nwd": nuclear_norm_discrepancy,
        "l1": l1_discrepancy,
    }
)
