"""Metric definitions, pml parity, backend agreement, exactness of the bf16 candidate path, names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics import (
    canonical_metric_name,
    compute_metrics,
    compute_query_gallery_metrics,
    f1_from_assignment,
    parse_metric_list,
    retrieval,
)
from metrics.knn import Gallery, KnnStats, full_exact_rows, iter_knn
from utilities.errors import UserError

THREE = ["recall@1", "r_precision", "map@r"]
ALL_RETRIEVAL = ["recall@1", "recall@3", "recall@10", "r_precision", "map@r", "map@r_legacy", "map@20"]


def _tied_set(seed: int, n: int = 240, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Quantised embeddings (many exact distance ties), exact duplicates across classes, singletons."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, size=n)
    labels[:5] = 1000 + np.arange(5)  # five singleton classes
    x = np.round(rng.standard_normal((n, dim)) * 1.5) / 2
    x[10:20] = x[30:40]  # duplicates, different labels in general
    x[50:55] = x[50]  # a block of 5 identical points
    return x.astype(np.float32), labels.astype(np.int64)


def _pml(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    res = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    return {
        "recall@1": res["precision_at_1"],
        "r_precision": res["r_precision"],
        "map@r": res["mean_average_precision_at_r"],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_pml_on_ties_duplicates_and_singletons(seed: int) -> None:
    x, y = _tied_set(seed)
    ours, info = compute_metrics(x, y, THREE, backend="torch", return_info=True)
    theirs = _pml(x, y)
    for name in THREE:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12), name
    singletons = int((np.bincount(y)[y] == 1).sum())
    assert info["excluded_queries"] == singletons >= 5


@pytest.mark.parametrize("seed", [0, 3])
def test_backends_agree_exactly(seed: int) -> None:
    x, y = _tied_set(seed)
    torch_values = compute_metrics(x, y, ALL_RETRIEVAL, backend="torch")
    faiss_values = compute_metrics(x, y, ALL_RETRIEVAL, backend="faiss")
    assert torch_values == faiss_values
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((300, 16)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = rng.integers(0, 30, size=300)
    assert compute_metrics(z, labels, ALL_RETRIEVAL, backend="torch") == compute_metrics(
        z, labels, ALL_RETRIEVAL, backend="faiss"
    )


def _reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Independent brute force: float64 squared distances, self removed, order (distance, index)."""
    data = x.double().numpy()
    out = []
    for start in range(0, len(data), 64):
        block = data[start : start + 64]
        dist = ((block[:, None, :] - data[None, :, :]) ** 2).sum(axis=-1)
        dist[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        out.append(np.argsort(dist, axis=1, kind="stable")[:, :k])
    return torch.from_numpy(np.concatenate(out))


def test_float64_fallback_search_equals_reference() -> None:
    x = torch.from_numpy(np.round(np.random.default_rng(4).standard_normal((300, 5)) * 2).astype(np.float32))
    found = full_exact_rows(x, torch.arange(300), 9, Gallery(x, torch.device("cpu")), chunk=64)
    assert torch.equal(found, _reference(x, 9))


def _search(x: torch.Tensor, k: int, **kwargs: object) -> tuple[torch.Tensor, KnnStats]:
    stats = KnnStats()
    parts = [idx for _, idx in iter_knn(x, x, k, exclude_self=True, device=torch.device("cpu"), stats=stats, **kwargs)]  # type: ignore[arg-type]
    return torch.cat(parts), stats


def test_bf16_candidate_path_equals_exact_search_on_separated_data() -> None:
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((1600, 32)).astype(np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    # several chunks, a margin small enough that some rows need the float32 retry
    found, stats = _search(x, 5, backend="torch", candidate_dtype=torch.bfloat16, margin=7, chunk=300)
    assert torch.equal(found, _reference(x, 5))
    assert stats.rows == 1600 and stats.fp32_retry_rows < 1600  # most rows certified by the bf16 stage


def test_bf16_candidate_path_is_exact_on_adversarial_near_ties() -> None:
    rng = np.random.default_rng(6)
    base = rng.standard_normal((40, 24)).astype(np.float32)
    # clusters of points that differ by far less than the bf16 error, plus exact duplicates
    x = np.repeat(base, 15, axis=0) + 1e-5 * rng.standard_normal((600, 24)).astype(np.float32)
    x[::7] = x[3]
    xt = torch.from_numpy(x)
    for margin in (1, 4):
        found, stats = _search(xt, 12, backend="torch", candidate_dtype=torch.bfloat16, margin=margin, chunk=128)
        assert torch.equal(found, _reference(xt, 12))
        assert stats.fp32_retry_rows > 0 and stats.full_rows > 0  # the fallbacks were exercised
    found, _ = _search(xt, 12, backend="faiss", margin=2, chunk=256)
    assert torch.equal(found, _reference(xt, 12))


def test_self_is_excluded_by_index_not_by_position() -> None:
    # items 0 and 1 are identical but of different classes; item 2 is item 0's class further away
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.1]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    for backend in ("torch", "faiss"):
        values = compute_metrics(x, y, ["recall@1", "recall@2"], backend=backend)
        # query 0: nearest other item is 1 (wrong class); dropping "the first neighbour" would keep itself
        assert values == {"recall@1": 0.0, "recall@2": 0.5}


def test_retrieval_worked_example() -> None:
    hits = torch.tensor([[True, False, True, False]])
    relevant = torch.tensor([2])
    assert retrieval.recall_at_k(hits, 1).item() == 1.0
    assert retrieval.r_precision(hits, relevant).item() == 0.5
    assert retrieval.map_at_r(hits, relevant).item() == 0.5
    assert retrieval.map_at_r_legacy(hits, relevant).item() == pytest.approx((1 + 2 / 3) / 3)
    assert retrieval.map_at_k(hits, relevant, 4).item() == pytest.approx((1 + 2 / 3) / 2)
    assert retrieval.map_at_k_legacy(hits, relevant, 4).item() == pytest.approx((1 + 2 / 3) / 3)
    assert retrieval.map_at_k_inshop(hits, 4).item() == pytest.approx((1 + 2 / 3) / 2)
    assert retrieval.map_at_k_inshop(torch.tensor([[False, True, False, True]]), 4).item() == pytest.approx(0.5)


def test_perfect_ranking_scores_one_except_legacy() -> None:
    x = np.array([[0.0], [0.01], [0.02], [0.03], [5.0], [5.01]], dtype=np.float32)
    y = np.array([0, 0, 0, 0, 1, 1])
    values = compute_metrics(x, y, ["map@r", "r_precision", "map@r_legacy", "map@1000", "recall@1"])
    assert values["map@r"] == values["r_precision"] == values["map@1000"] == values["recall@1"] == 1.0
    assert values["map@r_legacy"] == pytest.approx((4 * 3 / 4 + 2 * 1 / 2) / 6)  # (f - 1) / f per query


def test_f1_worked_example() -> None:
    assert f1_from_assignment(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(0.4)


def test_clustering_metrics_on_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8)) * 10
    x = (np.repeat(centres, 10, axis=0) + 0.01 * rng.standard_normal((40, 8))).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    for backend in ("faiss", "torch"):
        values = compute_metrics(x, y, ["nmi", "f1"], backend=backend)
        assert values["nmi"] > 0.8 and values["f1"] > 0.6, backend


