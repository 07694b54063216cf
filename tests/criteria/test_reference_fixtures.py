"""Parity of the DADA criterion with numbers produced by the reference implementation.

Every ``<case>.json`` / ``<case>.npz`` pair in ``fixture_dir("DADA_REFERENCE_DIR", "dada")`` is a case (see
tests/fixtures/README.md): the criterion is built from the reference hyper-parameters, loaded with the
recorded proxies / discriminators / mix weight, fed the recorded Beta draws, and must reproduce the seven
scalars and four gradients.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import fixture_dir, record_parity, reference_cases, require_cases

from compat.options import REFERENCE_OPTIONS, criterion_kwargs_from_reference
from criteria import (
    CRITERION_DEFAULTS,
    FixedDraws,
    build_criterion,
)
from criteria.dada import DADACriterion
from criteria.mixing import init_mix_weight

FIXTURES = fixture_dir("DADA_REFERENCE_DIR", "dada")
SCALARS = (
    "proxy_loss",
    "uni_term",
    "cls_term",
    "generator_loss",
    "uni_term_d",
    "cls_term_d",
    "discriminator_loss",
)
# Hyper-parameters that are not criterion options of this project but are allowed in a case.
NON_OPTION_KEYS = {"n_classes"}
# Output BatchNorms exist only when enabled; their fixture arrays are then unused.
OUTPUT_BN_PREFIXES = {"domain_out_bn": "domain.bn2.", "class_out_bn": "classifier.bn3."}


def case_names() -> list[str]:
    return reference_cases(FIXTURES)


def load_case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    require_cases(name, FIXTURES)
    spec = json.loads((FIXTURES / f"{name}.json").read_text())
    with np.load(FIXTURES / f"{name}.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    return spec, arrays


def build_case_criterion(hparams: dict, arrays: dict[str, np.ndarray]) -> DADACriterion:
    """Criterion from reference hyper-parameters, with every parameter taken from the case's arrays."""
    unknown = set(hparams) - set(REFERENCE_OPTIONS) - set(CRITERION_DEFAULTS) - NON_OPTION_KEYS
    assert not unknown, f"case uses options the loader does not know: {sorted(unknown)}"
    cfg = SimpleNamespace(**{**CRITERION_DEFAULTS, **criterion_kwargs_from_reference(hparams)})
    criterion = build_criterion(cfg, n_classes=hparams["n_classes"])
    assert isinstance(criterion, DADACriterion)

    state = {"proxies": arrays["proxies"]}
    for key, value in arrays.items():
        if key.startswith("domain."):
            state[key] = value
        elif key.startswith("class."):
            state["classifier." + key.removeprefix("class.")] = value
    if "mix_weight" in arrays:
        state["mix_weight"] = arrays["mix_weight"]

    params = dict(criterion.named_parameters())
    missing = set(params) - set(state)
    assert not missing, f"parameters without a fixture array: {sorted(missing)}"
    disabled = tuple(prefix for flag, prefix in OUTPUT_BN_PREFIXES.items() if not getattr(cfg, flag))
    unexpected = {k for k in set(state) - set(params) if not k.startswith(disabled)}
    assert not unexpected, f"fixture arrays the criterion has no parameter for: {sorted(unexpected)}"
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.asarray(state[name])))
    return criterion


def evaluate(
    criterion: DADACriterion,
    arrays: dict[str, np.ndarray],
    draws_generator: list,
    draws_discriminator: list,
    device: str = "cpu",
) -> tuple[dict[str, float], dict[str, np.ndarray], tuple[int, int]]:
    """The seven scalars, the four gradients, and how many draws each evaluation consumed.

    Labels stay on the CPU (as a data loader delivers them); the criterion moves them.
    """
    criterion.to(device)
    embeddings = torch.from_numpy(arrays["embeddings"]).to(device).requires_grad_(True)
    labels = torch.from_numpy(arrays["labels"]).long()

    criterion.zero_grad()
    criterion.mix_source = FixedDraws(draws_generator)
    loss_g, logs = criterion.generator_loss(embeddings, labels)
    loss_g.backward()
    grads = {
        "grad_embeddings": embeddings.grad.cpu().numpy().copy(),
        "grad_proxies": criterion.proxies.grad.cpu().numpy().copy(),
    }
    consumed_g = criterion.mix_source.consumed

    criterion.zero_grad()
    criterion.mix_source = FixedDraws(draws_discriminator)
    loss_d, logs_d = criterion.discriminator_loss(embeddings, labels)
    loss_d.backward()
    grads["grad_domain_fc1_weight"] = criterion.domain.fc1.weight.grad.cpu().numpy().copy()
    grads["grad_class_fc1_weight"] = criterion.classifier.fc1.weight.grad.cpu().numpy().copy()
    scalars = {k: float(v) for k, v in {**logs, **logs_d}.items()}
    return scalars, grads, (consumed_g, criterion.mix_source.consumed)


