"""The worst-queries picture comes from the evaluation's one search: the same queries and neighbours as a search
of its own (the former `engine.grids.worst_queries`, kept here as the oracle), unchanged metric values, and one
search per evaluated split set in training and in eval.py --show."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_fixtures import tiny_config, write_checkpoint
from test_training import tiny_args

import eval as eval_module
import main as main_module
import metrics.compute
import metrics.knn
from engine.evaluation import evaluate_embeddings, own_gallery_rows
from engine.grids import GridRow, worst_queries
from metrics import compute_metrics, compute_query_gallery_metrics
from metrics.knn import drop_same_item, iter_knn
from metrics.retrieval import map_at_r

METRICS = ["recall@1", "recall@3", "map@r", "r_precision", "map@4", "map@4_inshop"]
SINGLE_SET_ONLY = ["map@r_legacy", "map@4_legacy"]


@torch.no_grad()
def searched_worst_queries(
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]], paths: dict[str, Sequence[str]], n: int, top: int
) -> list[GridRow]:
    """The picture's rows as they were chosen before the evaluation kept its ranking: a second exact search."""
    own = None
    if "query" in embedded:
        (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
        qp, gp, exclude_self = paths["query"], paths["gallery"], False
        own = own_gallery_rows(qp, gp)
    else:
        ((name, (q, ql)),) = embedded.items()
        g, gl, qp, gp, exclude_self = q, ql, paths[name], paths[name], True
    q, g = q.float(), g.float()
    ql_t, gl_t = torch.as_tensor(np.asarray(ql)), torch.as_tensor(np.asarray(gl))
    gallery_counts: dict[int, int] = {}
    for label in gl_t.tolist():
        gallery_counts[label] = gallery_counts.get(label, 0) + 1
    in_gallery = torch.zeros(len(ql_t), dtype=torch.int64) if own is None else torch.from_numpy(own >= 0).long()
    relevant = torch.tensor([gallery_counts.get(label, 0) for label in ql_t.tolist()]) - in_gallery - int(exclude_self)
    eligible = len(g) - (1 if exclude_self or own is not None else 0)
    if n < 1 or eligible < 1 or len(relevant) == 0 or int(relevant.max()) < 1:
        return []
    k = min(max(int(relevant.max()), top), eligible)
    keys, neighbours = [], []
    searched = k + 1 if own is not None else k
    for start, indices in iter_knn(q, g, searched, exclude_self=exclude_self, backend="torch", device=q.device):
        rows = slice(start, start + len(indices))
        if own is not None:
            indices = drop_same_item(indices, torch.from_numpy(own[rows]), k)
        hits = gl_t[indices] == ql_t[rows, None]
        precision = map_at_r(hits, relevant[rows].clamp(min=1))
        first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full((len(hits),), k))
        for offset in range(len(indices)):
            if relevant[start + offset] >= 1:
                keys.append((float(precision[offset]), -int(first[offset]), start + offset))
        neighbours.append(indices[:, :top])
    table = torch.cat(neighbours)
    qn, gn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(g, dim=-1)
    result = []
    for ap, _, row in sorted(keys)[:n]:
        ids = table[row].tolist()
        sims = (gn[ids] @ qn[row]).tolist()
        results = [(gp[i], s, str(int(gl_t[i]))) for i, s in zip(ids, sims)]
        result.append(GridRow(qp[row], str(int(ql_t[row])), results, note=f"MAP@R {ap:.2f}"))
    return result


def ranked_worst_queries(
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    paths: dict[str, Sequence[str]],
    n: int,
    top: int,
    backend: str = "torch",
) -> list[GridRow]:
    """The picture's rows from the ranking of the evaluation's own search."""
    own = own_gallery_rows(paths["query"], paths["gallery"]) if "query" in embedded else None
    _, ranking = evaluate_embeddings(embedded, ["recall@1"], backend, own, keep_top=top)
    return worst_queries(ranking, embedded, paths, n)


