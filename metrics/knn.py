"""Exact k-nearest-neighbour search in bounded memory, with a fast low-precision candidate stage.

Ranking rule (both backends): neighbours of query q are ordered by the exact score
``a_j = q.x_j - |x_j|^2 / 2`` (equivalently by the squared L2 distance |q|^2 - 2 a_j) evaluated in float64,
larger first; equal scores are ordered by LOWER gallery index first; with ``exclude_self`` the query's
own index is removed (by index, so duplicate embeddings are handled correctly).

How it stays exact while using a cheap search:

1. Candidate stage: the top ``k + margin`` items of every query by an APPROXIMATE score (bfloat16 or
   float32 matrix products in the torch backend, a float32 faiss flat index in the faiss backend). For
   every query a rigorous bound ``E`` on |approximate - exact| holds for ALL items (input rounding measured
   from the actual rounding-error norms, accumulation ``gamma_D``, output rounding), and every item left
   out has an approximate score <= ``tau`` (the worst one kept).
2. Certificate: the k items with the best approximate scores have exact scores >= a~_k - E, so every true
   top-k item has an approximate score >= floor = a~_k - 2E. If tau < floor, the true top-k (whatever the
   ties) lies among the candidates above the floor, and only those are re-scored, in float32 from the
   original vectors (error bound ``E2``).
3. Order: if two of the first k + 1 re-scored candidates are within ``2 E2`` of each other, the row's
   candidates are re-scored in float64 and sorted (score descending, index ascending).
4. Rows that fail the certificate are searched again with a float32 candidate stage (4x the margin), then,
   if they still fail (massive exact ties), exactly in float64 over the whole gallery.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

U_FP32 = 2.0**-24
U_BF16 = 2.0**-8
U_TF32 = 2.0**-11
PAD = 32  # the low-precision gallery copy is padded to a multiple of this many rows
SAFETY = 1.05  # multiplicative slack on every error bound
GROUP = 8  # the symmetric search screens its score tiles by maxima over groups of this many columns
# the symmetric search is used up to this many candidates per row; deeper lists (recall@1000) offer so many
# entries per tile that the per-query search is faster and smaller (20,000 x 512, k = 1000, one thread:
# 11 s and 1.1 GB per query against 20 s and 2.7 GB symmetric)
SYMMETRIC_MAX_COUNT = 128
# the compiled tile kernel (metrics/tiles.py) is used from this many items on: loading it costs ~0.6 s, which
# the faster screening wins back from ~20,000 items (5,924 items, CUB's test set: 0.25 s by torch operations
# against 0.65 s compiled, fresh process; 20,000: 1.6 s against 1.5 s; 60,502: 8.7 s against 6.4 s)
COMPILED_MIN_ITEMS = 20_000


@dataclass
class KnnStats:
    """How the rows of a search were resolved (for reports and tests)."""

    rows: int = 0
    float64_order_rows: int = 0  # near-ties among the first k re-scored in float64
    fp32_retry_rows: int = 0  # candidate certificate failed once, searched again in float32
    full_rows: int = 0  # certificate failed twice, exact float64 search over the whole gallery

    def add(self, other: KnnStats) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def cpu_workers(device: torch.device) -> int:
    """Python threads that share a CPU search: one per torch CPU thread (1 on other devices).

    On the CPU the search's many small operations (screening tiles, merging lists, re-scoring candidates)
    gain little from torch's intra-op threads, which wait for each other at every operation; independent
    pieces of work on threads of their own, each running its operations on one core, keep every core busy.
    """
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count is `count` inside the block, and what it was after it (None or 0: unchanged)."""
    if not count:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@functools.cache
def _share_one_malloc_arena() -> None:
    """Let the workers' threads allocate from glibc's main arena (``MALLOC_ARENA_MAX=1``, unless the environment
    sets it). With an arena per thread, the memory of the workers' freed temporaries stays mapped in each
    arena: the search of 60,502 x 512 peaked at 1.68 GB against 1.30 GB with one arena, in the same time."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (no libc.so.6): nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # -8: M_ARENA_MAX


def _run_all(work: Callable[[object], object], items: Iterable[object], workers: int) -> list[object]:
    """`work` of every item, in order: on `workers` threads (each operation single-threaded) or inline."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    _share_one_malloc_arena()
    with torch_threads(1), ThreadPoolExecutor(workers) as pool:  # each worker's operations on one core
        return list(pool.map(work, items))


def _gamma(dim: int) -> float:
    return dim * U_FP32 / (1 - dim * U_FP32)


def _squared_norms64(x: torch.Tensor) -> torch.Tensor:
    x64 = x.double()
    return (x64 * x64).sum(dim=1)


