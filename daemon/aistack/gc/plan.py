"""What one GC pass removes, decided before anything is removed.

A dry run prints this plan; a real run carries out this same plan, so the two agree by
construction. Policies apply in order (expiry, pruning, deduplication), each to the rows
the earlier ones left.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from aistack.config import GcConfig
from aistack.gc import duplicates, policies
from aistack.stores.qdrant import VectorStore
from aistack.stores.solutions import COLLECTION, payload_created_at

ROW_CHUNK = 50_000
IdArray = npt.NDArray[np.int64]


@dataclass
class Plan:
    expired: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    duplicate: list[int] = field(default_factory=list)
    duplicate_of: dict[int, int] = field(default_factory=dict)
    orphan_points: list[int | str] = field(default_factory=list)
    rows_without_points: list[int] = field(default_factory=list)
    archive_purge: int = 0
    pending_points: int = 0
    rows: int = 0
    full_scan: bool = True
    checked_through_id: int = 0

    def removals(self) -> list[tuple[str, list[int]]]:
        return [("expired", self.expired), ("pruned", self.pruned), ("duplicate", self.duplicate)]

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "expired": len(self.expired),
            "pruned": len(self.pruned),
            "duplicate": len(self.duplicate),
            "orphan_points": len(self.orphan_points),
            "rows_without_points": len(self.rows_without_points),
            "archive_purge": self.archive_purge,
            "pending_points": self.pending_points,
        }

    def as_json(self) -> dict[str, Any]:
        return {"counts": self.counts(), "full_scan": self.full_scan}

    def ids_json(self) -> dict[str, Any]:
        """Every id the plan names: a large run's are thousands, so only on request."""
        return {
            "expired": self.expired,
            "pruned": self.pruned,
            "duplicate": [
                {"id": row, "duplicate_of": self.duplicate_of[row]} for row in self.duplicate
            ],
            "orphan_points": self.orphan_points,
            "rows_without_points": self.rows_without_points,
        }


async def load_ids(connection: asyncpg.Connection) -> IdArray:
    """Every row id, ascending. Only ids: scores and times are fetched later for the few
    rows a decision needs them for, which keeps a million-row store to one 8 MB array."""
    chunks: list[IdArray] = []
    last = -1
    while True:
        # Keyset chunks, each one array: memory stays bounded and decoding stays in C.
        chunk = await connection.fetchval(
            "SELECT array_agg(id) FROM"
            " (SELECT id FROM solved_issues WHERE id > $1 ORDER BY id LIMIT $2) AS chunk",
            last,
            ROW_CHUNK,
        )
        if not chunk:
            break
        chunks.append(np.array(chunk, dtype=np.int64))
        last = int(chunks[-1][-1])
    return np.concatenate(chunks) if chunks else np.empty(0, np.int64)


