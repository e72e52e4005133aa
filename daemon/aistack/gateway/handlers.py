"""The gateway's endpoints. Each one assumes `gate.gated` has admitted the request."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aistack.embedding import EmbedderUnavailable
from aistack.gateway.answers import (
    error_answer,
    json_answer,
    problems_answer,
    unavailable_answer,
)
from aistack.gateway.bodies import (
    BodyTooLarge,
    BodyTooSlow,
    BodyUndecodable,
    ClientGone,
    buffered_body,
    read_body,
)
from aistack.gateway.embedqueue import EmbedderBusy
from aistack.gateway.gate import too_large
from aistack.gateway.requests import ContentRules, Problem
from aistack.gateway.state import STATE, GatewayState
from aistack.observability.logs import EventLog
from aistack.stores import postgres
from aistack.stores.qdrant import QdrantUnavailable

log = EventLog("gateway")
ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # fullmatch: `$` matches before a final newline
UNMATCHED_PATHS = "/{path:.*}"
READY_TIMEOUT_SECONDS = 3.0
CLIENT_CLOSED_REQUEST = 499
RETRY_AFTER_BUSY = 1


async def body_or_answer(state: GatewayState, request: web.Request) -> bytes | web.Response:
    limit = state.config.gateway.max_body_bytes
    try:
        body = buffered_body(request, limit)
        return body if body is not None else await read_body(request, limit)
    except BodyTooLarge:
        state.metrics.rejected("body_too_large")
        return too_large(limit)
    except BodyTooSlow:
        state.metrics.rejected("body_too_slow")
        return error_answer(408, "body: not received within the deadline")
    except BodyUndecodable:
        state.metrics.rejected("undecodable_body")
        coding = request.headers.get("Content-Encoding", "")[:32]
        return error_answer(
            400,
            f"body: does not decode as its Content-Encoding {coding!r}",
            [{"loc": "content-encoding", "type": "undecodable", "msg": coding}],
        )
    except ClientGone:
        # Counted under its own status (nginx's 499, "client closed request"), apart from
        # our errors; nobody receives this answer.
        log.info("gateway.client_gone", endpoint=request.path)
        return error_answer(CLIENT_CLOSED_REQUEST, "client closed the connection mid-body")


async def search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await body_or_answer(state, request)
    if isinstance(body, web.Response):
        return body
    # gate() has checked the key already; looking it up again costs one sha256 and
    # keeps per-request state out of the request object.
    grant = state.access.grant_for(request.headers.get("Authorization")) if state.access else None
    allowed = grant.collections if grant is not None else state.collections
    query = state.search_parser.parse(body, allowed)
    if isinstance(query, list):
        for problem in query:
            state.metrics.rejected(problem.reason)
        return problems_answer(query)

    denied = screen(state, state.rules, "/vector/search", query.collection, {"query": query.query})
    if denied:
        return problems_answer(denied)
    state.metrics.query_size.observe(len(query.query.encode()))

    assert state.embedder is not None and state.store is not None and state.totals is not None
    vector = await embedded(state, query.query)
    if isinstance(vector, web.Response):
        return vector
    try:
        # One more than asked for: `has_more` is then exact at the last page, whatever
        # the cached total says.
        hits = await state.store.search(query.collection, vector, query.limit + 1, query.offset)
        total = await state.totals.get(query.collection)
    except QdrantUnavailable as error:
        return dependency_down(state, "qdrant", error)
    has_more = len(hits) > query.limit
    hits = hits[: query.limit]
    total = page_total(total, query.offset, len(hits), has_more)
    return json_answer(
        {
            "results": [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits],
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "has_more": has_more,
        }
    )


def screen(
    state: GatewayState,
    rules: ContentRules,
    endpoint: str,
    collection: str,
    fields: dict[str, str],
) -> list[Problem]:
    """Each field's first deny-pattern hit, counted and logged; the problems to answer 422
    with when the rules reject, none when they only log."""
    problems = []
    for field, text in fields.items():
        pattern = rules.first_match(text)
        if pattern is None:
            continue
        state.metrics.rejected("deny_pattern")
        log.warning(
            "gateway.deny_pattern",
            endpoint=endpoint,
            collection=collection,
            field=field,
            pattern=pattern,
            action="reject" if rules.reject else "log",
        )
        problems.append(rules.problem(field, pattern))
    return problems if rules.reject else []


def page_total(cached: int, offset: int, returned: int, has_more: bool) -> int:
    """The cached count, corrected by what this page proved: a page that ends short of
    `limit + 1` hits ends the collection; a page with more proves at least that many."""
    if has_more:
        return max(cached, offset + returned + 1)
    if returned:
        return offset + returned
    return min(cached, offset)


async def embedded(state: GatewayState, text: str) -> list[float] | web.Response:
    """The query's vector, or the 503 to answer when the embedder is down or busy."""
    assert state.embedder is not None
    try:
        return await state.embedding_queue.embed_query(state.embedder, text)
    except EmbedderUnavailable as error:
        return dependency_down(state, "embedder", error)
    except EmbedderBusy as error:
        state.metrics.dependency_down("embedder_queue")
        log.info("gateway.embedder_busy", error=str(error))
        return error_answer(
            503,
            f"the embedder is busy ({error}); retry later",
            [{"loc": "embedder", "type": "busy", "msg": "max_queue_depth, max_queue_wait_seconds"}],
            {"Retry-After": str(RETRY_AFTER_BUSY)},
        )