def test_query_gallery_hand_example() -> None:
    queries = np.array([[0.0], [10.0], [20.0]], dtype=np.float32)
    query_labels = np.array([0, 1, 7])  # class 7 has no gallery item: excluded
    gallery = np.array([[1.0], [2.0], [9.0], [3.0], [11.5]], dtype=np.float32)
    gallery_labels = np.array([1, 0, 1, 0, 1])
    values, info = compute_query_gallery_metrics(
        queries, query_labels, gallery, gallery_labels, ["recall@1", "recall@2", "map@r"], return_info=True
    )
    # query 0 ranks [1(cls1), 2(cls0), 3(cls0), 9, 11.5]: R = 2, AP@R = (1/2)(1/2) = 0.25
    # query 1 ranks [9(cls1), 11.5(cls1), 3, 2, 1(cls1)]: R = 3, AP@R = (1/3)(1 + 1) = 2/3
    assert values["recall@1"] == 0.5 and values["recall@2"] == 1.0
    assert values["map@r"] == pytest.approx((0.25 + 2 / 3) / 2)
    assert info["excluded_queries"] == 1


def _reference_map_at_k(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The reference's mAP_1000 written out: L2 neighbours, self dropped, sum of precision at hits / class size."""
    distances = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    sizes = np.bincount(y)[y]
    aps = []
    for row in range(len(x)):
        if sizes[row] == 1:
            continue  # this project leaves out queries without any other item of their class (counted in info)
        hit = y[order[row]] == y[row]
        aps.append(np.sum(np.cumsum(hit) * hit / np.arange(1, k + 1)) / sizes[row])
    return float(np.mean(aps))


def _reference_inshop_map(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, k: int) -> float:
    """The reference's In-Shop MAP written out: cosine top-k gallery list, AP normalised by the hits found."""
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    aps = []
    for row, label in enumerate(ql):
        ranked = gl[np.argsort(-scores[row], kind="stable")[:k]]
        found, total = 0, 0.0
        for rank, item in enumerate(ranked, start=1):
            if item == label:
                found += 1
                total += found / rank
        aps.append(total / found if found else 0.0)
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1])
def test_legacy_map_at_k_is_the_reference_mAP_1000(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, 150)
    x = (rng.standard_normal((12, 8))[y] + 0.9 * rng.standard_normal((150, 8))).astype(np.float32)
    for k in (5, 40):
        values = compute_metrics(x, y, [f"map@{k}_legacy", f"map@{k}"])
        assert values[f"map@{k}_legacy"] == pytest.approx(_reference_map_at_k(x, y, k), rel=1e-12)
        assert values[f"map@{k}_legacy"] < values[f"map@{k}"]  # lower: divided by f, not min(R, k)


