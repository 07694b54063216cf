"""The symmetric self-retrieval search (each pair of the score matrix computed once) returns what the
per-query search returns: the same neighbours in the same order, the same metric values to the bit."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import metrics.compute
import metrics.knn
from metrics import compute_metrics
from metrics.knn import Gallery, KnnStats, iter_knn, symmetric_candidates, torch_candidates

CPU = torch.device("cpu")
METRICS = ["recall@1", "recall@4", "r_precision", "map@r", "map@r_legacy", "map@30"]


def _hard_sets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Vectors and labels: exact ties, duplicates across classes, singletons, unnormalised, odd sizes."""
    rng = np.random.default_rng(23)
    quantised = np.round(rng.standard_normal((299, 6)) * 1.5) / 2  # many exact distance ties, mixed norms
    quantised[10:20] = quantised[30:40]
    quantised[50:57] = quantised[50]
    quantised_labels = rng.integers(0, 40, size=299)
    quantised_labels[:5] = 1000 + np.arange(5)  # singleton classes
    centres = rng.standard_normal((25, 16))
    unit = centres[np.arange(241) % 25] + 0.35 * rng.standard_normal((241, 16))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)  # equal norms: the bfloat16 tiles
    unit[::9] = unit[4]  # duplicates of one item in many classes
    scattered = rng.standard_normal((157, 12)) * rng.uniform(0.1, 3.0, size=(157, 1))  # far from normalised
    return {
        "quantised": (quantised, quantised_labels),
        "unit_clusters": (unit, np.arange(241) % 25),
        "scattered": (scattered, rng.integers(0, 9, size=157)),
        "random_unit": (rng.standard_normal((211, 32)), rng.integers(0, 30, size=211)),  # negative floors
    }


def _as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.from_numpy(x.astype(np.float32))
    if x.shape[1] == 32:
        xt = torch.nn.functional.normalize(xt, dim=1)
    return xt, torch.from_numpy(y.astype(np.int64))


def _search(x: torch.Tensor, k: int, *, symmetric: bool, labels: torch.Tensor | None = None, **kwargs: object):
    stats = KnnStats()
    found = [
        idx
        for _, idx in iter_knn(
            x,
            x,
            k,
            exclude_self=True,
            backend="torch",
            device=CPU,
            symmetric=symmetric,
            stats=stats,
            query_labels=labels,
            gallery_labels=labels,
            **kwargs,  # type: ignore[arg-type]
        )
    ]
    return torch.cat(found), stats


