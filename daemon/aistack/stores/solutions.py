"""The learning store: table `solved_issues` in PostgreSQL (the source of truth) and the
Qdrant collection of the same name, one point per row (point id = row id, vector = the
embedding of `query`, payload `value_score` and `created_at`).

Shared by the gateway (which writes rows and reads them back) and the GC (which removes and
restores them).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import asyncpg
from asyncpg import Record

COLLECTION = "solved_issues"
COLUMNS = "id, query, solution, value_score, created_at"


def point_payload(value_score: float, created_at: datetime.datetime) -> dict[str, Any]:
    return {"value_score": value_score, "created_at": created_at.isoformat()}


def payload_created_at(payload: dict[str, Any]) -> datetime.datetime | None:
    """The row time a point carries, or None for a point without a readable one."""
    text = payload.get("created_at")
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)


# Reading the store back. Every order is a keyset: a page starts strictly after the last
# row of the one before, so pages stay stable while rows are added and removed. Each key
# is the leading columns of an index (solved_issues_value, solved_issues_recent), so a
# page is an index range scan wherever it starts.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "value": ("value_score", "created_at", "id"),  # the best first, then the newest
    "recent": ("created_at", "id"),  # the newest first
}


async def rows_by_id(connection: asyncpg.Connection, ids: Sequence[int]) -> dict[int, Record]:
    """The rows of `ids` that exist, in one round trip."""
    rows = await connection.fetch(
        f"SELECT {COLUMNS} FROM solved_issues WHERE id = ANY($1::bigint[])", list(ids)
    )
    return {row["id"]: row for row in rows}


async def row_by_id(connection: asyncpg.Connection, row_id: int) -> Record | None:
    return await connection.fetchrow(f"SELECT {COLUMNS} FROM solved_issues WHERE id = $1", row_id)


async def rows_in_order(
    connection: asyncpg.Connection, order: str, after: tuple[Any, ...] | None, limit: int
) -> list[Record]:
    """Up to `limit` rows in `order` (descending by its sort key), after the sort key
    `after` when given."""
    key = SORT_KEYS[order]
    columns = ", ".join(key)
    descending = ", ".join(f"{column} DESC" for column in key)
    if after is None:
        return await connection.fetch(
            f"SELECT {COLUMNS} FROM solved_issues ORDER BY {descending} LIMIT $1", limit
        )
    bounds = ", ".join(f"${number}" for number in range(1, len(key) + 1))
    return await connection.fetch(
        f"SELECT {COLUMNS} FROM solved_issues WHERE ({columns}) < ({bounds})"
        f" ORDER BY {descending} LIMIT ${len(key) + 1}",
        *after,
        limit,
    )


def sort_key(order: str, row: Record) -> tuple[Any, ...]:
    return tuple(row[column] for column in SORT_KEYS[order])


async def cursor_key(connection: asyncpg.Connection) -> bytes:
    """The key that signs listing cursors (schema migration 2 made it)."""
    key = await connection.fetchval("SELECT cursor_key FROM gateway_secrets")
    if not isinstance(key, bytes):
        raise LookupError("gateway_secrets holds no cursor key: run `aistack db migrate`")
    return key
