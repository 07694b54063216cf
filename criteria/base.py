"""The two seams of the criterion package: what a base loss is, and what the trainer needs from a criterion.

* ``ProxyLoss``: the base class of every registered loss. A loss is called as
  ``loss(embeddings, labels, proxies)`` ([N, D], [N], [C·K, D] -> scalar) and does NOT own the proxies;
  it says how many proxies it needs per class (``proxies_per_class``, K), and which optimizer groups the
  proxies and its own parameters (a learnable temperature or scale) belong to (``param_groups``).
* ``Criterion`` / ``AdversarialCriterion``: the protocol the training loop uses (``engine.trainer``,
  ``engine.step``, ``engine.optim``). ``param_groups`` covers every parameter the criterion owns, base-loss
  parameters included; ``engine.optim.build_optimizers`` refuses groups that miss one or list one twice.
* ``LossKey`` / ``LossEntry``: one registry entry per loss (``criteria.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

ParamGroup = dict[str, Any]
ParamGroups = dict[str, list[ParamGroup]]


def group(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> ParamGroup:
    """One optimizer group: ``{"params": params, "lr": lr, "weight_decay": weight_decay}``."""
    return {"params": params, "lr": lr, "weight_decay": weight_decay}


class ProxyLoss(nn.Module):
    """Base class of the registered losses: one proxy per class and no parameters of its own by default.

    A loss's own trainable parameters (a learnt temperature or scale) join the optimizer with the proxies by
    default; a loss with K > 1 proxies per class sets ``proxies_per_class`` (row c·K + k of the proxy matrix is
    proxy k of class c).
    """

    proxies_per_class: int = 1

    def param_groups(self, proxies: nn.Parameter, proxy_lr: float) -> list[ParamGroup]:
        """Groups of the proxies handed in and of this loss's own parameters (stepped with the proxies).

        Default: the proxies, then every trainable parameter of the loss, each group at ``proxy_lr`` without
        weight decay. Override it to give them learning rates of their own (SoftTriple's centres).
        """
        own = [param for param in self.parameters() if param.requires_grad]
        return [group([proxies], proxy_lr), *([group(own, proxy_lr)] if own else [])]

    def set_epoch(self, epoch: int) -> None:
        """Called by the criterion at the start of every training epoch; nothing by default."""


@runtime_checkable
class Criterion(Protocol):
    """What the training loop needs from a criterion (``ProxyCriterion`` and ``DADACriterion`` are ones)."""

    @property
    def adversarial(self) -> bool:
        """True when the criterion has a discriminator step (``discriminator_loss``)."""
        ...

    def generator_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss that trains the network and the proxies, and detached scalars to log."""
        ...

    def param_groups(self, proxy_lr: float, disc_lr: float, disc_decay: float) -> ParamGroups:
        """``{"proxy": [...], "discriminator": [...]}``: every parameter the criterion owns, each once."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Start of a training epoch (re-seeds the mixing draws of DADA)."""
        ...


@runtime_checkable
class AdversarialCriterion(Criterion, Protocol):
    """A criterion with a discriminator step (``adversarial`` is True)."""

    def discriminator_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass(frozen=True)
class LossKey:
    """A configuration key read by a loss: its name, schema default, one-line help and allowed values."""

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class LossEntry:
    """One registered loss.

    ``build(cfg)`` makes the loss from the configuration values named in ``keys`` (nothing else);
    ``check(cfg)`` raises ``UserError`` for impossible values of those keys; ``one_proxy_per_class`` says
    whether the loss uses one proxy per class, which DADA's proxy domain needs.
    """

    name: str
    loss_class: type[ProxyLoss]
    build: Callable[[Any], ProxyLoss]
    keys: tuple[LossKey, ...]
    one_proxy_per_class: bool
    doc: str
    check: Callable[[Any], None] | None = None


_REGISTERED: dict[str, LossEntry] = {}

REGISTERED_LOSSES: Mapping[str, LossEntry] = MappingProxyType(_REGISTERED)
"""Every registered loss, in registration order: a read-only view (`register_loss` is the only way in)."""


def register_loss(entry: LossEntry) -> LossEntry:
    """Register a loss (its module then needs one import line in `criteria/registry.py`); returns `entry`::

    ENTRY = register_loss(LossEntry(name="my_loss", loss_class=MyLoss, ...))
    """
    if entry.name in _REGISTERED:
        raise RuntimeError(f"two losses named {entry.name!r}")
    _REGISTERED[entry.name] = entry
    return entry
