"""Exact near-duplicate detection: every pair of rows whose query embeddings have a cosine
similarity at or above the threshold, then which row of each cluster survives.

Exact, not sampled (Qdrant's `search_matrix_pairs` samples and misses pairs): normalised
vectors are multiplied tile by tile into one preallocated buffer, so the working memory
is the tile (rows x columns x 4 bytes), not n x n. Incremental runs compare only the
rows not compared yet (those that arrived since the last run, and the few `gc.plan`
names) against all rows: their cost grows with what arrived, not with the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TILE_ROWS = 2048
TILE_COLUMNS = 8192

Matrix = npt.NDArray[np.float32]


def normalise_in_place(matrix: Matrix) -> Matrix:
    """Scale float32 rows to unit length (zero rows stay zero) without a second copy."""
    for start in range(0, matrix.shape[0], TILE_COLUMNS):
        block = matrix[start : start + TILE_COLUMNS]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        block /= norms
    return matrix


def normalised(vectors: npt.ArrayLike) -> Matrix:
    """Rows scaled to unit length (zero rows stay zero), as a new float32 array."""
    return normalise_in_place(np.array(vectors, dtype=np.float32))


def similar_pairs(
    vectors: Matrix,
    threshold: float,
    first_new: int = 0,
    tile_rows: int = TILE_ROWS,
    tile_columns: int = TILE_COLUMNS,
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Index pairs (i, j), j < i, i >= first_new, with vectors[i] . vectors[j] >= threshold.

    `vectors` must be normalised rows. Rows from `first_new` on are the new ones; with
    first_new = 0 every pair is found. Yields arrays of pairs tile by tile.
    """
    count = vectors.shape[0]
    buffer = np.empty((min(tile_rows, count), min(tile_columns, count)), dtype=np.float32)
    for row_start in range(first_new, count, tile_rows):
        row_end = min(row_start + tile_rows, count)
        rows = vectors[row_start:row_end]
        # Columns up to the last row of this tile: j < i is decided inside the tile.
        for column_start in range(0, row_end, tile_columns):
            column_end = min(column_start + tile_columns, row_end)
            out = buffer[: row_end - row_start, : column_end - column_start]
            np.matmul(rows, vectors[column_start:column_end].T, out=out)
            if column_end <= row_start:
                # Wholly below the diagonal, where hits are rare: a row maximum (one fast
                # pass) finds the few rows worth a full comparison, instead of building
                # a boolean mask of the whole tile.
                candidates = np.flatnonzero(out.max(axis=1) >= threshold)
                if candidates.size == 0:
                    continue
                hit_rows, hit_columns = np.nonzero(out[candidates] >= threshold)
                i = candidates[hit_rows].astype(np.int64) + row_start
                j = hit_columns.astype(np.int64) + column_start
                yield i, j
                continue
            hit_rows, hit_columns = np.nonzero(out >= threshold)
            if hit_rows.size == 0:
                continue
            i = hit_rows.astype(np.int64) + row_start
            j = hit_columns.astype(np.int64) + column_start
            below = j < i
            if below.any():
                yield i[below], j[below]


@dataclass(frozen=True, slots=True)
class DuplicateChoice:
    removed: npt.NDArray[np.int64]  # row indices to remove
    kept_for: npt.NDArray[np.int64]  # for each removed index, the index that stays


def choose_survivors(
    scores: npt.ArrayLike,
    created: npt.ArrayLike,
    ids: npt.ArrayLike,
    pairs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]],
) -> DuplicateChoice:
    """Which rows of each group of near-duplicates go.

    Rows are ranked by value_score, then newest, then highest id. Going down the ranks, a
    row is kept unless it is similar to a row already kept; then it goes, merged into the
    best kept row it is similar to. So the best row of a group always stays, and a row
    similar only to a removed row (a chain a~b~c with a and c apart) is not lost for it.
    """
    score_array = np.asarray(scores, dtype=np.float64)
    created_array = np.asarray(created, dtype=np.float64)
    id_array = np.asarray(ids, dtype=np.int64)
    if not pairs:
        empty = np.empty(0, dtype=np.int64)
        return DuplicateChoice(empty, empty)
    left = np.concatenate([p[0] for p in pairs])
    right = np.concatenate([p[1] for p in pairs])
    # rank[k] = position of row k in best-first order (0 = best).
    order = np.lexsort((-id_array, -created_array, -score_array))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    # Orient each pair from the better row to the worse one.
    swap = rank[left] > rank[right]
    better = np.where(swap, right, left)
    worse = np.where(swap, left, right)
    # Visit the worse ends in rank order; their better neighbours come first by rank.
    by_worse = np.lexsort((rank[better], rank[worse]))
    better, worse = better[by_worse], worse[by_worse]
    involved = np.unique(np.concatenate([better, worse]))
    kept = dict.fromkeys(involved.tolist(), True)
    merged_into: dict[int, int] = {}
    starts = np.flatnonzero(np.r_[True, worse[1:] != worse[:-1]])
    ends = np.r_[starts[1:], worse.size]
    # A row is decided only after every better row it touches: process in rank order of
    # the worse end, and every better end ranks above it.
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        row = int(worse[start])
        for neighbour in better[start:end].tolist():
            if kept[neighbour]:
                kept[row] = False
                merged_into[row] = neighbour
                break
    removed = np.fromiter(merged_into.keys(), dtype=np.int64, count=len(merged_into))
    kept_for = np.fromiter(merged_into.values(), dtype=np.int64, count=len(merged_into))
    return DuplicateChoice(removed, kept_for)
