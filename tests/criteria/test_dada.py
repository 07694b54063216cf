"""DADA criterion: mixing sources and functions, discriminators, objectives, parameter groups, building."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from compat.options import criterion_kwargs_from_reference
from criteria import (
    CRITERION_DEFAULTS,
    LOSSES,
    PROXY_LOSSES,
    DADACriterion,
    FixedDraws,
    MixSource,
    ProxyAnchorLoss,
    ProxyCriterion,
    SeededBetaSource,
    build_criterion,
)
from criteria.discriminators import (
    ClassDiscrepancyPredictor,
    DomainDiscriminator,
    l1_discrepancy,
    nuclear_norm_discrepancy,
)
from criteria.mixing import (
    individual_mix,
    init_mix_weight,
    linear_mix,
    mix_positive_pairs,
    positive_pair_indices,
    random_mix,
)
from utilities.errors import UserError

N_CLASSES, DIM = 6, 8
LABELS = torch.tensor([3, 3, 1, 1, 4, 4, 3, 3, 0, 0])


def make_cfg(**overrides) -> SimpleNamespace:
    small = {"embed_dim": DIM, "domain_hidden": 8, "class_hidden1": 8, "class_hidden2": 6, "dropout": 0.0}
    return SimpleNamespace(**{**CRITERION_DEFAULTS, **small, **overrides})


def make_criterion(**overrides) -> DADACriterion:
    torch.manual_seed(0)
    criterion = build_criterion(make_cfg(**overrides), N_CLASSES)
    assert isinstance(criterion, DADACriterion)
    return criterion


def embeddings(seed: int = 0, n: int = len(LABELS)) -> torch.Tensor:
    return F.layer_norm(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), (DIM,))


# -- sources of mixing coefficients ----------------------------------------------------------------------


def test_seeded_beta_source_is_deterministic_per_seed_and_epoch():
    first, second = SeededBetaSource(7), SeededBetaSource(7)
    draws = [first.beta(3.0, 0.5) for _ in range(5)]
    assert draws == [second.beta(3.0, 0.5) for _ in range(5)]
    assert isinstance(first, MixSource) and all(isinstance(d, float) and 0 <= d <= 1 for d in draws)

    first.set_epoch(3)
    epoch3 = [first.beta(2.0, 2.0) for _ in range(4)]
    second.set_epoch(3)
    assert epoch3 == [second.beta(2.0, 2.0) for _ in range(4)]
    second.set_epoch(4)
    assert epoch3 != [second.beta(2.0, 2.0) for _ in range(4)]
    assert draws != [SeededBetaSource(8).beta(3.0, 0.5) for _ in range(5)]


def test_seeded_beta_source_state_dict_resumes_the_sequence():
    source = SeededBetaSource(1)
    source.set_epoch(2)
    source.beta(2.0, 5.0)
    state = source.state_dict()
    expected = [source.beta(2.0, 5.0) for _ in range(3)]
    resumed = SeededBetaSource(99)
    resumed.load_state_dict(state)
    assert [resumed.beta(2.0, 5.0) for _ in range(3)] == expected
    assert resumed.seed == 1 and resumed.epoch == 2


@pytest.mark.parametrize("a, b", [(3.0, 0.5), (2.0, 5.0), (0.5, 0.5)])
def test_seeded_beta_source_has_the_beta_mean(a, b):
    source = SeededBetaSource(0)
    draws = torch.tensor([source.beta(a, b) for _ in range(4000)])
    assert draws.mean().item() == pytest.approx(a / (a + b), abs=0.015)
    variance = a * b / ((a + b) ** 2 * (a + b + 1))
    assert draws.var().item() == pytest.approx(variance, rel=0.1)


def test_fixed_draws_in_order_then_a_clear_error():
    source = FixedDraws([0.25, 0.5])
    assert [source.beta(2, 2), source.beta(3, 0.5)] == [0.25, 0.5]
    with pytest.raises(RuntimeError, match="FixedDraws exhausted.*2 given draws"):
        source.beta(2, 2)


# -- mixing functions ------------------------------------------------------------------------------------


def test_positive_pairs_first_and_second_row_of_each_class():
    labels = torch.tensor([3, 3, 7, 7, 1, 1, 3, 3, 5])  # 5 appears once: no pair
    anchors, positives = positive_pair_indices(labels)
    assert anchors.tolist() == [4, 0, 2] and positives.tolist() == [5, 1, 3]
    anchors, positives = positive_pair_indices(torch.tensor([2, 0, 2, 0]))
    assert anchors.tolist() == [1, 0] and positives.tolist() == [3, 2]


def test_mix_positive_pairs_extends_the_batch_with_two_draws():
    x = torch.arange(12.0).reshape(4, 3)
    proxies = torch.arange(9.0).reshape(3, 3) * 10
    labels = torch.tensor([2, 0, 2, 0])
    source = FixedDraws([0.25, 0.9])
    samples, ext_labels, row_proxies = mix_positive_pairs(x, labels, proxies, source)
    assert source.consumed == 2
    assert ext_labels.tolist() == [2, 0, 2, 0, 0, 2]
    torch.testing.assert_close(samples[4], 0.25 * x[1] + 0.75 * x[3])
    torch.testing.assert_close(samples[5], 0.25 * x[0] + 0.75 * x[2])
    torch.testing.assert_close(row_proxies, proxies[ext_labels])


def test_random_mix_shift_scales():
    e, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(random_mix(e, q, 0.3), torch.tensor([[0.7, 0.3]]))  # λ weights the proxy
    torch.testing.assert_close(random_mix(e, q, 0.3, shift_scale=0.5), torch.tensor([[0.85, 0.15]]))
    # s < 0: λ(s + 1) weights the sample
    torch.testing.assert_close(random_mix(e, q, 0.3, shift_scale=-0.5), torch.tensor([[0.15, 0.85]]))
    for bad in (-1.0, 1.5):
        with pytest.raises(ValueError, match="shift_scale"):
            random_mix(e, q, 0.3, shift_scale=bad)


def test_learnable_mixes_and_their_initialisation():
    torch.manual_seed(0)
    f = init_mix_weight("individual", 512)
    w = init_mix_weight("linear", 512)
    assert init_mix_weight("random", 512) is None
    assert f.shape == (1, 512) and w.shape == (1024, 512)
    assert f.abs().max() <= 1.414 * math.sqrt(6 / 513) and f.abs().max() > 0.14  # ≈ ±0.153
    assert w.abs().max() <= 1.414 * math.sqrt(6 / 1536) and w.abs().max() > 0.08  # ≈ ±0.088
    e, q = torch.randn(3, 4), torch.randn(3, 4)
    f4 = torch.rand(1, 4)
    torch.testing.assert_close(individual_mix(e, q, f4), f4 * e + (1 - f4) * q)
    w4 = torch.randn(8, 4)
    torch.testing.assert_close(linear_mix(e, q, w4), e @ w4[:4] + q @ w4[4:])


# -- discriminators --------------------------------------------------------------------------------------


def test_discriminator_layers_and_pinned_train_mode():
    domain = DomainDiscriminator(16, 8, out_bn=True, activation="leaky_relu")
    assert [domain.fc1.weight.shape, domain.fc2.weight.shape] == [(8, 16), (3, 8)]
    assert domain.bn2.num_features == 3 and domain.act.negative_slope == 0.01
    assert DomainDiscriminator(16, 8).bn2 is None
    classifier = ClassDiscrepancyPredictor(16, 8, 6, 10, dropout=0.25)
    assert [m.weight.shape for m in (classifier.fc1, classifier.fc2, classifier.fc3)] == [(8, 16), (6, 8), (10, 6)]
    assert classifier.bn3 is None and classifier.dropout.p == 0.25
    assert ClassDiscrepancyPredictor(16, 8, 6, 10, out_bn=True).bn3.num_features == 10
    criterion = make_criterion()
    criterion.eval()
    assert criterion.domain.training and criterion.classifier.training
    with pytest.raises(ValueError, match="activation"):
        DomainDiscriminator(16, 8, activation="gelu")


def test_discrepancies_hand_example():
    sharp = 100.0 * torch.eye(3, 4)  # softmax ≈ one-hot rows of distinct classes: nuclear norm 3
    flat = torch.zeros(3, 4)  # uniform rows, rank 1: nuclear norm sqrt(3 * 4) / 4
    assert nuclear_norm_discrepancy(sharp, flat).item() == pytest.approx((3 - math.sqrt(12) / 4) / 3, rel=1e-5)
    assert l1_discrepancy(sharp, flat).item() == pytest.approx((0.75 + 3 * 0.25) / 4, rel=1e-5)
    assert nuclear_norm_discrepancy(sharp, sharp).item() == 0.0


# -- the objectives --------------------------------------------------------------------------------------


def test_discriminator_loss_sends_no_gradient_to_embeddings():
    criterion = make_criterion(pos_class_mix=True)
    x = embeddings().requires_grad_(True)
    loss, logs = criterion.discriminator_loss(x, LABELS)
    loss.backward()
    assert x.grad is None or x.grad.abs().sum() == 0
    assert criterion.domain.fc1.weight.grad.abs().sum() > 0
    assert criterion.classifier.fc1.weight.grad.abs().sum() > 0
    assert set(logs) == {"uni_term_d", "cls_term_d", "discriminator_loss"}
    assert all(not v.requires_grad for v in logs.values())
    assert logs["discriminator_loss"].item() == pytest.approx(loss.item())


def test_generator_loss_sends_gradient_to_embeddings_and_proxies():
    criterion = make_criterion(pos_class_mix=True)
    x = embeddings().requires_grad_(True)
    loss, logs = criterion(x, LABELS)
    loss.backward()
    assert x.grad.abs().sum() > 0 and criterion.proxies.grad.abs().sum() > 0
    assert set(logs) == {"proxy_loss", "uni_term", "cls_term", "generator_loss"}
    assert all(not v.requires_grad for v in logs.values())
    r = criterion.proxy_loss_weight
    expected = r * logs["proxy_loss"] + logs["cls_term"] - logs["uni_term"]
    assert logs["generator_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "overrides, draws",
    [
        ({}, 2),
        ({"pos_class_mix": True}, 4),
        ({"pos_class_mix": True, "mix_mode": "individual"}, 2),
        ({"mix_mode": "linear"}, 0),
    ],
)
def test_draws_per_evaluation(overrides, draws):
    criterion = make_criterion(**overrides)
    for objective in (criterion.generator_loss, criterion.discriminator_loss):
        criterion.mix_source = FixedDraws([0.5] * 10)
        objective(embeddings(), LABELS)
        assert criterion.mix_source.consumed == draws


def test_domains_are_forwarded_separately():
    criterion = make_criterion(class_ratio=0.0)
    x = embeddings()
    criterion.mix_source = FixedDraws([0.3, 0.6])
    _, logs = criterion.discriminator_loss(x, LABELS)

    q = criterion.proxies.detach()[LABELS]
    inputs = [F.normalize(t, dim=-1) for t in (x, random_mix(x, q, 0.3), q)]
    with torch.no_grad():
        separate = sum(F.cross_entropy(criterion.domain(t), torch.full((len(x),), d)) for d, t in enumerate(inputs))
        joint = F.cross_entropy(criterion.domain(torch.cat(inputs)), torch.arange(3).repeat_interleave(len(x)))
    assert logs["uni_term_d"].item() == pytest.approx(separate.item(), rel=1e-6)
    assert abs(3 * joint.item() - separate.item()) > 1e-4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_float32_under_bf16_autocast(device):
    criterion = make_criterion(pos_class_mix=True).to(device)
    low = embeddings().to(device).bfloat16()
    results = []
    for autocast in (False, True):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            criterion.mix_source = FixedDraws([0.4, 0.5, 0.6, 0.7])
            loss_g, logs_g = criterion.generator_loss(low if autocast else low.float(), LABELS)
            criterion.mix_source = FixedDraws([0.3, 0.2, 0.8, 0.9])
            loss_d, logs_d = criterion.discriminator_loss(low if autocast else low.float(), LABELS)
        assert loss_g.dtype == loss_d.dtype == torch.float32
        results.append({**logs_g, **logs_d})
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-6, atol=1e-6, msg=key)


# -- parameter groups ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix_mode", ["random", "individual", "linear"])
def test_param_groups(mix_mode):
    criterion = make_criterion(mix_mode=mix_mode)
    groups = criterion.param_groups(proxy_lr=0.04, disc_lr=5e-4, disc_decay=4e-4)
    proxy, disc = groups["proxy"], groups["discriminator"]
    assert proxy[0]["params"] == [criterion.proxies] and (proxy[0]["lr"], proxy[0]["weight_decay"]) == (0.04, 0.0)
    assert {id(p) for p in disc[0]["params"]} == {id(p) for p in criterion.domain.parameters()}
    assert {id(p) for p in disc[1]["params"]} == {id(p) for p in criterion.classifier.parameters()}
    assert all((g["lr"], g["weight_decay"]) == (5e-4, 4e-4) for g in disc[:2])
    if mix_mode == "individual":
        assert proxy[1] == {"params": [criterion.mix_weight], "lr": 5e-4, "weight_decay": 0.0} and len(disc) == 2
    elif mix_mode == "linear":
        assert disc[2] == {"params": [criterion.mix_weight], "lr": 5e-4, "weight_decay": 0.0} and len(proxy) == 1
    else:
        assert criterion.mix_weight is None and len(proxy) == 1 and len(disc) == 2
    grouped = [id(p) for group in proxy + disc for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in criterion.parameters())
    torch.optim.Adam(proxy)
    torch.optim.Adam(disc)


def test_proxy_criterion_baseline():
    torch.manual_seed(0)
    criterion = build_criterion(make_cfg(dada=False, loss="proxy_anchor"), N_CLASSES)
    assert isinstance(criterion, ProxyCriterion) and criterion.adversarial is False
    assert criterion.proxies.shape == (N_CLASSES, DIM)
    assert criterion.proxies.std().item() == pytest.approx(0.125, rel=0.35)
    x = embeddings()
    loss, logs = criterion(x, LABELS)
    expected = ProxyAnchorLoss(32.0, 32.0)(x, LABELS, criterion.proxies)
    assert loss.item() == pytest.approx(expected.item()) and set(logs) == {"proxy_loss"}
    groups = criterion.param_groups(0.04, 5e-4, 1e-4)
    assert groups == {"proxy": [{"params": [criterion.proxies], "lr": 0.04, "weight_decay": 0.0}], "discriminator": []}


# -- building from a configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", sorted(PROXY_LOSSES))
@pytest.mark.parametrize("dada", [True, False])
def test_build_criterion_for_every_loss(loss, dada):
    if dada and not LOSSES[loss].one_proxy_per_class:
        with pytest.raises(UserError, match="DADA's domains need one proxy per class"):
            build_criterion(make_cfg(loss=loss, dada=dada), N_CLASSES)
        return
    torch.manual_seed(0)
    criterion = build_criterion(make_cfg(loss=loss, dada=dada), N_CLASSES)
    assert isinstance(criterion.base_loss, PROXY_LOSSES[loss]) and criterion.adversarial is dada
    value, _ = criterion.generator_loss(embeddings(), LABELS)
    assert torch.isfinite(value)


def test_build_criterion_passes_the_options_through():
    criterion = make_criterion(pos_alpha=40.0, neg_alpha=100.0, pa_positive_mean="proxy", class_ratio=0.005)
    assert (criterion.base_loss.pos_alpha, criterion.base_loss.neg_alpha) == (40.0, 100.0)
    assert criterion.base_loss.positive_mean == "proxy" and criterion.class_ratio == 0.005
    assert isinstance(criterion.mix_source, SeededBetaSource)
    nca = build_criterion(make_cfg(loss="proxy_nca_pp", nca_temperature=0.5), N_CLASSES)
    assert nca.base_loss.temperature == 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "proxynca"}, "loss: unknown value 'proxynca'; expected one of norm_softmax, proxy_anchor, proxy_nca"),
        # DADA's keys are checked by the one check the configuration runs too (criteria.settings.check_dada)
        ({"mix_mode": "mean"}, "key 'mix_mode' must be one of random, individual, linear; got 'mean'"),
        ({"discrepancy": "l2"}, "key 'discrepancy' must be one of nwd, l1; got 'l2'"),
        ({"activation": "gelu"}, "key 'activation' must be one of relu, leaky_relu; got 'gelu'"),
        ({"pa_positive_mean": "class"}, "pa_positive_mean: unknown value"),
        ({"shift_scale": 1.5}, "key 'shift_scale' must be in (-1, 1]; got 1.5"),
        ({"pos_class_mix": True, "samples_per_class": 1}, "key 'pos_class_mix' needs samples_per_class >= 2"),
    ],
)
def test_build_criterion_user_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        build_criterion(make_cfg(**overrides), N_CLASSES)


def test_criterion_kwargs_from_reference():
    kwargs = criterion_kwargs_from_reference(
        {
            "proxy_dim": 1,
            "active_func": "leakyrelu",
            "loss_oproxy_pos_alpha": 40,
            "oproxy_ratio": 0.0075,
            "d_dis_ratio": 0.005,
            "d_discrepancy_ratio": 0.5,
            "dis_gamma": 1.0,
            "dis_mode": "l1",
            "normal": False,
            "fd_fc1_dim": 128,
            "fd2_bn": True,
            "fc_fc1_dim": 1024,
            "fc_fc2_dim": 8192,
            "fc2_bn": True,
            "dropout": "0.5",
            "lr": 1e-4,  # not a criterion option: ignored
        }
    )
    assert kwargs == {
        "dada": True,
        "loss": "softplus_proxy",
        "activation": "leaky_relu",
        "pos_alpha": 40,
        "proxy_loss_weight": 0.0075,
        "class_ratio": 0.005,
        "discrepancy_weight": 0.5,
        "adv_weight": 1.0,
        "discrepancy": "l1",
        "normalize_features": False,
        "domain_hidden": 128,
        "domain_out_bn": True,
        "class_hidden1": 1024,
        "class_hidden2": 8192,
        "class_out_bn": True,
        "dropout": 0.5,
    }
    assert criterion_kwargs_from_reference({"proxy_dim": 0, "active_func": "relu"})["loss"] == "proxy_anchor"
    assert criterion_kwargs_from_reference({"active_func": "relu"})["activation"] == "relu"
    assert criterion_kwargs_from_reference({"loss": "oproxy"})["dada"] is False
    with pytest.raises(UserError, match="mix_extension"):
        criterion_kwargs_from_reference({"mix_extension": True})
    with pytest.raises(UserError, match="proxy_dim"):
        criterion_kwargs_from_reference({"proxy_dim": 2})