async def ranking_of(
    connection: asyncpg.Connection, ids: IdArray
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(value_score, created_at as epoch seconds) of these rows, in their order."""
    record = await connection.fetchrow(
        # A row deleted meanwhile ranks last; removing it again changes nothing.
        "SELECT array_agg(coalesce(value_score, -1) ORDER BY position) AS scores,"
        " array_agg(coalesce(extract(epoch FROM created_at)::float8, 0) ORDER BY position)"
        " AS created"
        " FROM unnest($1::bigint[]) WITH ORDINALITY AS wanted(id, position)"
        " LEFT JOIN solved_issues USING (id)",
        ids.tolist(),
    )
    if record is None or record["scores"] is None:
        return np.empty(0), np.empty(0)
    return np.array(record["scores"], dtype=np.float64), np.array(record["created"])


async def select_expired(
    connection: asyncpg.Connection, config: GcConfig, now: datetime.datetime
) -> list[int]:
    ids = await connection.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM solved_issues"
        " WHERE created_at < $1 AND value_score < $2",
        policies.expiry_cutoff(config, now),
        config.min_value_score,
    )
    return list(ids or [])


async def select_pruned(
    connection: asyncpg.Connection, config: GcConfig, now: datetime.datetime, remaining: int
) -> list[int]:
    count = policies.prune_count(remaining, config)
    if count == 0:
        return []
    ids = await connection.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM solved_issues"
        " WHERE NOT (created_at < $1 AND value_score < $2) AND created_at < $3"
        " ORDER BY value_score, created_at, id LIMIT $4) AS lowest",
        policies.expiry_cutoff(config, now),
        config.min_value_score,
        policies.prune_protected_after(now),
        count,
    )
    return list(ids or [])


@dataclass
class Points:
    """What Qdrant holds for the surviving rows, and what it holds that no row explains."""

    vectors: npt.NDArray[np.float32]  # one row per survivor; zero where the point is missing
    present: npt.NDArray[np.bool_]
    orphans: list[int | str]


async def load_points(
    store: VectorStore,
    explained: IdArray,
    survivors: IdArray,
    dimension: int,
    orphan_cutoff: float,
) -> Points:
    vectors = np.zeros((survivors.size, dimension), dtype=np.float32)
    present = np.zeros(survivors.size, dtype=bool)
    orphans: list[int | str] = []
    async for page in store.scroll(COLLECTION, with_vectors=True):
        for point in page:
            if isinstance(point.id, int):
                where = int(np.searchsorted(survivors, point.id))
                if where < survivors.size and survivors[where] == point.id:
                    if point.vector is not None and len(point.vector) == dimension:
                        vectors[where] = point.vector
                        present[where] = True
                    continue
                known = int(np.searchsorted(explained, point.id))
                if known < explained.size and explained[known] == point.id:
                    continue  # a row this run removes anyway, or one being finished
            stamp = payload_created_at(point.payload)
            if stamp is None or stamp.timestamp() < orphan_cutoff:
                orphans.append(point.id)
    return Points(vectors, present, orphans)


async def rows_older_than(
    connection: asyncpg.Connection, ids: IdArray, cutoff: datetime.datetime
) -> list[int]:
    if not ids.size:
        return []
    records = await connection.fetch(
        "SELECT id FROM solved_issues WHERE id = ANY($1::bigint[]) AND created_at < $2 ORDER BY id",
        ids.tolist(),
        cutoff,
    )
    return [r["id"] for r in records]


async def choose_duplicates(
    connection: asyncpg.Connection,
    ids: IdArray,
    pairs: list[tuple[IdArray, IdArray]],
) -> dict[int, int]:
    """{removed row id: the id of the row it is merged into} for these similar pairs."""
    if not pairs:
        return {}
    # Only rows in some pair need their score and age: fetch those, renumber the pairs.
    involved = np.unique(np.concatenate([np.concatenate(pair) for pair in pairs]))
    scores, created = await ranking_of(connection, ids[involved])
    local = [
        (np.searchsorted(involved, left), np.searchsorted(involved, right)) for left, right in pairs
    ]
    choice = duplicates.choose_survivors(scores, created, ids[involved], local)
    removed = ids[involved[choice.removed]].tolist()
    kept_for = ids[involved[choice.kept_for]].tolist()
    return dict(zip(removed, kept_for, strict=True))


@dataclass(frozen=True, slots=True)
class DedupState:
    """What the last run's deduplication compared: every row up to `checked_through_id`,
    at `similarity`, as the store stood when the run (started at `last_run_started`) read it."""

    checked_through_id: int
    similarity: float
    last_run_started: datetime.datetime | None


async def dedup_state(connection: asyncpg.Connection) -> DedupState | None:
    # The run that wrote the state started no earlier than the last run marked done: if
    # it failed after writing it, the earlier start only widens the look back.
    record = await connection.fetchrow(
        "SELECT checked_through_id, similarity,"
        " (SELECT max(started_at) FROM gc_runs WHERE status = 'done') AS last_run_started"
        " FROM gc_dedup_state"
    )
    if record is None:
        return None
    return DedupState(
        record["checked_through_id"], record["similarity"], record["last_run_started"]
    )


async def compared_through(
    connection: asyncpg.Connection, state: DedupState | None, similarity: float
) -> int | None:
    """The id up to which every row has been compared already; None: compare every row.

    Ids come from an identity column, taken when a writer inserts, visible when it
    commits: a learn transaction holds its id while it waits for Qdrant, so a row below
    the last run's `checked_through_id` can appear after that run. Rows created shortly
    before the last run started are compared again for that reason.
    """
    if state is None or state.similarity != similarity or state.last_run_started is None:
        return None
    late: int | None = await connection.fetchval(
        "SELECT min(id) FROM solved_issues WHERE created_at >= $1",
        policies.late_commit_cutoff(state.last_run_started),
    )
    return state.checked_through_id if late is None else min(state.checked_through_id, late - 1)


def checked_through(ids: IdArray, waiting: IdArray, compared: int) -> int:
    """The `checked_through_id` this run leaves: it compares every row with a vector, so
    every row up to the highest id but the first row still waiting for its vector (rows
    the orphan sweep embeds in this run, and young rows a writer may still give one)."""
    if not ids.size:
        return max(compared, 0)
    highest = int(ids[-1])
    return min(highest, int(waiting.min()) - 1) if waiting.size else highest


async def make_plan(
    connection: asyncpg.Connection,
    store: VectorStore,
    config: GcConfig,
    dimension: int,
    now: datetime.datetime,
    *,
    full_scan: bool = False,
    orphan_cleanup: bool | None = None,
) -> Plan:
    plan = Plan()
    plan.archive_purge = await connection.fetchval(
        "SELECT coalesce(sum(cardinality(ids)), 0) FROM solved_issues_archive"
        " WHERE archived_at < $1",
        policies.archive_cutoff(config, now),
    )
    pending = await connection.fetchval(
        "SELECT array_agg(id) FROM solved_issues_archive, unnest(ids) AS id"
        " WHERE NOT points_removed"
    )
    plan.pending_points = len(pending or [])
    ids = await load_ids(connection)
    plan.rows = int(ids.size)
    plan.expired = await select_expired(connection, config, now)
    plan.pruned = await select_pruned(connection, config, now, plan.rows - len(plan.expired))
    gone = np.asarray(plan.expired + plan.pruned, dtype=np.int64)
    survivors = ids[~np.isin(ids, gone)] if gone.size else ids

    cutoff = policies.orphan_cutoff(now)
    # Rows still in the store and rows archived with their point still in Qdrant (a run
    # finishes those first) explain their points; any other point is an orphan.
    explained = np.union1d(ids, np.array(pending, dtype=np.int64)) if pending else ids
    points = await load_points(store, explained, survivors, dimension, cutoff.timestamp())
    pointless = survivors[~points.present]
    old_pointless = await rows_older_than(connection, pointless, cutoff)
    if orphan_cleanup if orphan_cleanup is not None else config.orphan_cleanup:
        plan.orphan_points = points.orphans
        plan.rows_without_points = old_pointless
        waiting = pointless
    else:
        # Nothing gives an old row without a point its vector: waiting for it would
        # make every later run compare every row after it. Should the sweep be turned
        # on, that run embeds it and the next one compares it.
        waiting = np.setdiff1d(pointless, np.asarray(old_pointless, dtype=np.int64))

    state = None if full_scan else await dedup_state(connection)
    compared = await compared_through(connection, state, config.deduplicate_similarity)
    plan.full_scan = compared is None
    compared_id = -1 if compared is None else compared
    plan.checked_through_id = checked_through(ids, waiting, compared_id)

    # Deduplicate the survivors that have a vector; ids ascend, so new rows come last.
    usable = points.present
    with_vectors = survivors[usable]
    # Qdrant stores cosine vectors normalised already; normalising again is cheap, and
    # copying 100k x 384 floats is not, so the copy happens only when points are missing.
    matrix = points.vectors if usable.all() else points.vectors[usable]
    first_new = int(np.searchsorted(with_vectors, compared_id, side="right"))

    def find_pairs() -> list[tuple[IdArray, IdArray]]:
        duplicates.normalise_in_place(matrix)
        return list(
            duplicates.similar_pairs(matrix, config.deduplicate_similarity, first_new=first_new)
        )

    # Seconds of numpy on a large store: off the event loop, so a process that also
    # serves (`aistack demo`) keeps answering; numpy releases the GIL while it multiplies.
    pairs = await asyncio.to_thread(find_pairs)
    plan.duplicate_of = await choose_duplicates(connection, with_vectors, pairs)
    plan.duplicate = sorted(plan.duplicate_of)
    return plan
