"""One GC pass against PostgreSQL and Qdrant.

Order of work, chosen so a crash at any instant loses nothing:
1. finish what a killed run left: archived rows whose points are still in Qdrant;
2. purge archive entries older than `archive_days`;
3. plan (see `gc.plan`), then for each policy, in batches: copy the rows to the archive
   and delete them in one transaction; then delete their points; then mark that done;
4. the orphan sweep: points without rows go, rows without points are embedded again.
Two passes never overlap: a PostgreSQL advisory lock is held on the job's connection for
its whole length, and dies with it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import asyncpg

from aistack.config import Config
from aistack.embedding import Embedder
from aistack.errors import Failure
from aistack.gc import policies
from aistack.gc.plan import Plan, make_plan
from aistack.observability.failpoints import failpoint
from aistack.observability.logs import EventLog
from aistack.stores.postgres import CONNECTION_ERRORS, connection
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import GC_LOCK, require_current
from aistack.stores.solutions import COLLECTION, point_payload

log = EventLog("gc")
STATEMENT_TIMEOUT_MS = 120_000
LOCK_TIMEOUT_MS = 5_000
# Rows embedded per call when points are written again (the sweep, a restore).
EMBED_BATCH = 256


class GcBusy(Failure):
    """Another GC pass (or a restore) holds the lock; `reason` says which. The message is
    what `command` tells its user when it cannot wait for the other to finish."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"{command}: {reason}; try again when it has finished")
        self.reason = reason


@dataclass
class RunResult:
    run_id: int | None
    dry_run: bool
    plan: Plan
    seconds: float = 0.0
    done: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            **self.plan.as_json(),
            "done": self.done,
        }


class Progress:
    """One line per second at most on long work, for a terminal or a journal; and the
    longest batch transaction, which is how long a batch held its row locks."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._last = 0.0
        self.batch_seconds: list[float] = []

    def report(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self._stream is None or (now - self._last < 1.0 and done < total):
            return
        self._last = now
        self._stream.write(f"gc: {what} {done}/{total}\n")
        self._stream.flush()


async def try_lock(connection: asyncpg.Connection, command: str) -> None:
    """Take the GC's lock for `command` (`gc run`, `gc restore`), or raise GcBusy."""
    if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK):
        running = await connection.fetchrow(
            "SELECT id, started_at FROM gc_runs WHERE status = 'running' ORDER BY id DESC LIMIT 1"
        )
        since = ""
        if running is not None:
            since = f" (run {running['id']}, started {running['started_at']:%Y-%m-%d %H:%M:%S%z})"
        raise GcBusy(command, "another GC run or restore is in progress" + since)


async def run_gc(
    config: Config,
    store: VectorStore,
    embedder: Embedder,
    *,
    dry_run: bool = False,
    full_scan: bool = False,
    now: datetime.datetime | None = None,
    progress: TextIO | None = sys.stderr,
) -> RunResult:
    started = time.monotonic()
    now = now or datetime.datetime.now(datetime.UTC)
    async with connection(
        config.postgres, statement_timeout_ms=STATEMENT_TIMEOUT_MS, lock_timeout_ms=LOCK_TIMEOUT_MS
    ) as db:
        await require_current(db)
        if dry_run:
            plan = await make_plan(
                db, store, config.gc, embedder.dimension, now, full_scan=full_scan
            )
            result = RunResult(None, True, plan, time.monotonic() - started)
            log.info("gc.dry_run", **plan.counts())
            return result
        await try_lock(db, "gc run")
        # Holding the lock, any run still marked running died without saying so.
        await db.execute(
            "UPDATE gc_runs SET status = 'interrupted', finished_at = now()"
            " WHERE status = 'running'"
        )
        run_id = await db.fetchval("INSERT INTO gc_runs DEFAULT VALUES RETURNING id")
        log.info("gc.started", run=run_id)
        try:
            result = await _carry_out(config, store, embedder, db, run_id, now, full_scan, progress)
        except BaseException as error:
            await _record_failure(db, run_id, error)
            raise
        result.seconds = time.monotonic() - started
        await db.execute(
            "UPDATE gc_runs SET status = 'done', finished_at = now(), counts = $2 WHERE id = $1",
            run_id,
            json.dumps({**result.plan.counts(), **result.done}),
        )
        log.info("gc.run", run=run_id, seconds=f"{result.seconds:.1f}", **result.done)
        return result


async def _record_failure(db: asyncpg.Connection, run_id: int, error: BaseException) -> None:
    log.error("gc.failed", run=run_id, error=repr(error)[:500])
    if db.is_closed():
        return
    # If this fails too, the next run marks the run interrupted.
    with contextlib.suppress(*CONNECTION_ERRORS):
        await db.execute(
            "UPDATE gc_runs SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
            run_id,
            repr(error)[:2000],
        )