class Gallery:
    """The searched set, prepared once: float32 vectors, float64 half squared norms, bound constants."""

    def __init__(self, embeddings: torch.Tensor, device: torch.device, workers: int | None = None) -> None:
        self.x32 = embeddings.to(device=device, dtype=torch.float32).contiguous()
        self.size, self.dim = self.x32.shape
        self.workers = workers or cpu_workers(device)
        self.h64 = torch.cat(_run_all(lambda part: 0.5 * _squared_norms64(part), self._parts(self.x32), self.workers))
        self.max_h = float(self.h64.max()) if self.size else 0.0
        self.max_norm = math.sqrt(2 * self.max_h)
        # all norms (nearly) equal: the -|x|^2/2 term can be dropped from the candidate scores and its spread
        # added to the bound, which avoids a float32 pass over every score strip
        self.h_mean = float(self.h64.mean()) if self.size else 0.0
        self.h_spread = float((self.h64 - self.h_mean).abs().max()) if self.size else 0.0
        self.uniform_norms = self.h_spread <= 1e-3 * max(self.max_h, 1e-30)
        self.gamma = _gamma(self.dim)
        self.device = device
        self._low: dict[torch.dtype, tuple[torch.Tensor, float, float, torch.Tensor | None]] = {}

    @staticmethod
    def _parts(x: torch.Tensor, rows: int = 2048) -> list[torch.Tensor]:
        # float64 copies of 2,048 rows stay small (8 MB at 512 dimensions) when several workers make them
        return list(torch.split(x, rows)) if len(x) else [x]

    def low_precision(self, dtype: torch.dtype) -> tuple[torch.Tensor, float, float, torch.Tensor | None]:
        """(padded copy in ``dtype``, max |x~|, max |x~ - x|, float32 half norms padded with +inf or None)."""
        if dtype not in self._low:
            padded_rows = math.ceil(max(self.size, 1) / PAD) * PAD
            low = torch.zeros(padded_rows, self.dim, dtype=dtype, device=self.device)
            low[: self.size] = self.x32.to(dtype)

            def norms(parts: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
                part, part_low = parts
                rounded = part_low.double()
                return float(_squared_norms64(rounded).max()), float(_squared_norms64(rounded - part.double()).max())

            pairs = list(zip(self._parts(self.x32), self._parts(low[: self.size])))
            found = _run_all(norms, pairs, self.workers)
            max_low_norm = math.sqrt(max(norm for norm, _ in found))
            max_error = math.sqrt(max(error for _, error in found))
            h32 = None
            if not self.uniform_norms:
                h32 = torch.full((padded_rows,), math.inf, dtype=torch.float32, device=self.device)
                h32[: self.size] = self.h64.float()
            self._low[dtype] = (low, max_low_norm, max_error, h32)
        return self._low[dtype]


def exact_scores64(queries: torch.Tensor, candidates: torch.Tensor, gallery: Gallery) -> torch.Tensor:
    """float64 scores a_j = q.x_j - |x_j|^2/2 of (n, c) candidate indices: the ranking's reference values.

    Computed element-wise then summed over the last dimension, so a pair gets the same value whatever the
    batch it is computed in (exact duplicates tie exactly).
    """
    q64 = queries.double()
    c64 = gallery.x32[candidates].double()
    return (c64 * q64[:, None, :]).sum(dim=-1) - gallery.h64[candidates]


def _stable_order(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidates sorted by score descending, ties by lower index (rows independent)."""
    by_index, pos = torch.sort(candidates, dim=1)
    scores = scores.gather(1, pos)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return by_index.gather(1, order)


class _NoReducedBf16Reduction:
    """Keep bf16 CUDA matrix products accumulating in float32 (the error bound assumes it)."""

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cuda"

    def __enter__(self) -> None:
        if self.active:
            self.saved = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = self.saved


def torch_candidates(
    queries: torch.Tensor, self_columns: torch.Tensor | None, gallery: Gallery, count: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``count`` candidates by a ``dtype`` matrix product: (indices, approximate scores, bound E)."""
    low, _, _, h32 = gallery.low_precision(dtype)
    q_low = queries.to(dtype)
    with _NoReducedBf16Reduction(gallery.device):
        strip = q_low @ low.T
    if h32 is not None:
        strip = strip.float() - h32
    else:
        strip[:, gallery.size :] = -math.inf
    rows = torch.arange(queries.shape[0], device=queries.device)
    if self_columns is not None:
        strip[rows, self_columns] = -math.inf
    values, columns = torch.topk(strip, count, dim=1, sorted=False)
    approx = values.double()
    if h32 is None:
        approx = approx - gallery.h_mean
    return columns, approx, candidate_bound(queries, gallery, dtype)


def candidate_bound(queries: torch.Tensor, gallery: Gallery, dtype: torch.dtype) -> torch.Tensor:
    """Per-query bound E on |approximate - exact| score of every gallery item for a ``dtype`` candidate stage."""
    _, max_low_norm, max_error, h32 = gallery.low_precision(dtype)
    q64 = queries.double()
    q_low64 = queries.to(dtype).double()
    q_norm = q64.norm(dim=1)
    q_low_norm = q_low64.norm(dim=1)
    q_error = (q_low64 - q64).norm(dim=1)
    if dtype == torch.float32 and gallery.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        q_error = U_TF32 * q_norm
        max_error = U_TF32 * gallery.max_norm
    u_out = U_BF16 if dtype == torch.bfloat16 else U_FP32
    product = q_low_norm * max_low_norm
    bound = q_error * max_low_norm + q_norm * max_error + gallery.gamma * product
    bound = bound + u_out * product * (1 + gallery.gamma)
    if h32 is None:
        bound = bound + gallery.h_spread
    else:
        bound = bound + U_FP32 * gallery.max_h + U_FP32 * (product * (1 + 2 * gallery.gamma) + gallery.max_h)
    return bound * SAFETY + 1e-30


def _block_bounds(size: int, block: int) -> list[tuple[int, int]]:
    """(start, stop) of near-equal consecutive blocks of at most ``block`` rows covering ``size`` rows; every
    block but the last starts and ends at a multiple of GROUP."""
    parts = max(1, math.ceil(size / block))
    edges = [min(size, GROUP * math.ceil(size * i / parts / GROUP)) for i in range(parts)] + [size]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _default_block(count: int) -> int:
    # a (block x block) score tile of 32 MB (bfloat16) or 64 MB (float32); a block is several times the
    # candidate count so that a tile's entries merge into short lists
    return max(4096, 4 * count)


class _RunningTop:
    """The best ``count`` (score, column) pairs of every row seen so far; ``floor``: each row's worst kept score.

    Every pair that was offered and is not kept scores at most the row's ``floor`` (a pair is only offered
    when it beats the floor of its row, and a kept pair leaves only for a better one).
    """

    def __init__(self, rows: int, count: int, dtype: torch.dtype, device: torch.device) -> None:
        self.count = count
        self.scores = torch.full((rows, count), -math.inf, dtype=dtype, device=device)
        self.columns = torch.zeros((rows, count), dtype=torch.long, device=device)
        self.floor = torch.full((rows,), -math.inf, dtype=dtype, device=device)

    def take(self, first: int, scores: torch.Tensor, columns: torch.Tensor) -> None:
        """Rows ``first..`` merge their best entries of a tile: ``scores``/``columns`` (rows, <= count)."""
        rows = slice(first, first + scores.shape[0])
        merged = torch.cat([self.scores[rows], scores], dim=1)
        values, where = torch.topk(merged, self.count, dim=1, sorted=False)
        self.scores[rows] = values
        self.columns[rows] = torch.cat([self.columns[rows], columns], dim=1).gather(1, where)
        self.floor[rows] = values.amin(dim=1)

    def offer(self, rows: torch.Tensor, columns: torch.Tensor, scores: torch.Tensor) -> None:
        """Merge the pairs (rows[i], columns[i], scores[i]), sorted by row, into the lists."""
        if not len(rows):
            return
        touched, sizes = torch.unique_consecutive(rows, return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(touched), device=rows.device), sizes)
        slot = torch.arange(len(rows), device=rows.device) - (torch.cumsum(sizes, 0) - sizes)[group]
        width = int(sizes.max())
        new_scores = torch.full((len(touched), width), -math.inf, dtype=self.scores.dtype, device=rows.device)
        new_columns = torch.zeros((len(touched), width), dtype=torch.long, device=rows.device)
        new_scores[group, slot] = scores
        new_columns[group, slot] = columns
        merged = torch.cat([self.scores[touched], new_scores], dim=1)
        values, where = torch.topk(merged, self.count, dim=1, sorted=False)
        self.scores[touched] = values
        self.columns[touched] = torch.cat([self.columns[touched], new_columns], dim=1).gather(1, where)
        self.floor[touched] = values.amin(dim=1)


def _above(tile: torch.Tensor, floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the entries of ``tile`` above their row's ``floor``, sorted by row.

    Columns are screened in GROUP strided groups (column p, p + w, p + 2w, ...): a group's maximum is one
    vectorised pass over the tile (its layout may be transposed), and only the entries of the groups whose
    maximum beats the floor are compared one by one. ``tile``: a contiguous tensor or the transpose of one.
    """
    width = tile.shape[1] // GROUP
    main = width * GROUP
    screened, screen_floor = tile, floor
    if tile.dtype == torch.bfloat16 and bool((floor > 0).all()):
        # above a positive floor, bfloat16 values order as their bit patterns read as int16 (negative values
        # read as negative integers), and the integer maximum is several times faster
        screened, screen_floor = tile.view(torch.int16), floor.view(torch.int16)
    if tile.stride(1) == 1:
        maxima = screened[:, :main].view(tile.shape[0], GROUP, width).amax(dim=1)
    else:  # a transposed view: reduce over its rows, which are contiguous in memory
        maxima = screened.T[:main].view(GROUP, width, tile.shape[0]).amax(dim=0).T
    rows, position = torch.nonzero((maxima > screen_floor[:, None]).contiguous(), as_tuple=True)
    # the groups' entries, read through flat offsets into the tile's storage (its layout may be transposed)
    step_row, step_column = tile.stride()
    columns = position[:, None] + width * torch.arange(GROUP, device=tile.device)
    values = tile.as_strided((tile.numel(),), (1,)).take(rows[:, None] * step_row + columns * step_column)
    hit_group, hit_slot = torch.nonzero(values > floor[rows, None], as_tuple=True)
    rows, columns = rows[hit_group], columns[hit_group, hit_slot]
    if main < tile.shape[1]:  # the last columns, fewer than a group
        tail_rows, tail_columns = torch.nonzero(tile[:, main:] > floor[:, None], as_tuple=True)
        rows, columns = torch.cat([rows, tail_rows]), torch.cat([columns, tail_columns + main])
        order = torch.argsort(rows, stable=True)
        rows, columns = rows[order], columns[order]
    return rows, columns


def _tile_order(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Block index pairs (I, J), I <= J: the own tiles first, then rounds of pairs that share no block (those
    with the same (I + J) mod blocks), so that workers taking consecutive tiles rarely wait for each other."""
    n = len(blocks)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    return [(a, a) for a in range(n)] + sorted(pairs, key=lambda pair: ((pair[0] + pair[1]) % n, pair[0]))


def _torch_lists(
    low: torch.Tensor, h32: torch.Tensor | None, blocks: list[tuple[int, int]], count: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, scores) of every row's best ``count`` by torch operations (any device, dtype and norms)."""
    device = low.device
    top = _RunningTop(len(low), count, torch.float32 if h32 is not None else low.dtype, device)
    merging = threading.Lock()

    def tile(rows: tuple[int, int], cols: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores of the rows of block ``rows``, scores of the rows of block ``cols``, transposed)."""
        with _NoReducedBf16Reduction(device):
            product = low[rows[0] : rows[1]] @ low[cols[0] : cols[1]].T
        if h32 is None:
            return product, product
        product = product.float()
        return product - h32[None, cols[0] : cols[1]], product - h32[rows[0] : rows[1], None]

    def own_tile(rows: tuple[int, int]) -> None:
        first, stop = rows
        scores, _ = tile(rows, rows)
        scores.fill_diagonal_(-math.inf)
        values, columns = torch.topk(scores, min(count, stop - first), dim=1, sorted=False)
        with merging:
            top.take(first, values, columns + first)

    def pair_tile(pair: tuple[int, int]) -> None:
        if pair[0] == pair[1]:
            own_tile(blocks[pair[0]])
            return
        (first, stop), (other_first, other_stop) = blocks[pair[0]], blocks[pair[1]]
        by_row, by_column = tile((first, stop), (other_first, other_stop))
        r, c = _above(by_row, top.floor[first:stop].clone())
        c2, r2 = _above(by_column.T, top.floor[other_first:other_stop].clone())
        rows = torch.cat([r + first, c2 + other_first])
        columns = torch.cat([c + other_first, r2 + first])
        scores = torch.cat([by_row[r, c], by_column[r2, c2]])
        with merging:
            top.offer(rows, columns, scores)

    order = _tile_order(blocks)
    own = len(blocks)
    _run_all(pair_tile, order[:own], workers)  # every row's list is full before the first pair tile
    _run_all(pair_tile, order[own:], workers)
    return top.columns, top.scores


def _load_kernel() -> None:
    from metrics import tiles  # numba: imported only by the searches that use it

    tiles.warm_up()


def _compiled_lists(
    low: torch.Tensor, blocks: list[tuple[int, int]], count: int, workers: int, loading: threading.Thread
) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, bfloat16 scores) of every row's best ``count`` by the compiled kernel of `metrics.tiles`
    (bfloat16 tiles of equal-norm items on the CPU): each tile read once for both of its sides. ``loading``:
    the thread that loads the kernel (`_load_kernel`), waited for before the first tile is screened."""
    from metrics import tiles

    size = len(low)
    keys = np.full((size, count), tiles.EMPTY, dtype=np.int16)
    columns = np.zeros((size, count), dtype=np.int64)
    floor = np.full(size, tiles.EMPTY, dtype=np.int16)
    locks = [threading.Lock() for _ in blocks]
    # each worker writes its tiles into one buffer of its own: a fresh 32 MB tile each time cost the kernel's
    # page faults (1 s of CPU time over the 120 tiles of 60,502 items)
    buffers = threading.local()
    largest = max(stop - first for first, stop in blocks)

    def screen(rows: tuple[int, int], cols: tuple[int, int], own: bool, held: list[int]) -> None:
        """Multiply the tile of item ranges ``rows`` x ``cols``, then screen it holding the locks of the
        blocks ``held`` (in block order: no deadlock)."""
        if not hasattr(buffers, "tile"):
            buffers.tile = torch.empty(largest * largest, dtype=low.dtype)
        product = buffers.tile[: (rows[1] - rows[0]) * (cols[1] - cols[0])].view(rows[1] - rows[0], -1)
        torch.mm(low[rows[0] : rows[1]], low[cols[0] : cols[1]].T, out=product)
        loading.join()
        with contextlib.ExitStack() as stack:
            for index in held:
                stack.enter_context(locks[index])
            tiles.offer_tile(product.view(torch.int16).numpy(), rows[0], cols[0], keys, columns, floor, own)

    def pair_tile(pair: tuple[int, int]) -> None:
        if pair[0] != pair[1]:
            screen(blocks[pair[0]], blocks[pair[1]], False, list(pair))
            return
        # a block with itself: only the pairs above the diagonal are needed, so the own tiles of its two
        # halves and the tile between them (3/4 of the products of the whole square)
        first, stop = blocks[pair[0]]
        middle = min(stop, first + GROUP * math.ceil((stop - first) / 2 / GROUP))
        halves = [half for half in ((first, middle), (middle, stop)) if half[1] > half[0]]
        for half in halves:
            screen(half, half, True, [pair[0]])
        if len(halves) == 2:
            screen(halves[0], halves[1], False, [pair[0]])

    _run_all(pair_tile, _tile_order(blocks), workers)
    scores = torch.from_numpy(tiles.values_of_keys(keys)).view(torch.bfloat16)
    return torch.from_numpy(columns), scores


def symmetric_candidates(
    gallery: Gallery,
    count: int,
    dtype: torch.dtype,
    block: int | None = None,
    workers: int = 1,
    compiled: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch_candidates`` of every gallery item against all the others (itself excluded), each pair once.

    The score matrix of a set against itself is symmetric, so it is computed tile by tile over the block
    pairs (I, J) with I <= J only: tile (I, J) offers its entries to the rows of I, and its transpose to the
    rows of J, each entry only where it beats the row's current ``count``-th best score (its floor). Every
    row ends with the top ``count`` of all its approximate scores, as ``torch_candidates`` finds them:
    ``tau`` = the worst kept score bounds every score left out, and the per-row bound E is the same.
    Returns (indices, approximate scores, bound E).

    ``compiled`` (default: bfloat16 tiles of equal-norm items on the CPU, the only case it handles, from
    COMPILED_MIN_ITEMS items on): the lists are kept by the kernel of `metrics.tiles`, which reads each tile
    once; otherwise by torch operations (`_RunningTop`, `_above`), on any device. Both keep the same lists.

    ``workers`` threads share the tiles (`cpu_workers`). A row's floor only rises, so a tile screened against
    a floor that another thread has raised since offers a few entries too many, never too few; the lists are
    merged under a lock. Which of several entries tied at a row's ``count``-th score a list keeps can then
    depend on timing; the refinement reads only the candidates strictly above ``tau``, the same in any case.
    """
    can_compile = gallery.device.type == "cpu" and dtype == torch.bfloat16 and gallery.uniform_norms
    if compiled and not can_compile:
        raise ValueError("the compiled tile kernel takes bfloat16 tiles of equal-norm items on the CPU")
    if compiled is None:
        compiled = can_compile and gallery.size >= COMPILED_MIN_ITEMS
    # numba's import and the kernel's load from its cache take ~0.6 s: on a thread of their own, while the
    # low-precision copy is made and the first tiles are multiplied (both release the GIL)
    loading = threading.Thread(target=_load_kernel, daemon=True) if compiled else None
    if loading is not None:
        loading.start()
    low, _, _, h32 = gallery.low_precision(dtype)
    low = low[: gallery.size]
    blocks = _block_bounds(gallery.size, block or _default_block(count))
    if loading is not None:
        columns, scores = _compiled_lists(low, blocks, count, workers, loading)
    else:
        columns, scores = _torch_lists(low, h32, blocks, count, workers)
    approx = scores.double()
    if h32 is None:
        approx = approx - gallery.h_mean
    parts = _run_all(lambda part: candidate_bound(part, gallery, dtype), gallery._parts(gallery.x32), workers)
    return columns, approx, torch.cat(parts)


def _chains(ordered: torch.Tensor, bound2: torch.Tensor) -> torch.Tensor:
    """Chain id of every position: neighbours in sorted order closer than 2 E2 share a chain."""
    breaks = ~((ordered[:, :-1] - ordered[:, 1:]) <= 2 * bound2[:, None])  # -inf - -inf is nan: a break
    first = torch.zeros(ordered.shape[0], 1, dtype=torch.long, device=ordered.device)
    return torch.cat([first, torch.cumsum(breaks.long(), dim=1)], dim=1)


def _ambiguous(chain: torch.Tensor, hits: torch.Tensor | None) -> torch.Tensor:
    """Positions whose order must be settled in float64: members of chains of 2+ items, or, when ``hits``
    is given, of chains that mix relevant and irrelevant items (the order inside a uniform chain changes
    no retrieval metric)."""
    ones = torch.ones_like(chain, dtype=torch.float32)
    if hits is None:
        sizes = torch.zeros_like(ones).scatter_add_(1, chain, ones)
        return sizes.gather(1, chain) >= 2
    hit_f = hits.float()
    has_hit = torch.zeros_like(ones).scatter_reduce_(1, chain, hit_f, "amax")
    has_miss = torch.zeros_like(ones).scatter_reduce_(1, chain, 1 - hit_f, "amax")
    return (has_hit * has_miss).gather(1, chain) > 0


def refine(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    approx: torch.Tensor,
    tau: torch.Tensor,
    bound: torch.Tensor,
    k: int,
    gallery: Gallery,
    complete: bool,
    stats: KnnStats,
    *,
    rescore: bool,
    relevance: tuple[torch.Tensor, torch.Tensor] | None = None,
    depth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of every row from its candidates: (indices (n, k), certified (n,) bool).

    ``approx`` are the candidates' approximate scores, ``bound`` the per-row bound E on their error and
    ``tau`` the best approximate score a left-out item can have. Every true top-k item has an approximate
    score >= floor = (k-th approximate score) - 2E, so only candidates above the floor are kept; a row is
    certified when no left-out item can beat the k-th kept one. ``rescore``: recompute the kept candidates
    in float32 first (bf16 candidates); otherwise ``approx`` already has float32 accuracy.
    Near-ties (chains of sorted scores closer than 2 E2) are settled with float64 scores, only for the
    chains that matter: all of them, or with ``relevance`` = (query labels, gallery labels) only those
    that mix hits and misses. ``complete``: nothing was left out.
    ``depth`` (n,), 1..k: only the first ``depth[i]`` neighbours of row i must be exact (the certificate and
    the floor use the ``depth[i]``-th score; the columns after them hold candidates in no defined order).
    """
    # sorted by score, equal scores by index: the result does not depend on the order of a row's candidates
    candidates, by_index = torch.sort(candidates, dim=1)
    approx, order = torch.sort(approx.gather(1, by_index), dim=1, descending=True, stable=True)
    candidates = candidates.gather(1, order)
    last = (depth if depth is not None else torch.full_like(bound, k, dtype=torch.long)).sub(1)[:, None]
    floor = approx.gather(1, last)[:, 0] - 2 * bound
    needed = (approx >= floor[:, None]).sum(dim=1)
    width = candidates.shape[1] if complete else max(int(needed.max()), k)
    candidates = candidates[:, :width]
    if rescore:
        # only the candidates at or above the row's floor can be among its first `depth`: the first `needed`
        # of its sorted candidates; the others score -inf. Products then a sum (any order keeps the float32
        # bound E2; twice as fast as bmm's small batches), of those pairs alone when they are few (shallow
        # depths), else of the whole (rows, width) block, which needs no copy of the queries
        live = torch.arange(width, device=needed.device) < needed[:, None]
        if 2 * int(needed.sum()) < live.numel():
            rows, cols = torch.nonzero(live, as_tuple=True)
            picked = candidates[rows, cols]
            dots = (gallery.x32.index_select(0, picked) * queries.float().index_select(0, rows)).sum(dim=-1)
            scores = torch.full(candidates.shape, -math.inf, dtype=torch.float64, device=candidates.device)
            scores[rows, cols] = dots.double() - gallery.h64[picked]
        else:
            vectors = gallery.x32.index_select(0, candidates.reshape(-1)).view(*candidates.shape, gallery.dim)
            scores = (vectors * queries[:, None, :].float()).sum(dim=-1).double() - gallery.h64[candidates]
            scores[~live] = -math.inf
        q_norm = queries.double().norm(dim=1)
        bound2 = SAFETY * gallery.gamma * q_norm * gallery.max_norm
        bound2 = bound2 + 1e-12 * (q_norm * gallery.max_norm + gallery.max_h)
        ordered, order = torch.sort(scores, dim=1, descending=True, stable=True)
        candidates = candidates.gather(1, order)
    else:
        ordered, bound2 = approx[:, :width], bound
    # the depth-th re-scored candidate bounds the depth-th score overall from below
    certified = (tau < floor) | (ordered.gather(1, last)[:, 0] - bound2 - bound > tau)
    if complete:
        certified = torch.ones_like(certified)

    chain = _chains(ordered, bound2)
    hits = None
    if relevance is not None:
        hits = relevance[1][candidates] == relevance[0][:, None]
    # the order inside a chain that starts after the first `depth` positions changes none of them
    reaches = chain <= chain.gather(1, last)
    ambiguous = _ambiguous(chain, hits) & reaches & certified[:, None]
    rows, cols = torch.nonzero(ambiguous, as_tuple=True)
    if len(rows):
        stats.float64_order_rows += int(torch.unique(rows).numel())
        picked = candidates[rows, cols]
        exact = (gallery.x32[picked].double() * queries[rows].double()).sum(dim=-1) - gallery.h64[picked]
        ordered = ordered.clone()
        ordered[rows, cols] = exact  # within E2 of the float32 value: order against other chains is kept
        candidates = _stable_order(ordered, candidates)
    return candidates[:, :k], certified


def full_exact_rows(
    queries: torch.Tensor, self_columns: torch.Tensor | None, k: int, gallery: Gallery, chunk: int = 2048
) -> torch.Tensor:
    """Reference search: float64 scores against the whole gallery, stable sort (for rows that fail twice)."""
    rows_per_block = max(1, 2**22 // max(chunk * gallery.dim, 1))
    out = []
    for first in range(0, queries.shape[0], rows_per_block):
        block = queries[first : first + rows_per_block]
        parts = []
        for start in range(0, gallery.size, chunk):
            cols = torch.arange(start, min(start + chunk, gallery.size), device=gallery.device)
            parts.append(exact_scores64(block, cols[None, :].expand(block.shape[0], -1), gallery))
        scores = torch.cat(parts, dim=1)
        if self_columns is not None:
            rows = torch.arange(block.shape[0], device=gallery.device)
            scores[rows, self_columns[first : first + rows_per_block]] = -math.inf
        out.append(torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k])
    if not out:
        return torch.empty(0, k, dtype=torch.long, device=gallery.device)
    return torch.cat(out)


def _faiss_candidates(
    index: object, queries: torch.Tensor, self_columns: torch.Tensor | None, gallery: Gallery, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates from a faiss flat L2 index (self dropped by index): (ids, approx, tau, bound)."""
    extra = 1 if self_columns is not None else 0
    q_np = queries.float().cpu().numpy()
    distances, ids = index.search(q_np, count + extra)  # type: ignore[attr-defined]
    ids_t = torch.from_numpy(ids).to(gallery.device)
    q64 = queries.double()
    q_sq = (q64 * q64).sum(dim=1)
    last = torch.from_numpy(distances[:, -1].astype(np.float64)).to(gallery.device)
    tau = 0.5 * (q_sq - last)
    if self_columns is not None:
        is_self = ids_t == self_columns[:, None]
        no_self = ~is_self.any(dim=1)
        is_self[no_self, -1] = True
        ids_t = ids_t[~is_self].view(ids_t.shape[0], count)
    else:
        is_self = None
    approx = 0.5 * (q_sq[:, None] - torch.from_numpy(distances.astype(np.float64)).to(gallery.device))
    if self_columns is not None:
        approx = approx[~is_self].view(ids_t.shape[0], count)
    q_norm = q_sq.sqrt()
    unit = U_TF32 if "Gpu" in type(index).__name__ else gallery.gamma
    bound = 0.5 * SAFETY * (unit + 4 * U_FP32) * (q_norm + gallery.max_norm) ** 2 + 1e-30
    return ids_t, approx, tau, bound


def _default_chunk(gallery_size: int | None, count: int, dim: int, workers: int = 1) -> int:
    # the float32 score strips of all workers <= 128 MB together and one float64 (rows, candidates, dim)
    # re-scoring block <= 128 MB; without a strip (gallery_size None: the candidates are precomputed),
    # re-scoring blocks of at most 128 rows, which stay in the allocator's cache instead of being mapped
    # afresh for every chunk
    by_strip = 2**25 // max(gallery_size * workers, 1) if gallery_size is not None else 128
    by_candidates = 2**24 // max(count * dim, 1)
    return int(min(1024, max(16, min(by_strip, by_candidates))))


def iter_knn(
    queries: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    k: int,
    *,
    exclude_self: bool,
    backend: str,
    device: torch.device,
    candidate_dtype: torch.dtype = torch.bfloat16,
    margin: int | None = None,
    chunk: int | None = None,
    stats: KnnStats | None = None,
    query_labels: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    symmetric: bool = True,
    workers: int | None = None,
    depth: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row, indices)`` per chunk of queries: the exact k nearest gallery items of each row.

    ``exclude_self``: queries and gallery are the same set and row i never returns item i.
    ``backend``: "torch" (candidate stage in ``candidate_dtype`` on ``device``) or "faiss".
    ``k`` must not exceed the number of eligible items. With ``query_labels``/``gallery_labels``, the order
    inside a group of near-tied neighbours that are all relevant or all irrelevant is left in float32
    order (no retrieval metric can see it); everything else is exact.
    ``symmetric`` (torch backend with ``exclude_self``, at most SYMMETRIC_MAX_COUNT candidates per row): the
    candidate stage computes every pair of the set once (``symmetric_candidates``) instead of every query
    against the whole gallery; the results are the same (``symmetric=False`` is the reference the tests
    compare it with).
    ``workers``: threads that share the search (default `cpu_workers`: one per torch thread on the CPU).
    ``depth`` (queries,): how many leading neighbours of each query must be exact (clamped to 1..k; None: all
    k). The columns after them are near neighbours in no defined order; a metric that reads only the first R
    neighbours of a query with R relevant items needs no more (`metrics.compute`), and the re-scoring of
    the candidates and the float64 settlement of near-ties shrink with it.
    """
    stats = stats if stats is not None else KnnStats()
    gallery = Gallery(gallery_embeddings, device, workers)
    workers = gallery.workers
    eligible = gallery.size - (1 if exclude_self else 0)
    if not 1 <= k <= eligible:
        raise ValueError(f"k={k} must be between 1 and the number of eligible items {eligible}")
    margin = margin if margin is not None else max(32, k // 4)
    count = min(k + margin, eligible)
    complete = count == eligible
    if k > 64:  # the bf16 error band would hold too many items around a deep k-th neighbour
        candidate_dtype = torch.float32
    if gallery_labels is not None:
        gallery_labels = gallery_labels.to(device)
    index = None
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatL2(gallery.dim)
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(gallery.x32.cpu().numpy())
    elif backend != "torch":
        raise ValueError(f"unknown kNN backend {backend!r}")
    shared = None
    if index is None and exclude_self and symmetric and count <= SYMMETRIC_MAX_COUNT:
        if queries.shape != gallery_embeddings.shape:
            raise ValueError("exclude_self needs the queries to be the gallery")
        shared = symmetric_candidates(gallery, count, candidate_dtype, workers=workers)
    if depth is not None:
        depth = depth.to(device=device, dtype=torch.long).clamp(1, k)
    workers = workers if index is None else 1  # faiss searches on its own threads
    chunk = chunk or _default_chunk(None if shared is not None else gallery.size, count, gallery.dim, workers)

    def solve(start: int) -> tuple[torch.Tensor, KnnStats]:
        """The exact neighbours of the chunk of queries from row `start`, and how they were resolved."""
        found = KnnStats()
        q = queries[start : start + chunk].to(device=device, dtype=torch.float32)
        rows = torch.arange(start, start + q.shape[0], device=device)
        self_cols = rows if exclude_self else None
        if index is not None:
            cand, approx, tau, bound = _faiss_candidates(index, q, self_cols, gallery, count)
        else:
            if shared is not None:
                cand, approx, bound = (part[start : start + q.shape[0]] for part in shared)
            else:
                cand, approx, bound = torch_candidates(q, self_cols, gallery, count, candidate_dtype)
            tau = approx.min(dim=1).values
        relevance = None
        if gallery_labels is not None and query_labels is not None:
            relevance = (query_labels[start : start + q.shape[0]].to(device), gallery_labels)
        rescore = index is None and candidate_dtype != torch.float32
        rows_depth = depth[start : start + q.shape[0]] if depth is not None else None
        indices, certified = refine(
            q, cand, approx, tau, bound, k, gallery, complete, found, rescore=rescore, relevance=relevance,
            depth=rows_depth,
        )  # fmt: skip
        failed = torch.nonzero(~certified)[:, 0]
        if len(failed):
            found.fp32_retry_rows += len(failed)
            retry_count = min(k + 4 * margin, eligible)
            sub_self = self_cols[failed] if self_cols is not None else None
            cand, approx, bound = torch_candidates(q[failed], sub_self, gallery, retry_count, torch.float32)
            tau = approx.min(dim=1).values
            sub_rel = (relevance[0][failed], relevance[1]) if relevance is not None else None
            sub_idx, sub_ok = refine(
                q[failed],
                cand,
                approx,
                tau,
                bound,
                k,
                gallery,
                retry_count == eligible,
                found,
                rescore=False,
                relevance=sub_rel,
                depth=rows_depth[failed] if rows_depth is not None else None,
            )
            indices[failed] = sub_idx
            still = torch.nonzero(~sub_ok)[:, 0]
            if len(still):
                found.full_rows += len(still)
                rows_left = failed[still]
                sub_self = self_cols[rows_left] if self_cols is not None else None
                indices[rows_left] = full_exact_rows(q[rows_left], sub_self, k, gallery)
        found.rows += q.shape[0]
        return indices, found

    starts = range(0, queries.shape[0], chunk)
    # chunks are independent: the CPU workers search them together (their results are small: k indices a row)
    solved = _run_all(solve, starts, workers) if workers > 1 else map(solve, starts)
    for start, (indices, chunk_stats) in zip(starts, solved):
        stats.add(chunk_stats)
        yield start, indices


def drop_same_item(indices: torch.Tensor, same_item: torch.Tensor, k: int) -> torch.Tensor:
    """The first k neighbours of each row after removing its own item (rows hold k + 1 neighbours)."""
    other = indices != same_item[:, None]
    chosen = other & (torch.cumsum(other.to(torch.int64), dim=1) <= k)
    return indices[chosen].view(indices.shape[0], k)
