"""The reference implementation's options (``Noahsark/DADA``), mapped onto this project's configuration keys.

One table, `REFERENCE_OPTIONS`, says for every option of the reference's ``parameters.py`` (and its YAML
files) what it becomes here: a key under another name, a key with translated values, nothing (an option
that changes nothing here, or is dead in the reference too), or an error (behaviour this project does not
have). `translate_reference` applies it to the keys of one source (a YAML file, the command line, a
fixture's hyper-parameters) and returns one line per mapped option, which the command line prints.

Options whose name and meaning are the same in both projects (``lr``, ``batch_size``, ``mix_alpha``, ...)
are not in the table: they pass through. Two names exist in both with different values, ``loss``
(``dadaproxy`` / ``oproxy``) and ``arch`` (``resnet50_frozen_layernorm_double``): only the reference's
values are translated, this project's values pass through.

``python -m compat.options`` prints the table as Markdown (docs/reference.md's copy is checked by a test).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml

from utilities.errors import UserError

Translate = Callable[[Any, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ReferenceOption:
    """How one reference option becomes configuration keys here.

    `translate(value, source)` gets the option's value and every raw key of the same source (for the few
    options that depend on another one) and returns this project's keys; it raises `UserError` for a value
    without an equivalent. `applies(value)` is False for values of a shared name that are already ours.
    `bare` is what a bare command-line flag means (the reference's argparse store_true / store_false).
    """

    here: str
    translate: Translate
    note: str = ""
    bare: Any = True
    applies: Callable[[Any], bool] = lambda value: True


def _scalar(value: Any) -> Any:
    """A YAML value, or command-line strings parsed as YAML scalars ("1" -> 1, "true" -> True)."""
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _rename(key: str, convert: Callable[[Any], Any] | None = None, note: str = "") -> ReferenceOption:
    if convert is None:
        return ReferenceOption(key, lambda value, source: {key: value}, note)
    return ReferenceOption(key, lambda value, source: {key: convert(_scalar(value))}, note)


def _no_effect(
    note: str, accepted: Callable[[Any], bool] = lambda value: True, refusal: str = "", bare: Any = True
) -> ReferenceOption:
    """An option that changes nothing here for the accepted values; any other value is a `UserError`."""

    def translate(value: Any, source: Mapping[str, Any]) -> dict[str, Any]:
        if not accepted(_scalar(value)):
            raise UserError(refusal)
        return {}

    return ReferenceOption("—", translate, note, bare=bare)


def _choice(key: str, values: Mapping[Any, Any], note: str = "") -> ReferenceOption:
    def translate(value: Any, source: Mapping[str, Any]) -> dict[str, Any]:
        value = _scalar(value)
        if value not in values:
            valid = ", ".join(repr(v) for v in values)
            raise UserError(f"reference value {value!r} has no equivalent here (expected one of {valid})")
        return {key: values[value]}

    return ReferenceOption(key, translate, note)


# --- arch: the reference encodes the head in flags inside the name ------------------------------------

REFERENCE_TRUNKS = {"resnet50": "resnet50.tv_in1k", "bninception": "bninception"}
ARCH_FLAGS = ("frozen", "layernorm", "normalize", "double", "lp2", "lp3")


def is_reference_arch(name: Any) -> bool:
    """``resnet50`` / ``bninception`` followed by at least one of the reference's underscore flags."""
    if not isinstance(name, str):
        return False
    trunk, *flags = name.split("_")
    return trunk in REFERENCE_TRUNKS and bool(flags) and all(flag in ARCH_FLAGS for flag in flags)


def translate_arch(name: str) -> dict[str, Any]:
    """The keys of a reference architecture name (docs/reference.md §2): trunk, BatchNorm freezing, pooling,
    normalisation.

    ``resnet50_frozen_layernorm_double`` -> resnet50.tv_in1k (torchvision's ImageNet weights, the ones the
    reference loads through pretrainedmodels), frozen BatchNorm statistics, global max + average pooling,
    LayerNorm without affine parameters. A plain ``resnet50`` or ``bninception`` (no flags) works too.
    """
    trunk, *flags = name.split("_")
    if trunk not in REFERENCE_TRUNKS or any(flag not in ARCH_FLAGS for flag in flags):
        raise UserError(f"arch: {name!r} is not an architecture of the reference implementation")
    if "lp2" in flags or "lp3" in flags:
        raise UserError(f"arch: {name!r}: LP pooling (lp2 / lp3) has no equivalent here; use pooling: avgmax")
    if "normalize" in flags and "layernorm" in flags:
        raise UserError(f"arch: {name!r}: L2 normalisation followed by LayerNorm has no equivalent here")
    embed_norm = "layernorm" if "layernorm" in flags else "l2" if "normalize" in flags else "none"
    return {
        "arch": REFERENCE_TRUNKS[trunk],
        "frozen_bn": "frozen" in flags,
        "pooling": "avgmax" if "double" in flags else "avg",
        "embed_norm": embed_norm,
    }


def _loss(value: Any, source: Mapping[str, Any]) -> dict[str, Any]:
    """`dadaproxy`: DADA; `oproxy`: the plain baseline, whose proxies learn at lr x `loss_oproxy_lrmulti`.

    The base loss itself is `proxy_dim`'s (default 0: Proxy-Anchor, as here).
    """
    if _scalar(value) == "dadaproxy":
        return {"dada": True}
    lr = _scalar(source.get("lr", 1e-4))
    multiplier = _scalar(source.get("loss_oproxy_lrmulti", 200))
    return {"dada": False, "proxy_lr": float(lr) * float(multiplier)}


def _storage_metrics(value: Any, source: Mapping[str, Any]) -> dict[str, Any]:
    from metrics.names import parse_metric_list

    names = parse_metric_list([str(v) for v in value] if isinstance(value, list | tuple) else [str(value)])
    if len(names) != 1:
        raise UserError("several storage metrics have no equivalent here: best.pt follows one best_metric")
    return {"best_metric": names[0]}


def _not(value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"expected true or false, got {value!r}")
    return not value


_REFERENCE_OPTIONS: dict[str, ReferenceOption] = {
    # --- training schedule -----------------------------------------------------------------------------
    "n_epochs": _rename("epochs"),
    "decay": _rename("weight_decay"),
    "lr_reduce_step": _rename("lr_step"),
    "lr_reduce_rate": _rename("lr_gamma"),
    "lr_reduce_multi_steps": _rename("lr_milestones"),
    "storage_metrics": ReferenceOption(
        "best_metric", _storage_metrics, "the metric whose improvement writes checkpoints/best.pt"
    ),
    "not_pretrained": ReferenceOption("pretrained", lambda v, s: {"pretrained": _not(_scalar(v))}, "negated"),
    "arch": ReferenceOption(
        "arch, frozen_bn, pooling, embed_norm",
        lambda value, source: translate_arch(str(_scalar(value))),
        "`frozen` → frozen_bn, `double` → pooling avgmax (else avg), `layernorm` / `normalize` → embed_norm",
        applies=is_reference_arch,
    ),
    # --- losses ----------------------------------------------------------------------------------------
    "loss": ReferenceOption(
        "dada (, proxy_lr)",
        _loss,
        "`dadaproxy` → dada: true; `oproxy` → dada: false with proxy_lr = lr × loss_oproxy_lrmulti",
        applies=lambda value: _scalar(value) in ("dadaproxy", "oproxy"),
    ),
    "proxy_dim": _choice("loss", {0: "proxy_anchor", 1: "softplus_proxy"}, "0 → proxy_anchor, 1 → softplus_proxy"),
    "loss_oproxy_pos_alpha": _rename("pos_alpha"),
    "loss_oproxy_neg_alpha": _rename("neg_alpha"),
    "loss_oproxy_pos_delta": _rename("pos_delta"),
    "loss_oproxy_neg_delta": _rename("neg_delta"),
    "loss_oproxy_lrmulti": _no_effect("used with `loss: oproxy` (proxy_lr = lr × multiplier); no effect with DADA"),
    "loss_adv_proxy_lr": _rename("proxy_lr"),
    "loss_adv_classifier_lr": _rename("disc_lr"),
    "proxy_init_mode": _no_effect(
        "proxies start as N(0, 1)/8 (proxy_init_std 0.125)",
        lambda value: value == "norm",
        "only 'norm' (N(0, 1)/8, proxy_init_std: 0.125) exists here",
    ),
    # --- DADA ------------------------------------------------------------------------------------------
    "oproxy_ratio": _rename("proxy_loss_weight"),
    "dis_gamma": _rename("adv_weight"),
    "d_dis_ratio": _rename("class_ratio"),
    "d_discrepancy_ratio": _rename("discrepancy_weight"),
    "dis_mode": _choice(
        "discrepancy", {"nwd": "nwd", "l1": "l1"}, "`nwd` or `l1`; the reference raises an error for any other value"
    ),
    "dis_decay": _rename("disc_decay", float),
    "normal": ReferenceOption(
        "normalize_features, eval_normalize",
        lambda value, source: {"normalize_features": _scalar(value), "eval_normalize": _scalar(value)},
        "both switches, as in the reference's main.py; a bare `--normal` flag means false, as there",
        bare=False,
    ),
    "fd_fc1_dim": _rename("domain_hidden"),
    "fd2_bn": _rename("domain_out_bn"),
    "fc_fc1_dim": _rename("class_hidden1"),
    "fc_fc2_dim": _rename("class_hidden2"),
    "fc2_bn": _rename("class_out_bn"),
    "active_func": _rename(
        "activation", lambda v: "relu" if v == "relu" else "leaky_relu", "`relu`; anything else is LeakyReLU(0.01)"
    ),
    "mix_extension": _no_effect(
        "false only: true crashes in the reference and is refused",
        lambda value: value is False,
        "mix_extension: true crashes in the reference and is not ported",
    ),
    "dis_init_mode": _no_effect("unused by the reference"),
    # --- evaluation and bookkeeping ----------------------------------------------------------------------
    "evaltypes": _no_effect(
        "`[embeds]` only (the one evaluation type)", lambda value: value == "embeds", "only 'embeds' exists here"
    ),
    "store_improvements": _no_effect("checkpoints/best.pt and last.pt are always written"),
    "no_train_metrics": _no_effect(
        "true only (the reference's default: no train-split metrics); a bare flag means false",
        lambda value: value is True,
        "train-split metrics (no_train_metrics: false) have no equivalent here",
        bare=False,
    ),
    "no_test_metrics": _no_effect(
        "false only: test metrics are always computed (every `eval_every` epochs)",
        lambda value: value is False,
        "test metrics are always computed here (see eval_every)",
    ),
    "save_results": _no_effect(
        "false only: the per-class prediction statistics are not written (eval.py --save_embeddings saves embeddings)",
        lambda value: value is False,
        "save_results (per-class prediction statistics) has no equivalent; eval.py --save_embeddings saves embeddings",
    ),
    "save_step": _no_effect("used with save_results only"),
    "evaluate_on_cpu": _no_effect("where the neighbour search runs does not change the metrics"),
    "internal_split": _no_effect("unused by the reference"),
    "data_ssl_set": _no_effect("unused by the reference"),
    "loss_oproxy_mode": _no_effect("a name only in the reference"),
}
REFERENCE_OPTIONS: Mapping[str, ReferenceOption] = MappingProxyType(_REFERENCE_OPTIONS)
"""The table above, read-only: every option of the reference's ``parameters.py`` by name."""


def _show(value: Any) -> str:
    """A value as YAML writes it (true, not True)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    """Command-line strings as the values they stand for (for display)."""
    value = _scalar(value)
    return [_scalar(v) for v in value] if isinstance(value, list) else value


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {_show(_plain(value))}" for key, value in values.items())


def translate_reference(
    values: Mapping[str, Any], where: str, resolved: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """This project's keys for the keys of one source; reference options are translated by the table.

    `resolved` holds the configuration as resolved before this source (what an option that depends on
    another one, such as `loss: oproxy` on `lr`, reads when the source does not set it). Returns the keys and
    one line per translated option. A value without an equivalent, or a reference option that contradicts
    the same source's own key, is a `UserError` naming the option.
    """
    context = {**(resolved or {}), **values}
    out: dict[str, Any] = {}
    lines: list[str] = []
    for key, value in values.items():
        option = REFERENCE_OPTIONS.get(key)
        if option is None or not option.applies(_scalar(value)):
            out[key] = value
            continue
        try:
            translated = option.translate(value, context)
        except UserError as error:
            raise UserError(f"reference option '{key}' in {where}: {error}") from None
        for ours, ours_value in translated.items():
            if ours in values and ours not in REFERENCE_OPTIONS and _scalar(values[ours]) != ours_value:
                raise UserError(
                    f"{where} sets both '{ours}' and the reference option '{key}' ({key}: {_scalar(value)})"
                )
            out.setdefault(ours, ours_value)
        target = _describe(translated) if translated else f"no effect here ({option.note})"
        lines.append(f"reference option {key}: {_show(_plain(value))} -> {target}")
    return out, lines


def markdown_table() -> str:
    """The table of docs/reference.md."""
    rows = ["| reference option | here | note |", "|---|---|---|"]
    for key, option in REFERENCE_OPTIONS.items():
        here = option.here if option.here == "—" else f"`{option.here}`"
        rows.append(f"| `{key}` | {here} | {option.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())


def criterion_kwargs_from_reference(hparams: dict[str, Any]) -> dict[str, Any]:
    """The criterion's configuration keys for hyper-parameters written with the reference's option names.

    The translation is the table above (``proxy_dim`` 0/1 -> ``loss`` proxy_anchor/softplus_proxy,
    ``active_func`` -> relu/leaky_relu, ``loss`` dadaproxy/oproxy -> ``dada``, ...); ``dada`` is True unless the
    reference ``loss`` says otherwise. Keys that are not criterion settings are dropped; a value without an
    equivalent (``mix_extension: true``) is a ``UserError``.
    """
    from criteria import CRITERION_DEFAULTS

    translated, _ = translate_reference(hparams, "the reference hyper-parameters")
    kwargs: dict[str, Any] = {"dada": True}
    kwargs.update({key: value for key, value in translated.items() if key in CRITERION_DEFAULTS})
    if isinstance(kwargs.get("dropout"), str):  # the reference's command line passes dropout as a string
        kwargs["dropout"] = float(kwargs["dropout"])
    return kwargs
