"""What the gateway's handlers share: one object under one AppKey, built by `create_app`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from qdrant_client import models

from aistack.config import Config
from aistack.embedding import Embedder
from aistack.gateway.access import AccessControl
from aistack.gateway.clientkey import ClientKeys
from aistack.gateway.embedqueue import EmbeddingQueue
from aistack.gateway.metrics import GatewayMetrics
from aistack.gateway.quota import QuotaPolicy
from aistack.gateway.ratelimit import RateLimiter
from aistack.gateway.requests import ContentRules, SearchParser, SolutionsQuery
from aistack.gateway.turns import QueryTurns
from aistack.stores.qdrant import VectorStore


class CollectionTotals:
    """Point counts per collection, refreshed at most every `ttl` seconds.

    Pagination reports `total` from here: counting a collection on every request would
    cost more than the search itself on a large Qdrant collection.
    """

    def __init__(self, store: VectorStore, ttl: float = 30.0) -> None:
        self._store = store
        self._ttl = ttl
        self._values: dict[str, tuple[int, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, collection: str) -> int:
        cached = self._values.get(collection)
        now = time.monotonic()
        if cached and now - cached[1] < self._ttl:
            return cached[0]
        lock = self._locks.setdefault(collection, asyncio.Lock())
        async with lock:
            cached = self._values.get(collection)
            if cached and time.monotonic() - cached[1] < self._ttl:
                return cached[0]
            value = await self._store.count(collection)
            self._values[collection] = (value, time.monotonic())
            return value

    async def selected(self, collection: str, query_filter: models.Filter) -> int:
        """The exact count of the points `query_filter` selects, counted for every request.

        Not cached: the key would be a filter the client chose (a cache a client can grow),
        created_at ranges that follow the clock rarely repeat, and a cached count goes stale
        as solutions are learned, where a filtered `total` must stay exact.
        """
        return await self._store.count(collection, query_filter)


@dataclass
class GatewayState:
    config: Config
    metrics: GatewayMetrics
    search_parser: SearchParser
    solutions_query: type[SolutionsQuery]
    rules: ContentRules
    learn_rules: ContentRules
    limiter: RateLimiter
    policy_header: str
    quota: QuotaPolicy
    collections: frozenset[str]
    client_keys: ClientKeys
    access: AccessControl | None
    openapi: dict[str, Any]
    embedding_queue: EmbeddingQueue
    embedder: Embedder | None = None
    store: VectorStore | None = None
    pool: asyncpg.Pool | None = None
    totals: CollectionTotals | None = None
    learn_collection_ready: bool = False
    cursor_key: bytes | None = None  # read from PostgreSQL on the first listing
    learn_turns: QueryTurns = field(default_factory=QueryTurns)


STATE = web.AppKey("aistack_state", GatewayState)
