"""The learning store: table `solved_issues` in PostgreSQL (the source of truth) and the
Qdrant collection of the same name, one point per row (point id = row id, vector = the
embedding of `query`, payload `value_score` and `created_at`).

Shared by the gateway (which writes rows) and the GC (which removes and restores them).
"""

from __future__ import annotations

import datetime
from typing import Any

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