def dependency_down(state: GatewayState, name: str, error: Exception) -> web.Response:
    state.metrics.dependency_down(name)
    log.warning("gateway.dependency_unavailable", dependency=name, error=str(error)[:300])
    return unavailable_answer(name)


async def healthz(request: web.Request) -> web.Response:
    return json_answer({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    checks = {
        "postgres": _check_postgres(state),
        "qdrant": _check(state.store.check() if state.store else None),
        "embedder": _check(state.embedder.check() if state.embedder else None),
    }
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    down = [name for name, problem in results.items() if problem is not None]
    if not down:
        return json_answer({"status": "ready", "checks": dict.fromkeys(results, "ok")})
    return error_answer(
        503,
        "not ready: " + "; ".join(f"{name}: {results[name]}" for name in down),
        [{"loc": name, "type": "unavailable", "msg": str(results[name])} for name in down],
        {"Retry-After": "5"},
    )


async def _check_postgres(state: GatewayState) -> str | None:
    if state.pool is None:
        return "not configured"
    try:
        await postgres.check(state.pool, READY_TIMEOUT_SECONDS)
    except postgres.PostgresUnavailable as error:
        return f"unavailable ({str(error)[:200]})"
    return None


async def _check(probe: object) -> str | None:
    if probe is None:
        return "not configured"
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await probe  # type: ignore[misc]
    except (QdrantUnavailable, EmbedderUnavailable, TimeoutError, OSError) as error:
        return f"unavailable ({str(error)[:200] or error.__class__.__name__})"
    return None


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tracked = getattr(state.limiter, "tracked_clients", None)
    if tracked is not None:
        state.metrics.rate_limit_clients.set(tracked)
    body = generate_latest(state.metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    return json_answer(request.app[STATE].openapi)


async def acme_challenge(request: web.Request) -> web.Response:
    """HTTP-01 key authorizations from `gateway.acme_webroot`, as certbot-style webroots
    lay them out. The token is checked against the base64url alphabet before it touches
    the file system, so no path can escape the challenge directory."""
    state = request.app[STATE]
    token = request.match_info["token"]
    webroot = state.config.gateway.acme_webroot
    if not webroot or not ACME_TOKEN.fullmatch(token):
        raise web.HTTPNotFound()
    file = Path(webroot) / ".well-known" / "acme-challenge" / token
    try:
        content = await asyncio.to_thread(_read_small, file)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise web.HTTPNotFound() from None
    return web.Response(body=content, content_type="application/octet-stream")


def _read_small(file: Path) -> bytes:
    with file.open("rb") as handle:
        return handle.read(4096)


async def unmatched(request: web.Request) -> web.Response:
    """Every path the routes before the catch-all do not serve: 405 with the methods the
    path does take, or 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()