def hard_single_set(seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Points on a coarse grid (exact duplicates and tied distances, across classes too), singleton classes."""
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(rng.integers(-2, 3, size=(70, 3)).astype(np.float32))
    points[points.abs().sum(dim=1) == 0] = 1.0
    points[10:14] = points[3]  # duplicates of one item, in several classes
    labels = rng.integers(0, 9, size=70)
    labels[60:66] = np.arange(100, 106)  # singleton classes: never scored, never picked
    labels[14] = labels[3]
    return torch.nn.functional.normalize(points, dim=1), labels


def hard_query_gallery(seed: int) -> tuple[dict[str, tuple[torch.Tensor, np.ndarray]], dict[str, list[str]]]:
    """Query -> gallery where some queries are gallery images themselves (their own copy must not be shown),
    with duplicates, ties and a query class absent from the gallery."""
    points, labels = hard_single_set(seed)
    gallery_rows = list(range(0, 50))
    query_rows = list(range(30, 70))  # rows 30..49 are in both
    gallery_paths = [f"img{i}.jpg" for i in gallery_rows]
    query_paths = [f"img{i}.jpg" for i in query_rows]
    embedded = {
        "query": (points[query_rows], labels[query_rows]),
        "gallery": (points[gallery_rows], labels[gallery_rows]),
    }
    return embedded, {"query": query_paths, "gallery": gallery_paths}


def same_values(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(x == b[k] or (math.isnan(x) and math.isnan(b[k])) for k, x in a.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "top"), [(70, 5), (6, 3), (3, 40)])
def test_a_single_set_picture_matches_a_search_of_its_own(seed: int, n: int, top: int) -> None:
    points, labels = hard_single_set(seed)
    embedded, paths = {"test": (points, labels)}, {"test": [f"img{i}.jpg" for i in range(len(points))]}
    expected = searched_worst_queries(embedded, paths, n, top)
    assert len(expected) >= min(n, 3)
    for backend in ("torch", "faiss"):
        assert ranked_worst_queries(embedded, paths, n, top, backend) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "top"), [(40, 5), (5, 2), (4, 30)])
def test_a_query_gallery_picture_matches_a_search_of_its_own(seed: int, n: int, top: int) -> None:
    embedded, paths = hard_query_gallery(seed)
    expected = searched_worst_queries(embedded, paths, n, top)
    assert len(expected) >= min(n, 3)
    assert ranked_worst_queries(embedded, paths, n, top) == expected
    for row in expected:  # a query's own copy is never among its results
        assert row.query not in [image for image, _, _ in row.results]


def test_nothing_to_score_draws_nothing() -> None:
    points, labels = torch.eye(4), np.arange(4)  # every class a singleton
    embedded, paths = {"test": (points, labels)}, {"test": ["a", "b", "c", "d"]}
    assert searched_worst_queries(embedded, paths, 3, 5) == [] == ranked_worst_queries(embedded, paths, 3, 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_keeping_the_ranking_leaves_the_metric_values_unchanged(seed: int) -> None:
    points, labels = hard_single_set(seed)
    names = [*METRICS, *SINGLE_SET_ONLY, "nmi"]
    for backend in ("torch", "faiss"):
        plain = compute_metrics(points, labels, names, backend=backend)
        for top in (1, 5, 60):
            ranked, info = compute_metrics(points, labels, names, backend=backend, return_info=True, keep_top=top)
            assert same_values(ranked, plain), (backend, top)
            assert info["ranking"].neighbours.shape == (len(points), top)
    embedded, paths = hard_query_gallery(seed)
    (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
    own = own_gallery_rows(paths["query"], paths["gallery"])
    plain = compute_query_gallery_metrics(q, ql, g, gl, METRICS, same_item=own)
    for top in (2, 45):
        ranked, info = compute_query_gallery_metrics(
            q, ql, g, gl, METRICS, same_item=own, return_info=True, keep_top=top
        )
        assert same_values(ranked, plain), top
        assert info["ranking"].neighbours.shape == (len(q), min(top, len(g) - 1))
    with pytest.raises(ValueError, match="return_info"):
        compute_metrics(points, labels, ["recall@1"], keep_top=3)


@pytest.fixture
def searches(monkeypatch) -> list[int]:
    """Counts the exact kNN searches (every caller reaches `metrics.knn.iter_knn`, or the name that
    `metrics.compute` imported)."""
    calls: list[int] = []
    original = metrics.knn.iter_knn

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics.knn, "iter_knn", counted)
    monkeypatch.setattr(metrics.compute, "iter_knn", counted)
    return calls


def test_a_training_run_with_plots_searches_once_per_evaluation(tmp_path: Path, searches: list[int]) -> None:
    args = tiny_args(tmp_path, "counted", epochs=1)
    args[args.index("--iterations_per_epoch") + 1] = "2"
    assert main_module.main([*args, "--plots", "true", "--eval_every", "1"]) == 0
    folder = tmp_path / "runs" / "synthetic" / "counted"
    assert (folder / "worst_queries.png").is_file()
    assert len(searches) == 2  # before training and after the epoch: the picture reuses the last one


def test_eval_show_searches_once(tmp_path: Path, searches: list[int], capsys) -> None:
    cfg = tiny_config(tmp_path / "data")
    checkpoint = write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", cfg)
    output = tmp_path / "out" / "metrics.json"
    base = ["--checkpoint", str(checkpoint), "--device", "cpu", "--kernels", "0", "--output", str(output)]
    assert eval_module.main([*base, "--evaluation_metrics", "recall@1", "map@r", "--show", "3"]) == 0
    assert (output.parent / "worst_queries.png").is_file()
    assert "worst queries drawn to" in capsys.readouterr().out
    assert len(searches) == 1
