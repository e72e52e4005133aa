"""Reading the learning store back: `GET /hybrid/solutions/{id}`, `GET /hybrid/solutions`,
and the rows behind a search of `solved_issues` (`read_back`).

PostgreSQL is the source of truth: what is answered is the row as it is now, never a
copy in a point's payload. Reading needs `solved_issues` among the caller's collections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from asyncpg import Record

from aistack.gateway import cursor
from aistack.gateway.answers import error_answer, json_answer, problems_answer
from aistack.gateway.requests import Problem, validate_query
from aistack.gateway.schemas import SearchHit, SolutionsPage, StoredSolution
from aistack.gateway.state import STATE, GatewayState
from aistack.gateway.steps import caller_collections, dependency_down
from aistack.stores import postgres, solutions
from aistack.stores.qdrant import Hit

T = TypeVar("T")
MAX_ROW_ID = 2**63 - 1
BAD_ID = Problem("id", "wrong_type", f"must be an integer from 1 to {MAX_ROW_ID}", "wrong_type")


async def solution(request: web.Request) -> web.Response:
    """One stored solution. The 404 is the same bytes whether the row never existed or the
    GC removed it: the answer tells nothing of the store's history."""
    state = request.app[STATE]
    refused = refuse_unreadable(state, request)
    if refused is not None:
        return refused
    row_id = parse_row_id(request.match_info["id"])
    if row_id is None:
        state.metrics.rejected(BAD_ID.reason)
        return problems_answer([BAD_ID])
    row = await on_postgres(state, lambda connection: solutions.row_by_id(connection, row_id))
    if isinstance(row, web.Response):
        return row
    if row is None:
        return error_answer(
            404,
            "no stored solution has this id",
            [{"loc": "id", "type": "not_found", "msg": "no stored solution has this id"}],
        )
    return json_answer(stored_solution(row))


async def listing(request: web.Request) -> web.Response:
    """One page of stored solutions, in `order`, after `cursor`."""
    state = request.app[STATE]
    refused = refuse_unreadable(state, request)
    if refused is not None:
        return refused
    query = validate_query(state.solutions_query, list(request.query.items()))
    if isinstance(query, list):
        for problem in query:
            state.metrics.rejected(problem.reason)
        return problems_answer(query)

    async def page(connection: asyncpg.Connection) -> web.Response:
        key = await signing_key(state, connection)
        try:
            after = cursor.decode(key, query.order, query.cursor) if query.cursor else None
        except cursor.CursorRefused as refusal:
            state.metrics.rejected("invalid_cursor")
            return problems_answer(
                [Problem("cursor", "invalid_cursor", str(refusal), "invalid_cursor")]
            )
        # One more than asked for: `next` is then exact at the last page.
        rows = await solutions.rows_in_order(connection, query.order, after, query.limit + 1)
        last = rows[query.limit - 1] if len(rows) > query.limit else None
        answer: SolutionsPage = {
            "results": [stored_solution(row) for row in rows[: query.limit]],
            "next": None
            if last is None
            else cursor.encode(key, query.order, solutions.sort_key(query.order, last)),
        }
        return json_answer(answer)

    return await on_postgres(state, page)


async def read_back(state: GatewayState, hits: Sequence[Hit]) -> list[SearchHit] | web.Response:
    """The search hits with their rows as payload, read for the whole page in one round
    trip; a hit whose row is gone (removed between the two reads) is left out."""
    ids = [hit.id for hit in hits if isinstance(hit.id, int)]
    if not ids:
        return []
    rows = await on_postgres(state, lambda connection: solutions.rows_by_id(connection, ids))
    if isinstance(rows, web.Response):
        return rows
    return [
        {"id": hit.id, "score": hit.score, "payload": stored_fields(rows[hit.id])}
        for hit in hits
        if hit.id in rows
    ]


async def on_postgres(
    state: GatewayState, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T | web.Response:
    """`work`'s result on a pooled connection, or the 503 to answer when PostgreSQL is down."""
    if state.pool is None:
        return dependency_down(state, "postgres", RuntimeError("no pool"))
    try:
        async with postgres.acquire(state.pool) as connection:
            return await work(connection)
    except postgres.CONNECTION_ERRORS as error:
        return dependency_down(state, "postgres", error)


def refuse_unreadable(state: GatewayState, request: web.Request) -> web.Response | None:
    if solutions.COLLECTION in caller_collections(state, request):
        return None
    return error_answer(
        403,
        f"this caller may not read {solutions.COLLECTION}",
        [{"loc": "authorization", "type": "forbidden", "msg": solutions.COLLECTION}],
    )


def parse_row_id(text: str) -> int | None:
    # isdecimal and isascii: int() would also take "+1", " 1", "1_0" and Arabic-Indic digits.
    if not (text.isascii() and text.isdecimal()) or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


async def signing_key(state: GatewayState, connection: asyncpg.Connection) -> bytes:
    if state.cursor_key is None:
        state.cursor_key = await solutions.cursor_key(connection)
    return state.cursor_key


def stored_solution(row: Record) -> StoredSolution:
    return {
        "id": row["id"],
        "query": row["query"],
        "solution": row["solution"],
        "value_score": row["value_score"],
        "created_at": row["created_at"].isoformat(),
    }


def stored_fields(row: Record) -> dict[str, Any]:
    """The row without its id: a search hit's payload."""
    return {
        "query": row["query"],
        "solution": row["solution"],
        "value_score": row["value_score"],
        "created_at": row["created_at"].isoformat(),
    }
