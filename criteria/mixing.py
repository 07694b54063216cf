"""Mixing for DADA: where the Beta coefficients come from, and the two kinds of mixup (docs/reference.md §1.3, §1.5).

The reference draws its coefficients with NumPy's global RNG. Here the source is injected (``MixSource``)
so that tests can replay the reference's draws (``FixedDraws``) and training is deterministic, resumable
and identical on every process (``SeededBetaSource``).

Draws consumed by one criterion evaluation, in order (fixtures README):
1. with ``pos_class_mix``: the class-mix coefficient λ_c ~ Beta(2, 2), then a second Beta(2, 2) draw that
   the reference spends on mixing the (identical) proxies of each pair;
2. ``mix_mode="random"``: λ ~ Beta(a, b) for the domain discriminator, then one for the class predictor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

MIX_MODES = ("random", "individual", "linear")
CLASS_MIX_BETA = (2.0, 2.0)  # λ_c ~ Beta(2, 2), hard-coded in the reference
MIX_WEIGHT_GAIN = 1.414  # xavier_uniform gain of the learnable mix weights in the reference


@runtime_checkable
class MixSource(Protocol):
    """Anything that returns one Beta(a, b) sample per call, as a Python float."""

    def beta(self, a: float, b: float) -> float: ...


class SeededBetaSource:
    """Deterministic Beta draws: a uniform from a seeded ``torch.Generator`` through the exact inverse CDF.

    u ~ U[0, 1) from the generator, then λ = I⁻¹_{a,b}(u) (``scipy.special.betaincinv``). Processes with the
    same seed draw the same numbers (the generator lives on the CPU, so no device sync). ``set_epoch``
    re-seeds from (seed, epoch), so a run resumed at an epoch boundary draws what the uninterrupted run drew.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self.generator = torch.Generator(device="cpu")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Re-seed from (seed, epoch) through NumPy's SeedSequence (well mixed, collision-free in practice)."""
        self.epoch = int(epoch)
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]
        self.generator.manual_seed(int(state))

    def beta(self, a: float, b: float) -> float:
        from scipy.special import betaincinv  # on first use: importing the losses stays quick

        u = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        return float(betaincinv(a, b, u))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])


class FixedDraws:
    """Returns the given numbers in order, whatever (a, b) is asked; for replaying recorded draws."""

    def __init__(self, sequence: Iterable[float]) -> None:
        self.values = [float(v) for v in sequence]
        self.consumed = 0

    def beta(self, a: float, b: float) -> float:
        if self.consumed >= len(self.values):
            raise RuntimeError(
                f"FixedDraws exhausted: all {len(self.values)} given draws were used, "
                f"another Beta({a}, {b}) draw was requested"
            )
        value = self.values[self.consumed]
        self.consumed += 1
        return value