def test_fixture_folder_has_complete_pairs():
    names = case_names()
    require_cases(names[0], FIXTURES)
    for name in names:
        assert (FIXTURES / f"{name}.npz").is_file(), f"{name}.json has no {name}.npz"
    assert {p.stem for p in FIXTURES.glob("*.npz")} <= set(names), "a .npz without its .json"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", case_names())
def test_reference_case(name: str, device: str):
    spec, arrays = load_case(name)
    draws_g, draws_d = spec["mix_draws_generator"], spec["mix_draws_discriminator"]
    criterion = build_case_criterion(spec["hyperparameters"], arrays)
    scalars, grads, consumed = evaluate(criterion, arrays, draws_g, draws_d, device)

    assert consumed == (len(draws_g), len(draws_d)), "draw order/count differs from the reference"
    for key in SCALARS:
        assert scalars[key] == pytest.approx(spec["expected"][key], rel=1e-5), key
    for key, value in grads.items():
        np.testing.assert_allclose(value, arrays[key], atol=1e-6, rtol=1e-4, err_msg=key)
    record_parity(FIXTURES, name)


# One option changed at a time: (reference option, new value); None toggles a boolean. Each changes the losses
# in every mix mode except `shift_scale`, which the reference reads only in the `random` mix: with
# `mix_mode: individual | linear` it changes nothing (measured with the reference code: a change of exactly 0).
VARIANTS = [
    ("proxy_dim", 1),
    ("pos_class_mix", None),
    ("mix_mode", "individual"),
    ("mix_mode", "linear"),
    ("shift_scale", -0.5),
    ("shift_scale", 0.5),
    ("dis_mode", "l1"),
    ("normal", None),
    ("fd2_bn", None),
    ("fc2_bn", None),
    ("active_func", "leaky"),
]
MIX_MODES = ("random", "individual", "linear")
SPARE_DRAWS = [0.42, 0.77, 0.13, 0.58]


def changes_the_losses(option: str, hparams: dict) -> bool:
    """Whether the reference's losses depend on `option` under the other settings of `hparams`."""
    return option != "shift_scale" or hparams["mix_mode"] == "random"


def evaluate_hparams(hparams: dict, arrays: dict[str, np.ndarray], spec: dict) -> dict[str, float]:
    """The seven scalars of the case's inputs under `hparams` (a fixed mix weight for the learnable mixes)."""
    case_arrays = dict(arrays)
    if hparams.get("mix_mode", "random") != "random" and "mix_weight" not in arrays:
        torch.manual_seed(0)
        case_arrays["mix_weight"] = init_mix_weight(hparams["mix_mode"], arrays["embeddings"].shape[1]).detach().numpy()
    draws_g = spec["mix_draws_generator"] + SPARE_DRAWS
    draws_d = spec["mix_draws_discriminator"] + SPARE_DRAWS
    scalars, grads, _ = evaluate(build_case_criterion(hparams, case_arrays), case_arrays, draws_g, draws_d)
    assert all(math.isfinite(v) for v in scalars.values()), (hparams, scalars)
    assert all(np.isfinite(g).all() for g in grads.values()), hparams
    return scalars


@pytest.mark.parametrize("mix_mode", MIX_MODES)
@pytest.mark.parametrize("name", case_names())
def test_each_option_changes_the_result_exactly_where_the_reference_does(name: str, mix_mode: str):
    """Every option of VARIANTS, from a base of the case in each mix mode: the losses change where the
    reference's do, and stay exactly equal where the reference ignores the option."""
    spec, arrays = load_case(name)
    if spec["hyperparameters"].get("mix_mode", "random") != mix_mode:
        arrays = {k: v for k, v in arrays.items() if k != "mix_weight"}  # the case's own weight fits its mode only
    base_hparams = {**spec["hyperparameters"], "mix_mode": mix_mode}
    base = evaluate_hparams(base_hparams, arrays, spec)

    for option, value in VARIANTS:
        hparams = dict(base_hparams)
        hparams[option] = (not hparams[option]) if value is None else value
        if hparams[option] == base_hparams[option]:
            continue
        variant_arrays = arrays
        if option == "mix_mode":
            variant_arrays = {k: v for k, v in arrays.items() if k != "mix_weight"}
        scalars = evaluate_hparams(hparams, variant_arrays, spec)
        change = max(abs(scalars[k] - base[k]) for k in SCALARS)
        label = f"{option}={hparams[option]!r} with mix_mode={mix_mode}"
        if changes_the_losses(option, base_hparams):
            assert change > 1e-6, f"{label} did not change any loss"
        else:
            assert scalars == base, f"{label} changed the losses; the reference ignores it there"


def test_loader_rejects_an_unknown_option():
    name = case_names()[0]
    spec, arrays = load_case(name)
    with pytest.raises(AssertionError, match="mix_extension_v2"):
        build_case_criterion({**spec["hyperparameters"], "mix_extension_v2": True}, arrays)
