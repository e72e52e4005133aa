"""The near-duplicate finder and the choice of survivors, against brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.gc.duplicates import choose_survivors, normalised, similar_pairs


def brute_force_pairs(vectors: np.ndarray, threshold: float, first_new: int) -> set:
    similarity = vectors @ vectors.T
    return {
        (i, j)
        for i in range(first_new, len(vectors))
        for j in range(i)
        if similarity[i, j] >= threshold
    }


def clustered(seed: int, count: int, dimension: int = 16) -> np.ndarray:
    """Vectors in a few tight clusters, so many pairs sit near any threshold."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(max(1, count // 4), dimension))
    picks = generator.integers(0, len(centres), size=count)
    noise = generator.normal(scale=generator.choice([0.05, 0.2, 0.5]), size=(count, dimension))
    return normalised(centres[picks] + noise)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(1, 60),
    threshold=st.floats(0.5, 0.999),
    new_share=st.floats(0, 1),
    tiles=st.tuples(st.integers(1, 17), st.integers(1, 23)),
)
def test_every_pair_above_the_threshold_is_found_exactly_once(
    seed, count, threshold, new_share, tiles
):
    vectors = clustered(seed, count)
    first_new = int(count * new_share)
    found = [
        (int(i), int(j))
        for rows, columns in similar_pairs(
            vectors, threshold, first_new, tile_rows=tiles[0], tile_columns=tiles[1]
        )
        for i, j in zip(rows, columns, strict=True)
    ]
    assert len(found) == len(set(found))
    # Tiles and one big product may round the last bit apart: pairs within a hair of the
    # threshold may fall either way.
    similarity = vectors @ vectors.T
    edge = {(i, j) for i, j in brute_force_pairs(vectors, threshold - 1e-5, first_new)}
    edge -= brute_force_pairs(vectors, threshold + 1e-5, first_new)
    assert set(found) - edge == brute_force_pairs(vectors, threshold, first_new) - edge
    assert all(similarity[i, j] >= threshold - 1e-5 for i, j in found)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 50), threshold=st.floats(0.6, 0.99))
def test_survivors_are_never_similar_and_every_removed_row_has_a_better_twin(
    seed, count, threshold
):
    vectors = clustered(seed, count)
    generator = np.random.default_rng(seed + 1)
    scores = generator.choice([0.1, 0.5, 0.9], size=count)
    created = generator.integers(0, 5, size=count).astype(float)
    ids = np.arange(count) + 100
    pairs = list(similar_pairs(vectors, threshold))
    choice = choose_survivors(scores, created, ids, pairs)
    removed = set(choice.removed.tolist())
    kept = [k for k in range(count) if k not in removed]
    similarity = vectors @ vectors.T
    for a in kept:
        for b in kept:
            assert a == b or similarity[a, b] < threshold + 1e-5
    rank = {k: (-scores[k], -created[k], -ids[k]) for k in range(count)}
    for row, into in zip(choice.removed.tolist(), choice.kept_for.tolist(), strict=True):
        assert into in kept
        assert similarity[row, into] >= threshold - 1e-5
        assert rank[into] < rank[row]


def test_the_best_of_a_group_stays_then_newest():
    vectors = normalised(np.ones((4, 3)))
    scores = [0.5, 0.9, 0.9, 0.7]
    created = [1.0, 1.0, 2.0, 3.0]
    choice = choose_survivors(scores, created, [1, 2, 3, 4], list(similar_pairs(vectors, 0.95)))
    assert sorted(choice.removed.tolist()) == [0, 1, 3]
    assert set(choice.kept_for.tolist()) == {2}


def test_a_chain_keeps_both_ends():
    # a ~ b and b ~ c, but a and c are apart: b goes, a and c stay.
    a, c = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    b = (a + c) / np.sqrt(2)
    vectors = normalised(np.stack([a, b, c]))
    pairs = list(similar_pairs(vectors, 0.7))
    choice = choose_survivors([0.9, 0.5, 0.8], [0, 0, 0], [1, 2, 3], pairs)
    assert choice.removed.tolist() == [1]
