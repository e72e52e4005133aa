"""`create_app(config)`: the gateway as an aiohttp application, for production and tests.

Resources (embedder, Qdrant, PostgreSQL pool, rate-limit storage) open and close in
`cleanup_ctx`. A caller that already holds an embedder or a vector store (the demo, the
tests) passes it in; the application then uses it and leaves closing it to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from aistack.config import Config
from aistack.embedding import Embedder, open_embedder
from aistack.gateway import handlers, learn
from aistack.gateway.access import load_access
from aistack.gateway.bodies import defer_continue
from aistack.gateway.metrics import GatewayMetrics
from aistack.gateway.middleware import gate
from aistack.gateway.openapi import build_openapi
from aistack.gateway.ratelimit import (
    create_rate_limiter,
    policy_header_value,
    windows_from_config,
)
from aistack.gateway.requests import ContentRules, SearchParser, search_request_model
from aistack.gateway.state import STATE, CollectionTotals, GatewayState
from aistack.stores import postgres
from aistack.stores.qdrant import VectorStore


def create_app(
    config: Config,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    validation = config.validation
    collections = frozenset(validation.collections)
    windows = windows_from_config(validation.rate_windows())
    state = GatewayState(
        config=config,
        metrics=GatewayMetrics(registry or CollectorRegistry()),
        search_parser=SearchParser(validation),
        rules=ContentRules(validation),
        limiter=create_rate_limiter(
            windows, validation.rate_limit_storage, validation.rate_limit_max_clients
        ),
        policy_header=policy_header_value(windows),
        collections=collections,
        trusted=config.gateway.trusted_networks(),
        access=(
            load_access(config.gateway.api_keys_file, collections)
            if config.gateway.api_keys_file
            else None
        ),
        openapi=build_openapi(search_request_model(validation)),
        embedder=embedder,
        store=store,
    )
    # client_max_size is a backstop only: bodies are read by bodies.read_body, which
    # refuses earlier and without buffering.
    app = web.Application(middlewares=[gate], client_max_size=config.gateway.max_body_bytes)
    app[STATE] = state
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/vector/search", handlers.search, expect_handler=defer_continue)
    app.router.add_post("/hybrid/learn", learn.learn, expect_handler=defer_continue)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_get("/.well-known/acme-challenge/{token}", handlers.acme_challenge)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    own_embedder = state.embedder is None
    own_store = state.store is None
    if own_embedder:
        state.embedder = await open_embedder(state.config.embedding)
    if state.store is None:
        state.store = VectorStore.connect(state.config.qdrant)
    state.totals = CollectionTotals(state.store)
    state.pool = await postgres.open_pool(state.config.postgres)
    try:
        await postgres.refuse_wrong_schema(state.pool)
    except BaseException:
        await state.pool.close()
        raise
    try:
        yield
    finally:
        await state.pool.close()
        await state.limiter.close()
        if own_store and state.store is not None:
            await state.store.close()
        if own_embedder and state.embedder is not None:
            await state.embedder.close()
