"""`POST /hybrid/learn`: store a solved issue, or fold it into a near-copy already stored.

The row is inserted and its point written inside one PostgreSQL transaction, committed
only after Qdrant took the point: a failed Qdrant write rolls the row back (503), so no
row exists that search cannot find. A crash after the point and before the commit leaves
a point without a row, which the GC's orphan sweep removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from aistack.gateway.answers import json_answer, problems_answer
from aistack.gateway.requests import LearnRequest, RequestRejected, parse_request
from aistack.gateway.schemas import LearnAnswer
from aistack.gateway.state import STATE, GatewayState
from aistack.gateway.steps import body_or_answer, dependency_down, embedded, screen
from aistack.stores import postgres
from aistack.stores.qdrant import QdrantUnavailable
from aistack.stores.solutions import COLLECTION, point_payload


@dataclass(frozen=True, slots=True)
class Learned:
    id: int
    merged_into: int | None = None

    def as_json(self) -> LearnAnswer:
        answer: LearnAnswer = {"id": self.id}
        if self.merged_into is not None:
            answer["merged_into"] = self.merged_into
        return answer


async def learn(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await body_or_answer(state, request)
    if isinstance(body, web.Response):
        return body
    try:
        item = parse_request(LearnRequest, body)
    except RequestRejected as rejected:
        for problem in rejected.problems:
            state.metrics.rejected(problem.reason)
        return problems_answer(rejected.problems)
    denied = screen(
        state,
        state.learn_rules,
        "/hybrid/learn",
        COLLECTION,
        {"query": item.query, "solution": item.solution},
    )
    if denied:
        return problems_answer(denied)
    state.metrics.query_size.observe(len(item.query.encode()))

    assert state.embedder is not None and state.store is not None
    if state.pool is None:
        return dependency_down(state, "postgres", RuntimeError("no pool"))
    vector = await embedded(state, item.query)
    if isinstance(vector, web.Response):
        return vector
    try:
        if not state.learn_collection_ready:
            await state.store.ensure_collection(COLLECTION, state.embedder.dimension)
            state.learn_collection_ready = True
        learned = await store_solution(state, item, vector)
    except QdrantUnavailable as error:
        return dependency_down(state, "qdrant", error)
    except postgres.CONNECTION_ERRORS as error:
        return dependency_down(state, "postgres", error)
    return json_answer(learned.as_json(), status=201)


async def store_solution(state: GatewayState, item: LearnRequest, vector: list[float]) -> Learned:
    assert state.pool is not None and state.store is not None
    threshold = state.config.gc.deduplicate_similarity
    async with postgres.acquire(state.pool) as connection, connection.transaction():
        similar = await state.store.nearest(COLLECTION, vector, threshold)
        if similar is not None and isinstance(similar.id, int):
            merged = await merge_into(state, connection, similar.id, item)
            if merged is not None:
                return merged
        row = await connection.fetchrow(
            "INSERT INTO solved_issues (query, solution, value_score) VALUES ($1, $2, $3)"
            " RETURNING id, created_at",
            item.query,
            item.solution,
            item.value_score,
        )
        await state.store.upsert(
            COLLECTION,
            [row["id"]],
            [vector],
            [point_payload(item.value_score, row["created_at"])],
        )
        return Learned(row["id"])


async def merge_into(
    state: GatewayState, connection: asyncpg.Connection, row_id: int, item: LearnRequest
) -> Learned | None:
    """Keep the better of the stored near-copy and the new solution; None when the point
    had no row (an orphan the GC has not swept yet): then the new one is stored."""
    assert state.store is not None
    stored = await connection.fetchrow(
        "SELECT value_score, created_at FROM solved_issues WHERE id = $1 FOR UPDATE", row_id
    )
    if stored is None:
        return None
    if item.value_score > stored["value_score"]:
        await connection.execute(
            "UPDATE solved_issues SET solution = $2, value_score = $3 WHERE id = $1",
            row_id,
            item.solution,
            item.value_score,
        )
        await state.store.set_payload(
            COLLECTION, row_id, point_payload(item.value_score, stored["created_at"])
        )
    return Learned(row_id, merged_into=row_id)
