"""Base proxy losses: parity with pytorch-metric-learning, the spec's formulas and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss as PmlProxyAnchorLoss

from criteria.proxy_losses import (
    PROXY_LOSSES,
    ProxyAnchorLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    SoftplusProxyLoss,
    masked_logsumexp,
)

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
    assert set(PROXY_LOSSES) == {"proxy_anchor", "softplus_proxy", "proxy_nca", "proxy_nca_pp"}


@pytest.mark.parametrize("name", sorted(PROXY_LOSSES))
def test_scalar_with_gradients_to_embeddings_and_proxies(name):
    embeddings, proxies = batch(UNEQUAL_LABELS, 5)
    embeddings.requires_grad_(True)
    proxies.requires_grad_(True)
    loss = PROXY_LOSSES[name]()(embeddings, UNEQUAL_LABELS, proxies)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert embeddings.grad.abs().sum() > 0 and proxies.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(PROXY_LOSSES))
def test_float32_under_bf16_autocast(name):
    embeddings, proxies = batch(UNEQUAL_LABELS, 6)
    low = embeddings.bfloat16()
    loss_fn = PROXY_LOSSES[name]()
    expected = loss_fn(low.float(), UNEQUAL_LABELS, proxies)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(low, UNEQUAL_LABELS, proxies)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
