"""The steps the endpoints that take a body share: read it, screen its text, embed its
query; each gives the value, or the answer to send instead (counted and logged)."""

from __future__ import annotations

from aiohttp import web

from aistack.embedding import EmbedderBusy, EmbedderUnavailable
from aistack.gateway.answers import busy_answer, error_answer, too_large, unavailable_answer
from aistack.gateway.bodies import (
    BodyTooLarge,
    BodyTooSlow,
    BodyUndecodable,
    ClientGone,
    buffered_body,
    read_body,
)
from aistack.gateway.requests import ContentRules, Problem
from aistack.gateway.state import GatewayState
from aistack.observability.logs import EventLog

log = EventLog("gateway")
CLIENT_CLOSED_REQUEST = 499


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


def caller_collections(state: GatewayState, request: web.Request) -> frozenset[str]:
    """The collections this request may read: its API key's, or every served one."""
    # The gate has checked the key already; looking it up again costs one sha256 and
    # keeps per-request state out of the request object.
    grant = state.access.grant_for(request.headers.get("Authorization")) if state.access else None
    return grant.collections if grant is not None else state.collections


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


async def embedded(
    state: GatewayState, request: web.Request, text: str
) -> list[float] | web.Response:
    """The query's vector, or the 503 to answer when the embedder is down or busy. The
    embedder is fair between the rate limiter's clients (the same key, worked out again:
    a few microseconds, where keeping it on the request needs aiohttp 3.14's RequestKey)."""
    assert state.embedder is not None
    client = state.client_keys.of(request.remote, request.headers)
    try:
        return await state.embedding_queue.embed_query(state.embedder, text, client)
    except EmbedderUnavailable as error:
        return dependency_down(state, "embedder", error)
    except EmbedderBusy as error:
        state.metrics.dependency_down("embedder_queue")
        log.info("gateway.embedder_busy", error=str(error))
        return busy_answer(str(error))


def dependency_down(state: GatewayState, name: str, error: Exception) -> web.Response:
    state.metrics.dependency_down(name)
    log.warning("gateway.dependency_unavailable", dependency=name, error=str(error)[:300])
    return unavailable_answer(name)