def test_inshop_map_is_the_reference_in_shop_MAP() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((15, 8))
    gl, ql = rng.integers(0, 15, 120), rng.integers(0, 15, 60)
    ql[:15] = np.arange(15)  # every class has queries
    gl[:15] = np.arange(15)  # and gallery items
    g = (centres[gl] + 1.2 * rng.standard_normal((120, 8))).astype(np.float32)
    q = (centres[ql] + 1.2 * rng.standard_normal((60, 8))).astype(np.float32)
    normed_q, normed_g = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (q, g))
    for k in (3, 50):
        value = compute_query_gallery_metrics(normed_q, ql, normed_g, gl, [f"map@{k}_inshop"])[f"map@{k}_inshop"]
        assert value == pytest.approx(_reference_inshop_map(q, ql, g, gl, k), rel=1e-12)
    # a query without any hit among the first k scores 0, and counts
    hits = torch.tensor([[False, False, True], [True, False, False]])
    assert retrieval.map_at_k_inshop(hits, 2).tolist() == [0.0, 1.0]


def test_alias_names() -> None:
    assert canonical_metric_name("e_recall@4") == "recall@4"
    assert canonical_metric_name("c_recall@16") == "recall@16"
    assert canonical_metric_name("mAP_R") == "map@r_legacy"
    assert canonical_metric_name("mAP_1000") == "map@1000_legacy"  # the reference's denominator: f, not R
    assert canonical_metric_name("c_mAP_1000") == "map@1000_legacy"
    assert canonical_metric_name("MAP") == "map@50_inshop"  # the reference's In-Shop report
    assert canonical_metric_name("map@r") == "map@r"
    for bad in ("recall", "recall@0", "mAP@R", "accuracy"):
        with pytest.raises(UserError, match="metric"):
            canonical_metric_name(bad)


def test_bracketed_and_plain_metric_lists() -> None:
    expected = ["recall@1", "recall@2", "map@r_legacy"]
    assert parse_metric_list(["['e_recall@1',", "'e_recall@2',", "'mAP_R']"]) == expected
    assert parse_metric_list(["['e_recall@1', 'e_recall@2', 'mAP_R']"]) == expected
    assert parse_metric_list(["recall@1", "recall@2", "mAP_R", "e_recall@1"]) == expected