def positive_pair_indices(labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each class with at least two rows (ascending label order): its first and second row.

    Same pairs as the reference (first positive pair of each label in row-major order of the
    label-equality matrix). Classes with a single row in the batch get no pair.
    """
    sorted_labels, order = torch.sort(labels, stable=True)
    same_as_previous = sorted_labels[1:] == sorted_labels[:-1]
    is_first = torch.cat([same_as_previous.new_ones(1), ~same_as_previous])
    # position i (i >= 1) holds a class's second row if it repeats position i-1 and i-1 is the first row
    is_second = same_as_previous & is_first[:-1]
    second_positions = torch.nonzero(is_second).squeeze(1) + 1
    return order[second_positions - 1], order[second_positions]


def mix_positive_pairs(
    embeddings: Tensor, labels: Tensor, proxies: Tensor, source: MixSource
) -> tuple[Tensor, Tensor, Tensor]:
    """Class mixup of positive pairs (docs/reference.md §1.3): extend the batch with one mixed positive per class.

    Returns (E, Y, Q): E = [e; λ_c e_a + (1 − λ_c) e_p], Y = [y; y_a], and the per-row proxies
    Q = [W_y; λ' W_{y_a} + (1 − λ') W_{y_p}]. The mixed proxies equal W_{y_a} up to rounding (both rows
    have the same class) but the reference computes them with a second draw λ', so it is drawn and applied.
    """
    anchors, positives = positive_pair_indices(labels)
    class_mix = source.beta(*CLASS_MIX_BETA)
    mixed = class_mix * embeddings[anchors] + (1.0 - class_mix) * embeddings[positives]
    proxy_mix = source.beta(*CLASS_MIX_BETA)
    mixed_proxies = proxy_mix * proxies[labels[anchors]] + (1.0 - proxy_mix) * proxies[labels[positives]]
    return (
        torch.cat([embeddings, mixed]),
        torch.cat([labels, labels[anchors]]),
        torch.cat([proxies[labels], mixed_proxies]),
    )


def check_shift_scale(shift_scale: float) -> None:
    """The reference asserts −1 < s ≤ 1."""
    if not -1.0 < shift_scale <= 1.0:
        raise ValueError(f"shift_scale must satisfy -1 < shift_scale <= 1, got {shift_scale}")


def random_mix(samples: Tensor, row_proxies: Tensor, coefficient: float, shift_scale: float = 1.0) -> Tensor:
    """M = (1 − λs)·E + λs·Q for s ≥ 0;  M = λ(s+1)·E + (1 − λ(s+1))·Q for s < 0 (docs/reference.md §1.5)."""
    check_shift_scale(shift_scale)
    if shift_scale < 0:
        on_sample = coefficient * (shift_scale + 1.0)
        return on_sample * samples + (1.0 - on_sample) * row_proxies
    on_proxy = coefficient * shift_scale
    return (1.0 - on_proxy) * samples + on_proxy * row_proxies


def individual_mix(samples: Tensor, row_proxies: Tensor, weight: Tensor) -> Tensor:
    """M = f ⊙ E + (1 − f) ⊙ Q with a learnable f of shape 1×D (unconstrained, as the reference)."""
    return weight * samples + (1.0 - weight) * row_proxies


def linear_mix(samples: Tensor, row_proxies: Tensor, weight: Tensor) -> Tensor:
    """M = [E, Q] · W_mix with a learnable W_mix of shape 2D×D."""
    return torch.cat([samples, row_proxies], dim=1) @ weight


def mix_weight_shape(mode: str, embed_dim: int) -> tuple[int, int] | None:
    """Shape of the learnable mix weight of a mode, None for ``random``."""
    shapes = {"random": None, "individual": (1, embed_dim), "linear": (2 * embed_dim, embed_dim)}
    if mode not in shapes:
        raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mode!r}")
    return shapes[mode]


def init_mix_weight(mode: str, embed_dim: int) -> nn.Parameter | None:
    """The mode's learnable weight, Xavier-uniform with gain 1.414 as the reference; None for ``random``."""
    shape = mix_weight_shape(mode, embed_dim)
    if shape is None:
        return None
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(shape), gain=MIX_WEIGHT_GAIN))


def sample_proxy_mix(
    samples: Tensor,
    row_proxies: Tensor,
    *,
    mode: str,
    source: MixSource,
    alpha: float,
    beta: float,
    shift_scale: float,
    mix_weight: Tensor | None,
) -> Tensor:
    """The intermediate domain M from raw (un-normalised) samples and their per-row proxies (docs/reference.md §1.5).

    ``random`` draws one λ ~ Beta(alpha, beta) per call from ``source``; the other modes draw nothing.
    """
    if mode == "random":
        return random_mix(samples, row_proxies, source.beta(alpha, beta), shift_scale)
    if mode == "individual":
        return individual_mix(samples, row_proxies, mix_weight)
    if mode == "linear":
        return linear_mix(samples, row_proxies, mix_weight)
    raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mode!r}")
