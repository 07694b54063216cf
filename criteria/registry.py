"""The one list of base losses: ``LOSSES`` maps a ``loss`` name to its ``LossEntry`` (read-only).

The configuration schema takes its ``loss`` choices and help from here, ``build_criterion`` builds from
here, and the tests run every contract over every entry. Adding a loss is one module and one import line::

    # criteria/my_loss.py
    class MyLoss(ProxyLoss):
        def forward(self, embeddings, labels, proxies): ...

    ENTRY = register_loss(LossEntry(name="my_loss", loss_class=MyLoss, build=lambda cfg: MyLoss(cfg.my_scale),
                                    keys=(LossKey("my_scale", 16.0, "MyLoss: logit scale"),),
                                    one_proxy_per_class=True, doc="MyLoss (Author et al. 2025)"))

    # here: my_loss joins the import line of the loss modules

The entry's keys join the configuration schema (``config.schema`` adds every ``LOSS_KEYS`` key with its
default, help and choices); docs/extending.md walks through an example.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from criteria import norm_softmax, proxy_losses, softtriple  # noqa: F401 - importing a loss module registers it
from criteria.base import REGISTERED_LOSSES, LossEntry, LossKey, ProxyLoss
from utilities.errors import UserError

LOSSES: Mapping[str, LossEntry] = REGISTERED_LOSSES
_ENTRIES: tuple[LossEntry, ...] = tuple(LOSSES.values())
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
PROXY_LOSSES: Mapping[str, type[ProxyLoss]] = MappingProxyType(
    {name: entry.loss_class for name, entry in LOSSES.items()}
)


def _collect_keys() -> dict[str, LossKey]:
    """Every key some loss reads; a key shared by two losses must be declared identically."""
    keys: dict[str, LossKey] = {}
    for entry in _ENTRIES:
        for key in entry.keys:
            if keys.setdefault(key.name, key) != key:
                raise RuntimeError(f"losses declare the configuration key {key.name!r} differently")
    return keys


LOSS_KEYS: Mapping[str, LossKey] = MappingProxyType(_collect_keys())


def loss_help() -> str:
    """The ``loss`` key's help line: every loss name with its one-line description."""
    return "base proxy loss: " + "; ".join(f"{entry.name} ({entry.doc})" for entry in _ENTRIES)


def loss_table() -> str:
    """The table of base losses in docs/training.md (``tests/test_readme.py`` checks the copy)."""
    lines = ["| `loss` | what it is | its keys (default) | with `dada: true` |", "|---|---|---|---|"]
    for entry in _ENTRIES:
        keys = ", ".join(
            f"`{key.name}` ({key.default:.4g})"
            if isinstance(key.default, float) and not isinstance(key.default, bool)
            else f"`{key.name}` ({key.default})"
            for key in entry.keys
        )
        dada = "yes" if entry.one_proxy_per_class else "no (several centres per class)"
        lines.append(f"| `{entry.name}` | {entry.doc} | {keys or '—'} | {dada} |")
    return "\n".join(lines)


class LossInputs(Protocol):
    """What the registry reads by name (`CriterionSettings` keys); it reads a loss's own keys as the loss's
    entry declares them (they join the schema at run time, so an entry's `build` and `check` take `Any`)."""

    loss: str
    dada: bool


def check_loss_config(cfg: LossInputs) -> None:
    """``UserError`` (one line) for an unknown ``loss``, impossible values of its keys, or ``dada`` with a
    loss of several proxies per class (DADA's proxy domain and class predictor need one proxy per class)."""
    entry = _checked_entry(cfg)
    if cfg.dada and not entry.one_proxy_per_class:
        raise UserError(
            f"key 'dada': loss {entry.name} has several centres per class, but DADA's domains need one proxy "
            "per class; set dada: false"
        )


def _checked_entry(cfg: LossInputs) -> LossEntry:
    """The entry of ``cfg.loss``, after checking the values of the keys it reads."""
    entry = LOSSES.get(cfg.loss)
    if entry is None:
        raise UserError(f"loss: unknown value {cfg.loss!r}; expected one of {', '.join(sorted(LOSSES))}")
    for key in entry.keys:
        value = getattr(cfg, key.name)
        if key.choices and value not in key.choices:
            raise UserError(f"{key.name}: unknown value {value!r}; expected one of {', '.join(sorted(key.choices))}")
    if entry.check is not None:
        entry.check(cfg)
    return entry


def build_base_loss(cfg: LossInputs) -> ProxyLoss:
    """The base loss named by ``cfg.loss``, after checking the values of the keys it reads."""
    return _checked_entry(cfg).build(cfg)