async def _carry_out(
    config: Config,
    store: VectorStore,
    embedder: Embedder,
    db: asyncpg.Connection,
    run_id: int,
    now: datetime.datetime,
    full_scan: bool,
    stream: TextIO | None,
) -> RunResult:
    progress = Progress(stream)
    done: dict[str, int] = {"vectors_cleaned": 0}
    done["pending_finished"] = await finish_pending(db, store)
    done["vectors_cleaned"] += done["pending_finished"]
    done["archive_purged"] = await purge_archive(db, config, now)
    plan = await make_plan(db, store, config.gc, embedder.dimension, now, full_scan=full_scan)
    for reason, ids in plan.removals():
        moved = await archive_and_delete(
            db, store, run_id, reason, ids, plan.duplicate_of, config.gc.batch_size, progress
        )
        done[reason] = moved
        done["vectors_cleaned"] += moved
    await store.delete(COLLECTION, plan.orphan_points)
    done["orphan_points"] = len(plan.orphan_points)
    done["vectors_cleaned"] += len(plan.orphan_points)
    done["reembedded"] = await embed_again(db, store, embedder, plan.rows_without_points, progress)
    done["batches"] = len(progress.batch_seconds)
    done["longest_batch_ms"] = round(1000 * max(progress.batch_seconds, default=0.0))
    await db.execute(
        "INSERT INTO gc_dedup_state (checked_through_id, similarity) VALUES ($1, $2)"
        " ON CONFLICT (singleton) DO UPDATE"
        " SET checked_through_id = excluded.checked_through_id, similarity = excluded.similarity",
        plan.checked_through_id,
        config.gc.deduplicate_similarity,
    )
    return RunResult(run_id, False, plan, done=done)


# One statement per batch: delete the rows and write them, as parallel arrays, into one
# archive row. The join keeps only rows really deleted (another writer may have been first).
ARCHIVE_BATCH = """
WITH gone AS (
    DELETE FROM solved_issues WHERE id = ANY($1::bigint[])
    RETURNING id, query, solution, value_score, created_at
),
merged AS (SELECT * FROM unnest($1::bigint[], $4::bigint[]) AS m(id, into_id))
INSERT INTO solved_issues_archive
    (run_id, reason, ids, queries, solutions, value_scores, created_ats, duplicate_of)
SELECT $2, $3, array_agg(gone.id ORDER BY gone.id), array_agg(query ORDER BY gone.id),
       array_agg(solution ORDER BY gone.id), array_agg(value_score ORDER BY gone.id),
       array_agg(created_at ORDER BY gone.id), array_agg(into_id ORDER BY gone.id)
FROM gone JOIN merged USING (id)
HAVING count(*) > 0
RETURNING batch_id, ids
"""


async def archive_and_delete(
    db: asyncpg.Connection,
    store: VectorStore,
    run_id: int,
    reason: str,
    ids: list[int],
    duplicate_of: dict[int, int],
    batch_size: int,
    progress: Progress,
) -> int:
    moved = 0
    for batch in policies.batches(ids, batch_size):
        merged = [duplicate_of.get(row) for row in batch]
        began = time.perf_counter()
        async with db.transaction():
            # A row is either in the store or in the archive, whatever instant the
            # process dies at.
            archived = await db.fetchrow(ARCHIVE_BATCH, batch, run_id, reason, merged)
        progress.batch_seconds.append(time.perf_counter() - began)
        if archived is None:
            continue
        failpoint("gc.after_commit")
        await remove_points(db, store, archived["batch_id"], archived["ids"])
        moved += len(archived["ids"])
        progress.report(reason, moved, len(ids))
    return moved


async def remove_points(
    db: asyncpg.Connection, store: VectorStore, batch_id: int, ids: list[int]
) -> None:
    await store.delete(COLLECTION, ids)
    await db.execute(
        "UPDATE solved_issues_archive SET points_removed = true WHERE batch_id = $1", batch_id
    )


async def finish_pending(db: asyncpg.Connection, store: VectorStore) -> int:
    """Delete the points of rows a killed run archived but did not get to."""
    finished = 0
    pending = await db.fetch(
        "SELECT batch_id, ids FROM solved_issues_archive WHERE NOT points_removed ORDER BY batch_id"
    )
    for batch in pending:
        await remove_points(db, store, batch["batch_id"], batch["ids"])
        finished += len(batch["ids"])
        log.info("gc.finished_pending", batch=batch["batch_id"], points=len(batch["ids"]))
    return finished


async def purge_archive(db: asyncpg.Connection, config: Config, now: datetime.datetime) -> int:
    # Batches still pending keep their rows until their points are gone.
    purged = await db.fetchval(
        "WITH gone AS (DELETE FROM solved_issues_archive"
        " WHERE archived_at < $1 AND points_removed RETURNING cardinality(ids) AS rows)"
        " SELECT coalesce(sum(rows), 0) FROM gone",
        policies.archive_cutoff(config.gc, now),
    )
    return int(purged)


async def embed_again(
    db: asyncpg.Connection,
    store: VectorStore,
    embedder: Embedder,
    ids: list[int],
    progress: Progress,
) -> int:
    """Give rows that lost their point (or never got one) a point again."""
    repaired = 0
    looked_at = 0
    for batch in policies.batches(ids, EMBED_BATCH):
        repaired += await embed_batch(db, store, embedder, batch)
        # Rows deleted meanwhile count as looked at, so the last line reads total/total.
        looked_at += len(batch)
        progress.report("re-embedded", looked_at, len(ids))
    return repaired


async def embed_batch(
    db: asyncpg.Connection, store: VectorStore, embedder: Embedder, ids: list[int]
) -> int:
    records = await db.fetch(
        "SELECT id, query, value_score, created_at FROM solved_issues"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )
    if not records:
        return 0
    vectors = await embedder.embed_documents([r["query"] for r in records])
    await store.ensure_collection(COLLECTION, embedder.dimension)
    await store.upsert(
        COLLECTION,
        [r["id"] for r in records],
        vectors,
        [point_payload(r["value_score"], r["created_at"]) for r in records],
    )
    return len(records)
