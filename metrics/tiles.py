"""Compiled screening of bfloat16 score tiles for the symmetric CPU search (`metrics.knn.symmetric_candidates`).

Every item keeps a running list of its best ``count`` scores as a min-heap of int16 keys (the worst kept
score at the root) with the matching columns, and a floor: the root, or, until the list is full above it, a
seed from the item's own tile (no entry below it can be among the item's best). A tile of scores between the
items of a row block and those of a column block is read once: each entry is offered to its row's list and
to its column's list, and taken where it beats that list's floor. Most entries beat neither; they are found
with vectorised maxima: over strided groups of 8 columns within a row for the row side, over 8 consecutive
rows for the column side, and only the groups whose maximum beats a floor are read entry by entry.

Keys: a bfloat16 value's 16 bits read as int16, with the magnitude bits flipped when the sign bit is set,
order as the values do (-0.0 just below +0.0); ``values_of_keys`` maps them back. The kernels release the
GIL, so threads can screen tiles at the same time; two tiles that share a row block must not (the caller
locks the blocks).
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = np.int16(-32768)  # below every key of a bfloat16 value: an unfilled slot of a list
GROUP = 8


def keys_of_values(bits: np.ndarray) -> np.ndarray:
    """int16 keys that order as the bfloat16 values whose bits (int16) are given."""
    wide = bits.astype(np.int32)
    return (wide ^ ((wide >> 15) & 0x7FFF)).astype(np.int16)


def values_of_keys(keys: np.ndarray) -> np.ndarray:
    """The bfloat16 bits (int16) of keys made by `keys_of_values` (the map is its own inverse)."""
    return keys_of_values(keys)


@njit(nogil=True, cache=True, inline="always")
def _key(value: np.int16) -> np.int16:
    """The int16 key of bfloat16 bits (as in `keys_of_values`), inside the kernels."""
    return value ^ ((value >> 15) & np.int16(0x7FFF))


@njit(nogil=True, cache=True)
def _take(keys: np.ndarray, columns: np.ndarray, floor: np.ndarray, item: int, key: np.int16, column: int) -> None:
    """Replace the worst entry of `item`'s list (the heap's root) by (key, column), restore the heap."""
    heap_keys = keys[item]
    heap_columns = columns[item]
    size = heap_keys.shape[0]
    position = 0
    while True:
        child = 2 * position + 1
        if child >= size:
            break
        if child + 1 < size and heap_keys[child + 1] < heap_keys[child]:
            child += 1
        if heap_keys[child] >= key:
            break
        heap_keys[position] = heap_keys[child]
        heap_columns[position] = heap_columns[child]
        position = child
    heap_keys[position] = key
    heap_columns[position] = column
    floor[item] = max(floor[item], heap_keys[0])  # a seeded floor stays until the list is full above it


@njit(nogil=True, cache=True)
def _offer(keys: np.ndarray, columns: np.ndarray, floor: np.ndarray, item: int, value: np.int16, column: int) -> None:
    """Take the entry of bfloat16 bits ``value`` in ``column`` into ``item``'s list if it beats its floor."""
    key = _key(value)
    if key > floor[item]:
        _take(keys, columns, floor, item, key, column)


@njit(nogil=True, cache=True)
def _group_maxima(row: np.ndarray, group_max: np.ndarray) -> None:
    """``group_max[p]``: the largest key of the row's entries p, p + stride, ..., p + 7 stride (stride =
    ``len(group_max)``), one vectorised pass per group member."""
    stride = group_max.shape[0]
    group_max[:] = EMPTY
    for g in range(GROUP):
        part = row[g * stride : g * stride + stride]
        for p in range(stride):
            value = part[p]
            group_max[p] = max(group_max[p], _key(value))


@njit(nogil=True, cache=True)
def _seed_floors(tile: np.ndarray, row_first: int, floor: np.ndarray, count: int) -> None:
    """Raise the floors of the rows of a block's own tile (``tile``: block x block, item i on the diagonal) to
    just below their ``count``-th largest maximum over strided column groups, the diagonal left out: those
    maxima are ``count`` distinct entries of the row, so its list will hold ``count`` entries at or above it
    (without a seed, a list fills from nothing, taking most of the tile's first entries one by one)."""
    rows, width = tile.shape
    stride = width // GROUP
    group_max = np.empty(stride, np.int16)
    for i in range(rows):
        row = tile[i]
        _group_maxima(row, group_max)
        if i < GROUP * stride:  # the diagonal entry (the item itself) is in group i % stride
            p = i % stride
            group_max[p] = EMPTY
            for g in range(GROUP):
                j = g * stride + p
                if j != i:
                    value = row[j]
                    group_max[p] = max(group_max[p], _key(value))
        seed = np.partition(group_max, stride - count)[stride - count]
        if seed > EMPTY:
            floor[row_first + i] = max(floor[row_first + i], seed - 1)


@njit(nogil=True, cache=True)
def offer_tile(
    tile: np.ndarray,
    row_first: int,
    column_first: int,
    keys: np.ndarray,
    columns: np.ndarray,
    floor: np.ndarray,
    own: bool,
) -> None:
    """Offer the entries of ``tile`` (bfloat16 bits as int16; rows: items ``row_first..``, columns: items
    ``column_first..``) to the lists of both its row and its column item. ``own``: the tile of a block with
    itself, of which only the entries above the diagonal are read (each pair once, never an item itself)."""
    rows, width = tile.shape
    stride = width // GROUP
    grouped = stride * GROUP
    column_max = np.empty(width, np.int16)
    group_max = np.empty(stride, np.int16)
    count = keys.shape[1]
    if own and stride >= count:
        _seed_floors(tile, row_first, floor, count)
    for first in range(0, rows, GROUP):
        last = min(first + GROUP, rows)
        column_max[:] = EMPTY
        for i in range(first, last):
            row = tile[i]
            for j in range(width):
                value = row[j]
                column_max[j] = max(column_max[j], _key(value))
            _group_maxima(row, group_max)
            item = row_first + i
            for p in range(stride):
                if group_max[p] > floor[item]:
                    for g in range(GROUP):
                        j = g * stride + p
                        if not (own and j <= i):
                            _offer(keys, columns, floor, item, row[j], column_first + j)
            for j in range(grouped, width):
                if not (own and j <= i):
                    _offer(keys, columns, floor, item, row[j], column_first + j)
        for j in range(width):
            item = column_first + j
            if column_max[j] > floor[item]:
                for i in range(first, last):
                    if not (own and j <= i):
                        _offer(keys, columns, floor, item, tile[i, j], row_first + i)


def warm_up() -> None:
    """Load the kernels from numba's cache (or compile them, once per installation) on a tiny tile."""
    keys = np.full((8, 2), EMPTY, dtype=np.int16)
    offer_tile(np.zeros((8, 8), np.int16), 0, 0, keys, np.zeros((8, 2), np.int64), keys[:, 0].copy(), True)
