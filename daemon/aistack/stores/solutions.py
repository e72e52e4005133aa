"""The learning store: table `solved_issues` in PostgreSQL (the source of truth) and the
Qdrant collection of the same name, one point per row (point id = row id, vector = the
embedding of `query`, payload `value_score` and `created_at`).

Shared by the gateway (which writes rows) and the GC (which removes and restores them).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from aistack.config import PostgresConfig, read_secret

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


@asynccontextmanager
async def connection(
    config: PostgresConfig, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0
) -> AsyncIterator[asyncpg.Connection]:
    """One dedicated connection (batch jobs hold advisory locks, which live on one)."""
    password = read_secret(config.password_file) if config.password_file else None
    settings = {"application_name": "aistack"}
    if statement_timeout_ms:
        settings["statement_timeout"] = str(statement_timeout_ms)
    if lock_timeout_ms:
        settings["lock_timeout"] = str(lock_timeout_ms)
    connection = await asyncpg.connect(
        config.dsn, password=password, server_settings=settings, timeout=10
    )
    try:
        yield connection
    finally:
        await connection.close()