def test_bad_inputs_raise_user_errors() -> None:
    x = np.zeros((4, 3), dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    x_nan = x.copy()
    x_nan[2, 1] = math.nan
    with pytest.raises(UserError, match="NaN"):
        compute_metrics(x_nan, y, ["recall@1"])
    with pytest.raises(UserError, match="labels"):
        compute_metrics(x, y[:3], ["recall@1"])
    with pytest.raises(UserError, match="unknown metric"):
        compute_metrics(x, y, ["recal@1"])
    with pytest.raises(UserError, match="backend"):
        compute_metrics(x, y, ["recall@1"], backend="gpu")


def test_documented_metric_table_is_the_registry() -> None:
    from pathlib import Path

    from metrics.names import metric_table

    assert metric_table() in (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()


def test_every_registered_metric_computes_on_one_set_and_where_allowed_query_to_gallery() -> None:
    """Contract of every registry entry: its name parses back to itself, its aliases resolve to it, it computes
    a value in [0, 1], a perfect embedding scores its best value, and query -> gallery refuses it exactly
    when the registry says so."""
    from metrics.names import METRICS

    x = np.array([[0.0], [0.01], [0.02], [5.0], [5.01], [9.0], [9.02]], dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 2, 2])
    for spec in METRICS:
        name = spec.canonical(3 if spec.parametrised else None)
        assert canonical_metric_name(name) == name
        for alias in spec.aliases:
            assert canonical_metric_name(alias.replace("K", "3")).startswith(spec.name.split("K")[0]), alias
        value = compute_metrics(x, y, [name], backend="torch")[name]
        assert 0.0 <= value <= 1.0 + 1e-12, name
        if not spec.clustering and "legacy" not in name:
            assert value == pytest.approx(1.0), name
        if spec.query_gallery:
            got = compute_query_gallery_metrics(x[::2], y[::2], x[1::2], y[1::2], [name], backend="torch")
            assert 0.0 <= got[name] <= 1.0 + 1e-12, name
        else:
            with pytest.raises(UserError, match="not available for query/gallery"):
                compute_query_gallery_metrics(x[::2], y[::2], x[1::2], y[1::2], [name])


def test_query_that_is_also_in_the_gallery_never_retrieves_itself() -> None:
    queries = np.array([[0.0], [10.0]], dtype=np.float32)
    query_labels = np.array([0, 1])
    # gallery 0 is query 0's own image; gallery 3 is query 1's own image
    gallery = np.array([[0.0], [3.0], [1.0], [10.0], [11.0]], dtype=np.float32)
    gallery_labels = np.array([0, 0, 1, 1, 1])
    names = ["recall@1", "recall@2", "map@r", "map@3_inshop"]
    plain = compute_query_gallery_metrics(queries, query_labels, gallery, gallery_labels, names)
    assert plain["recall@1"] == 1.0  # each query finds its own copy first
    own = compute_query_gallery_metrics(queries, query_labels, gallery, gallery_labels, names, same_item=[0, 3])
    # query 0 ranks [1.0 (cls 1), 3.0 (cls 0)]: R = 1 -> recall@1 0, recall@2 1, MAP@R 0, top-3 MAP 1/2
    # query 1 ranks [11.0 (cls 1), 3.0, 1.0 (cls 1)]: R = 2 -> recall@1 1, MAP@R (1/2)(1) = 0.5, top-3 MAP (1 + 2/3)/2
    assert own["recall@1"] == 0.5 and own["recall@2"] == 1.0
    assert own["map@r"] == pytest.approx((0 + 0.5) / 2)
    assert own["map@3_inshop"] == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)
    for backend in ("torch", "faiss"):
        again = compute_query_gallery_metrics(
            queries, query_labels, gallery, gallery_labels, names, same_item=[0, 3], backend=backend
        )
        assert again == own, backend
    with pytest.raises(UserError, match="different labels"):
        compute_query_gallery_metrics(queries, query_labels, gallery, gallery_labels, names, same_item=[2, 3])


def test_every_retrieval_metric_reads_no_more_than_its_neighbours_of_each_query() -> None:
    """The search settles only the first `neighbours(K, R)` neighbours of a query with R relevant items (the
    query's depth); every registered metric's value must not depend on the columns after them."""
    from metrics.compute import _per_query, _row_depth
    from metrics.names import METRICS

    rng = np.random.default_rng(4)
    relevant = torch.from_numpy(rng.integers(1, 9, size=400))
    hits = torch.from_numpy(rng.random((400, 16)) < 0.4)
    for spec in METRICS:
        if spec.clustering:
            continue
        name = spec.canonical(3 if spec.parametrised else None)
        depth = _row_depth([name], relevant)
        scrambled = torch.where(torch.arange(16)[None, :] < depth[:, None], hits, ~hits)
        assert torch.equal(_per_query(name, hits, relevant), _per_query(name, scrambled, relevant)), name
