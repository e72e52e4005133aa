"""A learning store for one test: a fresh, migrated database on the private PostgreSQL
server, a Qdrant local-mode store of its own, the real model."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path
from typing import Any

import asyncpg

from aistack.config import Config, validate_config
from aistack.embedding import Embedder
from aistack.gc.job import RunResult, run_gc
from aistack.stores.private_postgres import PrivatePostgres
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import migrate
from aistack.stores.solutions import COLLECTION, point_payload

_numbers = itertools.count()
NOW = datetime.datetime.now(datetime.UTC)


def days_ago(days: float) -> datetime.datetime:
    return NOW - datetime.timedelta(days=days)


class LearningStore:
    def __init__(self, tmp_path: Path, server: PrivatePostgres, embedder: Embedder) -> None:
        self.tmp_path = tmp_path
        self.dsn = server.create_database(f"learning_{next(_numbers)}")
        self.embedder = embedder
        self.qdrant_path = tmp_path / "qdrant"
        self.store: VectorStore | None = None
        self.db: asyncpg.Connection | None = None

    def config(self, **gc: Any) -> Config:
        return validate_config(
            {
                "qdrant": {"path": str(self.qdrant_path)},
                "postgres": {"dsn": self.dsn},
                "gc": gc,
            }
        )

    def config_file(self, **gc: Any) -> Path:
        path = self.tmp_path / "aistack.json"
        data = self.config(**gc).model_dump(mode="json")
        path.write_text(json.dumps(data))
        return path

    async def open(self, *, migrated: bool = True) -> LearningStore:
        self.db = await asyncpg.connect(self.dsn)
        if migrated:
            await migrate(self.db)
        self.open_store()
        return self

    def open_store(self) -> VectorStore:
        self.store = VectorStore.connect(self.config().qdrant)
        return self.store

    async def close_store(self) -> None:
        """Local mode admits one process: close before an `aistack` subprocess uses it."""
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def close(self) -> None:
        await self.close_store()
        if self.db is not None:
            await self.db.close()

    async def add(
        self,
        query: str,
        score: float,
        age_days: float = 0.0,
        solution: str = "a solution",
        with_point: bool = True,
    ) -> int:
        """A row as an older store holds it (bypassing the gateway's write-time merge)."""
        assert self.db is not None and self.store is not None
        created = days_ago(age_days)
        row_id: int = await self.db.fetchval(
            "INSERT INTO solved_issues (query, solution, value_score, created_at)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            query,
            solution,
            score,
            created,
        )
        if with_point:
            await self.store.ensure_collection(COLLECTION, self.embedder.dimension)
            vector = await self.embedder.embed_query(query)
            await self.store.upsert(COLLECTION, [row_id], [vector], [point_payload(score, created)])
        return row_id

    async def add_point(self, point_id: int, query: str, age_days: float) -> None:
        """A point with no row behind it."""
        assert self.store is not None
        await self.store.ensure_collection(COLLECTION, self.embedder.dimension)
        vector = await self.embedder.embed_query(query)
        await self.store.upsert(
            COLLECTION, [point_id], [vector], [point_payload(0.5, days_ago(age_days))]
        )

    async def run(self, dry_run: bool = False, full_scan: bool = False, **gc: Any) -> RunResult:
        assert self.store is not None
        return await run_gc(
            self.config(**gc),
            self.store,
            self.embedder,
            dry_run=dry_run,
            full_scan=full_scan,
            progress=None,
        )

    async def row_ids(self) -> list[int]:
        assert self.db is not None
        return [r["id"] for r in await self.db.fetch("SELECT id FROM solved_issues ORDER BY id")]

    async def rows(self) -> dict[int, tuple[str, float]]:
        assert self.db is not None
        records = await self.db.fetch("SELECT id, query, value_score FROM solved_issues")
        return {r["id"]: (r["query"], r["value_score"]) for r in records}

    async def archived(self) -> dict[str, list[int]]:
        assert self.db is not None
        records = await self.db.fetch(
            "SELECT id, reason FROM solved_issues_archive, unnest(ids) AS id ORDER BY id"
        )
        found: dict[str, list[int]] = {"expired": [], "pruned": [], "duplicate": []}
        for record in records:
            found[record["reason"]].append(record["id"])
        return found

    async def point_ids(self) -> list[int | str]:
        assert self.store is not None
        ids: list[int | str] = []
        async for page in self.store.scroll(COLLECTION, with_vectors=False):
            ids.extend(point.id for point in page)
        return sorted(ids, key=str)