def _brute_force(x: torch.Tensor, k: int) -> torch.Tensor:
    """float64 squared distances, self removed, order (distance, index)."""
    data = x.double().numpy()
    dist = ((data[:, None, :] - data[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(dist, np.inf)
    return torch.from_numpy(np.argsort(dist, axis=1, kind="stable")[:, :k])


@pytest.fixture(params=["torch", "compiled"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which of the two ways of keeping the symmetric search's lists the searches use (the compiled kernel only
    takes bfloat16 tiles of equal-norm items on the CPU; other sets keep the torch operations either way)."""
    monkeypatch.setattr(metrics.knn, "COMPILED_MIN_ITEMS", 0 if request.param == "compiled" else 10**12)
    return request.param


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch):
    """Tiles of a few dozen rows, so that small sets span many block pairs (and a last, shorter block)."""

    def use(rows: int) -> None:
        monkeypatch.setattr(metrics.knn, "_default_block", lambda count: rows)

    return use


@pytest.mark.parametrize("name", ["quantised", "unit_clusters", "scattered", "random_unit"])
@pytest.mark.parametrize("block", [37, 4096])
def test_symmetric_search_returns_the_per_query_search_neighbours(
    name: str, block: int, small_blocks, kernel: str
) -> None:
    small_blocks(block)
    x, y = _as_tensors(*_hard_sets()[name])
    for k, dtype in ((1, torch.bfloat16), (7, torch.float32), (70, torch.bfloat16)):
        # k = 70 is larger than a block and than 64 (the float32 candidate stage)
        found, stats = _search(x, k, symmetric=True, candidate_dtype=dtype)
        reference, _ = _search(x, k, symmetric=False, candidate_dtype=dtype)
        assert torch.equal(found, reference), (name, k, dtype)
        assert torch.equal(found, _brute_force(x, k)), (name, k, dtype)
        assert stats.rows == len(x)
    # with labels, the order inside a run of near-tied neighbours that are all hits or all misses is free
    with_labels, _ = _search(x, 7, symmetric=True, labels=y)
    reference, _ = _search(x, 7, symmetric=False, labels=y)
    assert torch.equal(y[with_labels] == y[:, None], y[reference] == y[:, None]), name


@pytest.mark.parametrize("name", ["quantised", "unit_clusters", "scattered"])
def test_metrics_of_the_symmetric_search_equal_the_per_query_and_faiss_metrics_to_the_bit(
    name: str, small_blocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_blocks(48)
    x, y = _hard_sets()[name]
    symmetric, info = compute_metrics(x, y, METRICS, backend="torch", return_info=True)
    by_faiss = compute_metrics(x, y, METRICS, backend="faiss")
    monkeypatch.setattr(metrics.compute, "iter_knn", functools.partial(iter_knn, symmetric=False))
    per_query = compute_metrics(x, y, METRICS, backend="torch")
    assert symmetric == per_query == by_faiss
    assert info["excluded_queries"] == int((np.bincount(y)[y] == 1).sum())


def test_candidates_are_the_top_count_of_every_row(small_blocks) -> None:
    """Each row keeps the best `count` approximate scores of all the others: the same values as the
    per-query candidate stage, up to the rounding of differently shaped products."""
    for name in ("unit_clusters", "scattered"):
        x, _ = _as_tensors(*_hard_sets()[name])
        gallery = Gallery(x, CPU)
        for dtype in (torch.bfloat16, torch.float32):
            columns, approx, bound = symmetric_candidates(gallery, 20, dtype, block=40)
            assert not bool((columns == torch.arange(len(x))[:, None]).any())  # never itself
            assert all(len(set(row)) == 20 for row in columns.tolist())  # 20 distinct others
            ref_columns, ref_approx, ref_bound = torch_candidates(x, torch.arange(len(x)), gallery, 20, dtype)
            assert torch.equal(bound, ref_bound)
            mine = approx.sort(dim=1, descending=True).values
            theirs = ref_approx.sort(dim=1, descending=True).values
            assert torch.all((mine - theirs).abs() <= 2 * bound[:, None])


def test_queries_must_be_the_gallery_for_the_symmetric_search() -> None:
    x = torch.randn(30, 4)
    with pytest.raises(ValueError, match="queries to be the gallery"):
        next(iter_knn(x[:20], x, 3, exclude_self=True, backend="torch", device=CPU))


@pytest.mark.parametrize("name", ["quantised", "unit_clusters", "random_unit"])
def test_several_cpu_workers_find_what_one_finds(name: str, small_blocks, kernel: str) -> None:
    """Tiles and chunks shared by threads (floors read while other threads raise them, lists merged under a
    lock) give the neighbours of one worker, bit for bit, and leave torch's thread count as it was."""
    small_blocks(29)
    x, y = _as_tensors(*_hard_sets()[name])
    found = {}
    for workers in (1, 4):
        threads = torch.get_num_threads()
        found[workers] = [_search(x, k, symmetric=True, chunk=16, workers=workers)[0] for k in (1, 7)]
        found[workers].append(_search(x, 7, symmetric=True, labels=y, chunk=16, workers=workers)[0])
        assert torch.get_num_threads() == threads
    for one, many in zip(found[1], found[4]):
        assert torch.equal(one, many), name
    assert torch.equal(found[4][1], _brute_force(x, 7)), name


def _near_ties() -> tuple[np.ndarray, np.ndarray]:
    """Clusters of points far closer to each other than the bfloat16 error, and exact duplicates."""
    rng = np.random.default_rng(6)
    x = np.repeat(rng.standard_normal((24, 24)), 12, axis=0) + 1e-5 * rng.standard_normal((288, 24))
    x[::7] = x[3]
    return x, rng.integers(0, 20, size=288)


@pytest.mark.parametrize("name", ["quantised", "unit_clusters", "scattered", "random_unit", "near_ties"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_a_query_s_depth_leading_neighbours_are_exact(name: str, symmetric: bool, small_blocks, kernel: str) -> None:
    """With a per-query depth, each query's first `depth` neighbours are the brute force's, in its order, for
    both candidate stages (the columns after them are left unsettled)."""
    small_blocks(41)
    x, y = _as_tensors(*(_near_ties() if name == "near_ties" else _hard_sets()[name]))
    k = 9
    depth = torch.from_numpy(np.random.default_rng(5).integers(1, k + 1, size=len(x)))
    reference = _brute_force(x, k)
    for dtype in (torch.bfloat16, torch.float32):
        found, _ = _search(x, k, symmetric=symmetric, candidate_dtype=dtype, depth=depth)
        leading = torch.arange(k)[None, :] < depth[:, None]
        assert torch.equal(found[leading], reference[leading]), (name, dtype)


@pytest.mark.parametrize("name", ["unit_clusters", "random_unit", "near_ties_unit", "negative_scores"])
@pytest.mark.parametrize("block", [37, 300])
def test_the_compiled_kernel_keeps_the_lists_of_the_torch_operations(name: str, block: int) -> None:
    """bfloat16 tiles of equal-norm items on the CPU: the compiled kernel of `metrics.tiles` (the default there)
    and the torch operations used on other devices keep the same scores, the same worst kept score (tau) and
    the same candidates above it, on one worker and on four. ``negative_scores``: lists of most of a small set,
    so that they keep negative scores (whose int16 keys order as the values only with the sign flip)."""
    count = 20
    if name == "near_ties_unit":
        x, _ = _near_ties()
        x = torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float32)), dim=1)
    elif name == "negative_scores":
        x = torch.nn.functional.normalize(torch.from_numpy(np.random.default_rng(8).standard_normal((90, 8))), dim=1)
        x, count = x.float(), 70
    else:
        x, _ = _as_tensors(*_hard_sets()[name])
    gallery = Gallery(x, CPU)
    assert gallery.uniform_norms
    columns, approx, bound = symmetric_candidates(gallery, count, torch.bfloat16, block=block, compiled=False)
    tau = approx.min(dim=1).values
    for workers in (1, 4):
        mine = symmetric_candidates(gallery, count, torch.bfloat16, block=block, workers=workers, compiled=True)
        assert torch.equal(mine[2], bound)
        assert torch.equal(mine[1].sort(dim=1).values, approx.sort(dim=1).values), (name, workers)
        assert torch.equal(mine[1].min(dim=1).values, tau)
        for row in range(len(x)):
            above, mine_above = approx[row] > tau[row], mine[1][row] > tau[row]
            assert set(columns[row][above].tolist()) == set(mine[0][row][mine_above].tolist()), (name, row)
    with pytest.raises(ValueError, match="equal-norm items on the CPU"):
        symmetric_candidates(Gallery(x * torch.rand(len(x), 1), CPU), count, torch.bfloat16, compiled=True)
