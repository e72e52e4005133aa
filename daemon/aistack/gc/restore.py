"""`aistack gc restore`: put archived rows back, with their points.

Points first, then rows: the points are written (the query embedded again with the same
model), then one transaction moves the rows from the archive back into the store. A crash
between leaves points whose rows are still archived; the next GC pass removes those as
pending, and the restore can simply be run again. Holds the GC lock, so no pass runs
meanwhile.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from aistack.config import Config
from aistack.embedding import Embedder
from aistack.errors import UsageError
from aistack.gc.job import (
    EMBED_BATCH,
    LOCK_TIMEOUT_MS,
    STATEMENT_TIMEOUT_MS,
    Progress,
    try_lock,
)
from aistack.observability.logs import EventLog
from aistack.stores.postgres import connection
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import require_current
from aistack.stores.solutions import COLLECTION, COLUMNS, point_payload

log = EventLog("gc")


class NothingToRestore(UsageError):
    """The selection matches no archived row."""


@dataclass(frozen=True, slots=True)
class Selection:
    run_id: int | None = None
    since: datetime.datetime | None = None
    reason: str | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        values: list[object] = []
        if self.run_id is not None:
            values.append(self.run_id)
            clauses.append(f"run_id = ${len(values)}")
        if self.since is not None:
            values.append(self.since)
            clauses.append(f"archived_at >= ${len(values)}")
        if self.reason is not None:
            values.append(self.reason)
            clauses.append(f"reason = ${len(values)}")
        return " AND ".join(clauses) or "true", values

    def describe(self) -> str:
        parts = []
        if self.run_id is not None:
            parts.append(f"run {self.run_id}")
        if self.since is not None:
            parts.append(f"archived since {self.since.isoformat()}")
        if self.reason is not None:
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)


async def restore(
    config: Config,
    store: VectorStore,
    embedder: Embedder,
    selection: Selection,
    progress: TextIO | None = sys.stderr,
) -> int:
    """Restore the selected archived rows; return how many came back."""
    report = Progress(progress)
    async with connection(
        config.postgres, statement_timeout_ms=STATEMENT_TIMEOUT_MS, lock_timeout_ms=LOCK_TIMEOUT_MS
    ) as db:
        await require_current(db)
        await try_lock(db, "gc restore")
        where, values = selection.where()
        archived = await db.fetch(
            f"SELECT batch_id, cardinality(ids) AS rows FROM solved_issues_archive"
            f" WHERE {where} ORDER BY batch_id",
            *values,
        )
        if not archived:
            raise NothingToRestore(f"gc restore: no archived rows match {selection.describe()}")
        total = sum(batch["rows"] for batch in archived)
        await store.ensure_collection(COLLECTION, embedder.dimension)
        restored = 0
        for batch in archived:
            restored += await restore_batch(db, store, embedder, batch["batch_id"])
            report.report("restored", restored, total)
        log.info("gc.restored", rows=restored, selection=selection.describe())
        return restored


async def restore_batch(
    db: asyncpg.Connection, store: VectorStore, embedder: Embedder, batch_id: int
) -> int:
    rows = await db.fetch(
        "SELECT id, query, value_score, created_at FROM solved_issues_archive,"
        " unnest(ids, queries, value_scores, created_ats)"
        " AS row(id, query, value_score, created_at)"
        " WHERE batch_id = $1 ORDER BY id",
        batch_id,
    )
    for start in range(0, len(rows), EMBED_BATCH):
        part = rows[start : start + EMBED_BATCH]
        vectors = await embedder.embed_documents([r["query"] for r in part])
        await store.upsert(
            COLLECTION,
            [r["id"] for r in part],
            vectors,
            [point_payload(r["value_score"], r["created_at"]) for r in part],
        )
    async with db.transaction():
        await db.execute(
            f"INSERT INTO solved_issues ({COLUMNS}) OVERRIDING SYSTEM VALUE"
            f" SELECT {COLUMNS} FROM solved_issues_archive,"
            " unnest(ids, queries, solutions, value_scores, created_ats)"
            f" AS row({COLUMNS}) WHERE batch_id = $1"
            " ON CONFLICT (id) DO NOTHING",
            batch_id,
        )
        await db.execute("DELETE FROM solved_issues_archive WHERE batch_id = $1", batch_id)
    return len(rows)
