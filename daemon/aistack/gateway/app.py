"""`create_app(config)`: the gateway as an aiohttp application, for production and tests.

Resources (embedder, Qdrant, PostgreSQL pool, rate-limit storage) open and close in
`cleanup_ctx`. A caller that already holds an embedder or a vector store (the demo, the
tests) passes it in; the application then uses it and leaves closing it to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from aistack.config import Config, read_secret
from aistack.embedding import Embedder, open_embedder
from aistack.gateway import operational
from aistack.gateway.access import load_access
from aistack.gateway.bodies import defer_continue
from aistack.gateway.clientkey import ClientKeys
from aistack.gateway.embedqueue import EmbeddingQueue
from aistack.gateway.gate import OPERATIONAL, UNMATCHED, gated
from aistack.gateway.metrics import GatewayMetrics
from aistack.gateway.openapi import build_openapi
from aistack.gateway.quota import QuotaPolicy
from aistack.gateway.ratelimit import policy_header_value, rate_limiter, windows_from_config
from aistack.gateway.requests import ContentRules, SearchParser, solutions_query_model
from aistack.gateway.routes import KEYED_ENDPOINTS, ROUTES
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
    metrics = GatewayMetrics(registry or CollectorRegistry())
    state = GatewayState(
        config=config,
        metrics=metrics,
        search_parser=SearchParser(validation),
        rules=ContentRules(validation.deny_patterns, validation.deny_action),
        learn_rules=ContentRules(validation.learn_deny_patterns, validation.learn_deny_action),
        limiter=rate_limiter(
            windows,
            validation.rate_limit_redis_url,
            validation.rate_limit_max_clients,
            redis_password=(
                read_secret(validation.rate_limit_storage_password_file)
                if validation.rate_limit_storage_password_file
                else None
            ),
        ),
        policy_header=policy_header_value(windows),
        quota=QuotaPolicy(validation, metrics),
        collections=collections,
        client_keys=ClientKeys(config.gateway.trusted_networks, validation.ipv6_prefix),
        access=(
            load_access(config.gateway.api_keys_file, collections, KEYED_ENDPOINTS)
            if config.gateway.api_keys_file
            else None
        ),
        openapi=build_openapi(validation),
        solutions_query=solutions_query_model(validation),
        embedding_queue=EmbeddingQueue(
            config.embedding.max_queue_depth, config.embedding.max_queue_wait_seconds
        ),
        embedder=embedder,
        store=store,
    )
    # client_max_size is a backstop only: bodies are read by bodies.read_body, which
    # refuses earlier and without buffering.
    app = web.Application(client_max_size=config.gateway.max_body_bytes)
    app[STATE] = state
    app.cleanup_ctx.append(_resources)
    add_routes(app.router)
    return app


def add_routes(router: web.UrlDispatcher) -> None:
    """Every route of `routes.ROUTES`, its handler wrapped by `gate.gated` with its admission."""
    for route in ROUTES:
        # add_get, for a GET route, serves HEAD as well (as aiohttp does by default).
        add = router.add_get if route.method == "GET" else router.add_post
        add(
            route.path,
            gated(route.path, route.admission, route.handler),
            expect_handler=defer_continue,
        )
    # Last: what no route above serves, whatever its request target ("OPTIONS *" and
    # CONNECT's host:port included). Its handler answers 404, or 405 with Allow.
    unmatched = AnyTargetResource(operational.UNMATCHED_PATHS)
    router.register_resource(unmatched)
    unmatched.add_route(
        "*",
        gated(UNMATCHED, OPERATIONAL, operational.unmatched),
        expect_handler=defer_continue,
    )


class AnyTargetResource(web.DynamicResource):
    """A resource matching every request target. aiohttp's patterns only ever see
    origin-form paths ("/..."): "*" or "host:port" would get aiohttp's own text/plain 404,
    uncounted and without our fields. Indexed under "/", which every lookup reaches last."""

    def _match(self, path: str) -> dict[str, str] | None:
        return {"path": path}


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
