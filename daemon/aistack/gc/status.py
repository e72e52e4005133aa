"""`aistack gc status` and the figures the GC leaves for Prometheus.

A GC pass is a oneshot: its process is gone before any scrape. Its figures are written
as a node_exporter textfile (`--metrics-file`), replaced atomically. The counters are
summed over every recorded run in PostgreSQL, so they only ever grow, as counters must,
whichever process writes the file.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aistack.observability.textfile import render, write_textfile
from aistack.stores.qdrant import VectorStore
from aistack.stores.solutions import COLLECTION

REASONS = ("expired", "pruned", "duplicate")
TABLES = ("solved_issues", "solved_issues_archive", "gc_runs", "gc_dedup_state")


@dataclass
class GcFigures:
    deleted: dict[str, int]
    vectors_cleaned: int
    storage_bytes: int
    postgres_bytes: int
    qdrant_bytes: int
    rows: int
    archived_rows: int
    pending_points: int
    last_success: datetime.datetime | None
    last_run_seconds: float | None
    runs: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "archived_rows": self.archived_rows,
            "pending_points": self.pending_points,
            "storage_bytes": {
                "postgres": self.postgres_bytes,
                "qdrant": self.qdrant_bytes,
                "total": self.storage_bytes,
            },
            "deleted_total": self.deleted,
            "vectors_cleaned_total": self.vectors_cleaned,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "runs": self.runs,
        }


async def gather(db: asyncpg.Connection, store: VectorStore, recent: int = 10) -> GcFigures:
    totals = await db.fetchrow(
        "SELECT"
        " coalesce(sum((counts->>'expired')::bigint), 0) AS expired,"
        " coalesce(sum((counts->>'pruned')::bigint), 0) AS pruned,"
        " coalesce(sum((counts->>'duplicate')::bigint), 0) AS duplicate,"
        " coalesce(sum((counts->>'vectors_cleaned')::bigint), 0) AS vectors_cleaned"
        " FROM gc_runs WHERE status = 'done'"
    )
    postgres_bytes = await db.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0)"
        " FROM unnest($1::text[]) AS name",
        list(TABLES),
    )
    qdrant_bytes = await store.storage_bytes(COLLECTION)
    last = await db.fetchrow(
        "SELECT finished_at, extract(epoch FROM finished_at - started_at)::float8 AS seconds"
        " FROM gc_runs WHERE status = 'done' ORDER BY id DESC LIMIT 1"
    )
    runs = await db.fetch(
        "SELECT id, started_at, finished_at, status, counts, error FROM gc_runs"
        " ORDER BY id DESC LIMIT $1",
        recent,
    )
    return GcFigures(
        deleted={reason: int(totals[reason]) for reason in REASONS},
        vectors_cleaned=int(totals["vectors_cleaned"]),
        storage_bytes=int(postgres_bytes) + qdrant_bytes,
        postgres_bytes=int(postgres_bytes),
        qdrant_bytes=qdrant_bytes,
        rows=await db.fetchval("SELECT count(*) FROM solved_issues"),
        archived_rows=await db.fetchval(
            "SELECT coalesce(sum(cardinality(ids)), 0) FROM solved_issues_archive"
        ),
        pending_points=await db.fetchval(
            "SELECT coalesce(sum(cardinality(ids)), 0) FROM solved_issues_archive"
            " WHERE NOT points_removed"
        ),
        last_success=last["finished_at"] if last else None,
        last_run_seconds=last["seconds"] if last else None,
        runs=[
            {
                "id": run["id"],
                "started_at": run["started_at"].isoformat(),
                "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
                "status": run["status"],
                "counts": json.loads(run["counts"]),
                "error": run["error"],
            }
            for run in runs
        ],
    )


class FiguresCollector(Collector):
    def __init__(self, figures: GcFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        figures = self._figures
        deleted = CounterMetricFamily(
            "hybrid_gc_solutions_deleted",
            "Solutions removed by the GC (archived, restorable for archive_days), by policy",
            labels=["reason"],
        )
        for reason, count in figures.deleted.items():
            deleted.add_metric([reason], count)
        yield deleted
        yield CounterMetricFamily(
            "hybrid_gc_vectors_cleaned",
            "Qdrant points removed by the GC (of removed rows and orphans)",
            value=figures.vectors_cleaned,
        )
        yield GaugeMetricFamily(
            "hybrid_gc_storage_bytes",
            "Storage of the learning store: PostgreSQL relations plus the Qdrant collection",
            value=figures.storage_bytes,
        )
        yield GaugeMetricFamily(
            "aistack_gc_rows", "Rows in solved_issues after the last GC pass", value=figures.rows
        )
        yield GaugeMetricFamily(
            "aistack_gc_pending_points",
            "Archived rows whose points a killed run left in Qdrant (next run removes them)",
            value=figures.pending_points,
        )
        if figures.last_success is not None:
            yield GaugeMetricFamily(
                "aistack_gc_last_success_timestamp_seconds",
                "When the last GC pass finished successfully",
                value=figures.last_success.timestamp(),
            )
        if figures.last_run_seconds is not None:
            yield GaugeMetricFamily(
                "aistack_gc_last_run_duration_seconds",
                "How long the last successful GC pass took",
                value=figures.last_run_seconds,
            )


def metrics_text(figures: GcFigures) -> bytes:
    return render(FiguresCollector(figures))


def write_metrics_file(path: Path, figures: GcFigures) -> None:
    write_textfile(path, FiguresCollector(figures))


def format_status(figures: GcFigures) -> str:
    lines = [
        f"rows: {figures.rows}",
        f"archive: {figures.archived_rows} rows"
        + (
            f", {figures.pending_points} with points still to remove"
            if figures.pending_points
            else ""
        ),
        f"storage: {figures.storage_bytes} bytes (PostgreSQL {figures.postgres_bytes},"
        f" Qdrant {figures.qdrant_bytes})",
        "removed in total: "
        + ", ".join(f"{reason} {count}" for reason, count in figures.deleted.items()),
        "",
        "recent runs:",
    ]
    if not figures.runs:
        lines.append("  none yet")
    for run in figures.runs:
        counts = run["counts"]
        removed = ", ".join(f"{r} {counts.get(r, 0)}" for r in REASONS)
        extra = f" error: {run['error'][:200]}" if run["error"] else ""
        lines.append(
            f"  run {run['id']}  {run['started_at'][:19]}  {run['status']:<11}  {removed},"
            f" orphan points {counts.get('orphan_points', 0)},"
            f" re-embedded {counts.get('reembedded', 0)}{extra}"
        )
    return "\n".join(lines)
