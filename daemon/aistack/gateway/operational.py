"""The operational endpoints: liveness, readiness, metrics, this API's document, ACME
HTTP-01 tokens, and the answer for every path no route serves."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aistack.embedding import EmbedderUnavailable
from aistack.gateway.answers import RETRY_AFTER_UNAVAILABLE, error_answer, json_answer
from aistack.gateway.schemas import ReadyAnswer, StatusAnswer
from aistack.gateway.state import STATE, GatewayState
from aistack.stores import postgres
from aistack.stores.qdrant import QdrantUnavailable

ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # fullmatch: `$` matches before a final newline
UNMATCHED_PATHS = "/{path:.*}"
READY_TIMEOUT_SECONDS = 3.0


async def healthz(request: web.Request) -> web.Response:
    answer: StatusAnswer = {"status": "ok"}
    return json_answer(answer)


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    checks = {
        "postgres": _check_postgres(state),
        "qdrant": _check(state.store.check() if state.store else None),
        "embedder": _check(None if state.embedder is None else state.embedder.check()),
    }
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    down = [name for name, problem in results.items() if problem is not None]
    if not down:
        ready: ReadyAnswer = {"status": "ready", "checks": dict.fromkeys(results, "ok")}
        return json_answer(ready)
    return error_answer(
        503,
        "not ready: " + "; ".join(f"{name}: {results[name]}" for name in down),
        [{"loc": name, "type": "unavailable", "msg": str(results[name])} for name in down],
        {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
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
