"""Base proxy losses: parity with pytorch-metric-learning, the spec's formulas and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import CosFaceLoss as PmlCosFaceLoss
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss as PmlNormalizedSoftmaxLoss
from pytorch_metric_learning.losses import ProxyAnchorLoss as PmlProxyAnchorLoss
from pytorch_metric_learning.losses import SoftTripleLoss as PmlSoftTripleLoss
from pytorch_metric_learning.regularizers import SparseCentersRegularizer

from criteria.norm_softmax import NormSoftmaxLoss
from criteria.proxy_losses import (
    ProxyAnchorLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    SoftplusProxyLoss,
    masked_logsumexp,
)
from criteria.registry import PROXY_LOSSES
from criteria.softtriple import SoftTripleLoss

UNEQUAL_LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 5])  # classes 4 and 6 absent
EQUAL_LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 5, 5, 6, 6])
N_CLASSES, DIM = 7, 12


def batch(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(len(labels), DIM, generator=generator, dtype=torch.float64) * 3
    proxies = torch.randn(N_CLASSES, DIM, generator=generator, dtype=torch.float64) / 8
    return embeddings.float(), proxies.float()


def pml_proxy_anchor(embeddings, labels, proxies, alpha, margin):
    loss_fn = PmlProxyAnchorLoss(
        num_classes=proxies.shape[0], embedding_size=proxies.shape[1], margin=margin, alpha=alpha
    )
    with torch.no_grad():
        loss_fn.proxies.copy_(proxies)
    return loss_fn(embeddings, labels), loss_fn.proxies


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- masked_logsumexp ------------------------------------------------------------------------------------


def test_masked_logsumexp_adds_one_and_zeroes_empty_masks():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [True, False]])
    along_rows = masked_logsumexp(values, mask, dim=0)
    torch.testing.assert_close(along_rows, torch.tensor([math.log(1 + math.e + math.e**3), 0.0]))
    along_cols = masked_logsumexp(values, mask, dim=1)
    torch.testing.assert_close(along_cols, torch.tensor([math.log(1 + math.e), math.log(1 + math.e**3)]))
    along_rows.sum().backward()
    assert torch.isfinite(values.grad).all()
    assert values.grad[:, 1].abs().sum() == 0


# -- Proxy-Anchor ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, margin, seed", [(32.0, 0.1, 0), (16.0, 0.2, 1), (32.0, 0.1, 2)])
def test_proxy_mode_equals_pytorch_metric_learning(alpha, margin, seed):
    embeddings, proxies = batch(UNEQUAL_LABELS, seed)
    ours_emb = embeddings.clone().requires_grad_(True)
    ours_proxies = proxies.clone().requires_grad_(True)
    loss_fn = ProxyAnchorLoss(alpha, alpha, margin, -margin, positive_mean="proxy")
    ours = loss_fn(ours_emb, UNEQUAL_LABELS, ours_proxies)
    ours.backward()

    pml_emb = embeddings.clone().requires_grad_(True)
    reference, pml_proxies = pml_proxy_anchor(pml_emb, UNEQUAL_LABELS, proxies, alpha, margin)
    reference.backward()

    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(ours_emb.grad, pml_emb.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours_proxies.grad, pml_proxies.grad, atol=1e-6, rtol=1e-4)


def test_sample_mode_differs_with_unequal_counts_and_agrees_with_equal_counts():
    embeddings, proxies = batch(UNEQUAL_LABELS, 0)
    sample = ProxyAnchorLoss(32.0, 32.0, positive_mean="sample")(embeddings, UNEQUAL_LABELS, proxies)
    reference, _ = pml_proxy_anchor(embeddings, UNEQUAL_LABELS, proxies, 32.0, 0.1)
    assert abs(sample.item() - reference.item()) > 1e-2

    embeddings, proxies = batch(EQUAL_LABELS, 0)
    sample = ProxyAnchorLoss(32.0, 32.0, positive_mean="sample")(embeddings, EQUAL_LABELS, proxies)
    proxy = ProxyAnchorLoss(32.0, 32.0, positive_mean="proxy")(embeddings, EQUAL_LABELS, proxies)
    reference, _ = pml_proxy_anchor(embeddings, EQUAL_LABELS, proxies, 32.0, 0.1)
    assert sample.item() == pytest.approx(reference.item(), rel=1e-5)
    assert proxy.item() == pytest.approx(reference.item(), rel=1e-5)


def test_sample_mode_follows_the_spec_formula_with_separate_alphas():
    embeddings, proxies = batch(UNEQUAL_LABELS, 3)
    pos_alpha, neg_alpha, pos_delta, neg_delta = 40.0, 100.0, 0.1, -0.1
    loss = ProxyAnchorLoss(pos_alpha, neg_alpha, pos_delta, neg_delta)(embeddings, UNEQUAL_LABELS, proxies)

    s = normalise(embeddings.double().numpy()) @ normalise(proxies.double().numpy()).T
    y = UNEQUAL_LABELS.numpy()
    pos = np.mean([np.log1p(np.exp(-pos_alpha * (s[y == y[j], y[j]] - pos_delta)).sum()) for j in range(len(y))])
    neg = np.mean([np.log1p(np.exp(neg_alpha * (s[y != c, c] - neg_delta)).sum()) for c in range(N_CLASSES)])
    assert loss.item() == pytest.approx(pos + neg, rel=1e-5)


def test_softplus_proxy_loss_follows_the_spec_formula():
    embeddings, proxies = batch(UNEQUAL_LABELS, 4)
    pos_alpha, neg_alpha, pos_delta, neg_delta = 40.0, 100.0, 0.1, -0.1
    loss = SoftplusProxyLoss(pos_alpha, neg_alpha, pos_delta, neg_delta)(embeddings, UNEQUAL_LABELS, proxies)

    s = normalise(embeddings.double().numpy()) @ normalise(proxies.double().numpy()).T
    y = UNEQUAL_LABELS.numpy()
    counts = np.bincount(y, minlength=N_CLASSES)
    pos = np.mean([np.log1p(counts[y[n]] * np.exp(-pos_alpha * (s[n, y[n]] - pos_delta))) for n in range(len(y))])
    neg = np.mean([np.log1p(np.exp(neg_alpha * (np.delete(s[n], y[n]) - neg_delta)).sum()) for n in range(len(y))])
    assert loss.item() == pytest.approx(pos + neg, rel=1e-5)


def test_unknown_positive_mean_is_rejected():
    with pytest.raises(ValueError, match="positive_mean"):
        ProxyAnchorLoss(positive_mean="class")


# -- ProxyNCA / ProxyNCA++ on a hand-computed example ----------------------------------------------------
# Normalised: e0 -> (1, 0), e1 -> (0, 1); proxies -> (1, 0), (0, 1), (-1, 0); labels 1, 2.
# Squared distances between unit vectors (2 - 2 cos):  e0: [0, 2, 4]   e1: [2, 0, 2].
HAND_EMBEDDINGS = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
HAND_PROXIES = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-0.1, 0.0]])
HAND_LABELS = torch.tensor([1, 2])


def test_proxy_nca_hand_example():
    # e0: positive d = 2, negatives d = 0, 4 -> 2 + log(e^0 + e^-4); e1: 2 + log(e^-2 + e^0).
    expected = (2 + math.log(1 + math.exp(-4)) + 2 + math.log(math.exp(-2) + 1)) / 2
    loss = ProxyNCALoss()(HAND_EMBEDDINGS, HAND_LABELS, HAND_PROXIES)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # scale 3 multiplies every squared distance by 9
    expected_scaled = (18 + math.log(1 + math.exp(-36)) + 18 + math.log(math.exp(-18) + 1)) / 2
    loss = ProxyNCALoss(scale=3.0)(HAND_EMBEDDINGS, HAND_LABELS, HAND_PROXIES)
    assert loss.item() == pytest.approx(expected_scaled, rel=1e-6)


def test_proxy_nca_plus_plus_hand_example():
    # logits -d/T; e0 (label 1): [0, -2, -4]/T, e1 (label 2): [-2, 0, -2]/T
    def expected(t):
        first = 2 / t + math.log(1 + math.exp(-2 / t) + math.exp(-4 / t))
        second = 2 / t + math.log(1 + 2 * math.exp(-2 / t))
        return (first + second) / 2

    assert ProxyNCAPlusPlusLoss(temperature=1.0)(HAND_EMBEDDINGS, HAND_LABELS, HAND_PROXIES).item() == pytest.approx(
        expected(1.0), rel=1e-6
    )
    assert ProxyNCAPlusPlusLoss()(HAND_EMBEDDINGS, HAND_LABELS, HAND_PROXIES).item() == pytest.approx(
        expected(1 / 9), rel=1e-6
    )


# -- contracts shared by every registered loss -----------------------------------------------------------


def test_registry_names():
    expected = {"proxy_anchor", "softplus_proxy", "proxy_nca", "proxy_nca_pp", "softtriple", "norm_softmax"}
    assert set(PROXY_LOSSES) >= expected  # a new loss adds itself without editing this test


def proxies_for(loss_fn, proxies: torch.Tensor, seed: int) -> torch.Tensor:
    """``proxies`` for a loss with one proxy per class, fresh N(0, 1/64) rows for one with K per class."""
    k = loss_fn.proxies_per_class
    if k == 1:
        return proxies
    return torch.randn(N_CLASSES * k, DIM, generator=torch.Generator().manual_seed(seed)) / 8


@pytest.mark.parametrize("name", sorted(PROXY_LOSSES))
def test_scalar_with_gradients_to_embeddings_and_proxies(name):
    embeddings, proxies = batch(UNEQUAL_LABELS, 5)
    loss_fn = PROXY_LOSSES[name]()
    proxies = proxies_for(loss_fn, proxies, 5)
    embeddings.requires_grad_(True)
    proxies.requires_grad_(True)
    loss = loss_fn(embeddings, UNEQUAL_LABELS, proxies)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert embeddings.grad.abs().sum() > 0 and proxies.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(PROXY_LOSSES))
def test_float32_under_bf16_autocast(name):
    embeddings, proxies = batch(UNEQUAL_LABELS, 6)
    low = embeddings.bfloat16()
    loss_fn = PROXY_LOSSES[name]()
    proxies = proxies_for(loss_fn, proxies, 6)
    expected = loss_fn(low.float(), UNEQUAL_LABELS, proxies)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(low, UNEQUAL_LABELS, proxies)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# -- SoftTriple, Normalized-Softmax and CosFace against pytorch-metric-learning --------------------------
# pytorch-metric-learning keeps its class weights as a [D, C·K] matrix: ours are the transposed [C·K, D].


@pytest.mark.parametrize("k, tau, seed", [(3, 0.2, 0), (4, 0.0, 1), (1, 0.2, 2)])
def test_softtriple_equals_pytorch_metric_learning(k, tau, seed):
    embeddings, _ = batch(UNEQUAL_LABELS, seed)
    centres = torch.randn(N_CLASSES * k, DIM, generator=torch.Generator().manual_seed(seed + 10)) / 8
    loss_fn = SoftTripleLoss(k, la=20.0, gamma=0.1, tau=tau, margin=0.01)
    regulariser = {}
    if k > 1 and tau:
        regulariser = {"weight_regularizer": SparseCentersRegularizer(N_CLASSES, k), "weight_reg_weight": tau}
    oracle = PmlSoftTripleLoss(N_CLASSES, DIM, centers_per_class=k, la=20, gamma=0.1, margin=0.01, **regulariser)
    with torch.no_grad():
        oracle.fc.copy_(centres.T)
    expected = oracle(embeddings, UNEQUAL_LABELS)
    torch.testing.assert_close(loss_fn(embeddings, UNEQUAL_LABELS, centres), expected, rtol=1e-5, atol=1e-5)


def test_softtriple_follows_the_paper_formula():
    k, la, gamma, tau, delta = 2, 10.0, 0.5, 0.3, 0.1
    embeddings, _ = batch(UNEQUAL_LABELS, 3)
    centres = torch.randn(N_CLASSES * k, DIM, generator=torch.Generator().manual_seed(4)) / 8
    loss = SoftTripleLoss(k, la=la, gamma=gamma, tau=tau, margin=delta)(embeddings, UNEQUAL_LABELS, centres)

    x, w = normalise(embeddings.double().numpy()), normalise(centres.double().numpy()).reshape(N_CLASSES, k, DIM)
    y = UNEQUAL_LABELS.numpy()
    sims = np.einsum("nd,ckd->nck", x, w)
    soft = np.exp(sims / gamma) / np.exp(sims / gamma).sum(axis=2, keepdims=True)
    s = (soft * sims).sum(axis=2)
    logits = la * (s - delta * np.eye(N_CLASSES)[y])
    ce = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y])
    pair_distances = [np.sqrt(2 + 2e-5 - 2 * w[c, 0] @ w[c, 1]) for c in range(N_CLASSES)]
    reg = np.sum(pair_distances) / (N_CLASSES * k * (k - 1))
    assert loss.item() == pytest.approx(ce + tau * reg, rel=1e-5)


@pytest.mark.parametrize("scale, seed", [(20.0, 0), (4.0, 1)])
def test_norm_softmax_equals_pytorch_metric_learning(scale, seed):
    embeddings, proxies = batch(UNEQUAL_LABELS, seed)
    oracle = PmlNormalizedSoftmaxLoss(N_CLASSES, DIM, temperature=1.0 / scale)
    with torch.no_grad():
        oracle.W.copy_(proxies.T)
    expected = oracle(embeddings, UNEQUAL_LABELS)
    got = NormSoftmaxLoss(scale)(embeddings, UNEQUAL_LABELS, proxies)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    learnt = NormSoftmaxLoss(scale, learn_scale=True)(embeddings, UNEQUAL_LABELS, proxies)
    torch.testing.assert_close(learnt, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, margin, seed", [(64.0, 0.35, 0), (16.0, 0.1, 1)])
def test_norm_softmax_with_a_margin_equals_pytorch_metric_learning_cosface(scale, margin, seed):
    embeddings, proxies = batch(UNEQUAL_LABELS, seed)
    oracle = PmlCosFaceLoss(N_CLASSES, DIM, margin=margin, scale=scale)
    with torch.no_grad():
        oracle.W.copy_(proxies.T)
    expected = oracle(embeddings, UNEQUAL_LABELS)
    got = NormSoftmaxLoss(scale, margin=margin)(embeddings, UNEQUAL_LABELS, proxies)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_learnable_temperature_and_scale_get_gradients_and_groups():
    embeddings, proxies = batch(UNEQUAL_LABELS, 7)
    nca = ProxyNCAPlusPlusLoss(temperature=0.25, learn_temperature=True)
    fixed = ProxyNCAPlusPlusLoss(temperature=0.25)
    torch.testing.assert_close(nca(embeddings, UNEQUAL_LABELS, proxies), fixed(embeddings, UNEQUAL_LABELS, proxies))
    nca(embeddings, UNEQUAL_LABELS, proxies).backward()
    assert nca.log_temperature.grad.abs() > 0
    proxy_param = torch.nn.Parameter(proxies)
    assert [g["params"] for g in nca.param_groups(proxy_param, 0.04)] == [[proxy_param], [nca.log_temperature]]
    assert [g["params"] for g in fixed.param_groups(proxy_param, 0.04)] == [[proxy_param]]
    scaled = NormSoftmaxLoss(8.0, learn_scale=True)
    scaled(embeddings, UNEQUAL_LABELS, proxies).backward()
    assert scaled.log_scale.grad.abs() > 0 and scaled.scale == pytest.approx(8.0)
