"""`POST /vector/search`: semantic search in one collection, one page at a time.

`total` comes from a cached count per collection (see `state.CollectionTotals`), or for a
filtered search (`filters`) from an exact count of what the filter selects, corrected by
what the page itself proves (in local mode, counted only where the page proves nothing);
`has_more` is exact, from asking for one hit more.
A search of `solved_issues` answers with the stored rows, read back from PostgreSQL
(`solutions.read_back`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from aistack.gateway import solutions
from aistack.gateway.answers import json_answer, problems_answer
from aistack.gateway.filters import qdrant_filter
from aistack.gateway.requests import SearchRequest
from aistack.gateway.schemas import SearchAnswer, SearchHit
from aistack.gateway.state import STATE, GatewayState
from aistack.gateway.steps import (
    body_or_answer,
    caller_collections,
    dependency_down,
    embedded,
    screen,
)
from aistack.stores.qdrant import Hit, QdrantUnavailable
from aistack.stores.solutions import COLLECTION


async def search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await body_or_answer(state, request)
    if isinstance(body, web.Response):
        return body
    query = state.search_parser.parse(body, caller_collections(state, request))
    if isinstance(query, list):
        for problem in query:
            state.metrics.rejected(problem.reason)
        return problems_answer(query)

    denied = screen(state, state.rules, "/vector/search", query.collection, {"query": query.query})
    if denied:
        return problems_answer(denied)
    state.metrics.query_size.observe(len(query.query.encode()))

    assert state.embedder is not None and state.store is not None and state.totals is not None
    vector = await embedded(state, request, query.query)
    if isinstance(vector, web.Response):
        return vector
    try:
        # One more than asked for: `has_more` is then exact at the last page, whatever
        # the cached total says.
        hits, total = await hits_and_total(state, query, vector)
    except QdrantUnavailable as error:
        return dependency_down(state, "qdrant", error)
    has_more = len(hits) > query.limit
    hits = hits[: query.limit]
    results: list[SearchHit] | web.Response
    if query.collection == COLLECTION:
        results = await solutions.read_back(state, hits)
        if isinstance(results, web.Response):
            return results
    else:
        results = [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits]
    answer: SearchAnswer = {
        "results": results,
        # From the vector hits, not the rows read back: a row removed between the two
        # reads leaves its page one short, not the pagination wrong.
        "total": page_total(total, query.offset, len(hits), has_more),
        "offset": query.offset,
        "limit": query.limit,
        "has_more": has_more,
    }
    return json_answer(answer)


async def hits_and_total(
    state: GatewayState, query: SearchRequest, vector: list[float]
) -> tuple[list[Hit], int]:
    """One hit more than the page, and the collection's count: cached for a plain search,
    exact (`CollectionTotals.selected`) for a filtered one, unless the page proves it."""
    assert state.store is not None and state.totals is not None
    if query.filter is None:
        hits = await state.store.search(query.collection, vector, query.limit + 1, query.offset)
        return hits, await state.totals.get(query.collection)
    selected = qdrant_filter(query.filter)
    search = state.store.search(query.collection, vector, query.limit + 1, query.offset, selected)
    if not state.store.local:
        return await asyncio.gather(search, state.totals.selected(query.collection, selected))
    # Local mode makes one call at a time, and its count is a Python pass over every point,
    # nearly the filtered search's own cost (86 ms of CPU beside 94 ms at 10k points, one
    # exact-match condition: bench/localmode.py): count only what the page cannot prove.
    hits = await search
    proven = proven_total(query.offset, len(hits), query.limit)
    if proven is not None:
        return hits, proven
    return hits, await state.totals.selected(query.collection, selected)


def proven_total(offset: int, found: int, limit: int) -> int | None:
    """The total a page proves alone, from the `found` of the `limit + 1` hits it asked for
    at `offset`: the subset ends within it. None when only a count can tell (more hits
    follow, or nothing is left past `offset` and the subset may end before it)."""
    if found > limit or (found == 0 and offset > 0):
        return None
    return offset + found


def page_total(cached: int, offset: int, returned: int, has_more: bool) -> int:
    """The cached count, corrected by what this page proved: a page that ends short of
    `limit + 1` hits ends the collection; a page with more proves at least that many."""
    if has_more:
        return max(cached, offset + returned + 1)
    if returned:
        return offset + returned
    return min(cached, offset)
