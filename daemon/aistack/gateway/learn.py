"""`POST /hybrid/learn`: store a solved issue, or fold it into a near-copy already stored.

The row is inserted and its point written inside one PostgreSQL transaction, committed
only after Qdrant took the point: a failed Qdrant write rolls the row back (503), so no
row exists that search cannot find. A commit that fails after the point was written takes
the point back out; a crash in between leaves a point without a row, which the GC's
orphan sweep removes (and which a later learn finds with no row behind it, so it stores
its own).

"Is a near-copy stored?" and the insert run under a transaction-scoped advisory lock keyed
by the normalised query (NFKC, case folded, white space runs as one space): the learns of
one query, in any number of gateway processes sharing the database, take turns, and each
sees the point of the one before, so fifty identical learns at once store one row. Near
copies that are not the same text take different locks and can race each other into two
rows; the GC's nightly deduplication merges those. Inside one process the learns of one
query first take turns (`turns.QueryTurns`), so one connection per query, not one per
learn, waits for the lock. A learn that waits longer than LOCK_WAIT_MS, for its turn or
for the lock, is answered 503 with Retry-After, as a busy store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from aistack.gateway.answers import RETRY_AFTER_BUSY, error_answer, json_answer, problems_answer
from aistack.gateway.requests import LearnRequest, RequestRejected, normalise_text, parse_request
from aistack.gateway.schemas import LearnAnswer
from aistack.gateway.state import STATE, GatewayState
from aistack.gateway.steps import body_or_answer, dependency_down, embedded, log, screen
from aistack.gateway.turns import TurnNotReached
from aistack.stores import postgres
from aistack.stores.qdrant import QdrantUnavailable
from aistack.stores.schema import LEARN_LOCK_CLASS
from aistack.stores.solutions import COLLECTION, point_payload

# The longest a learn waits for a lock (its query's, or a row a GC batch holds), below the
# pool's command_timeout (10 s) so that PostgreSQL's own lock_timeout error, which says
# what happened, arrives before the client gives up on the statement.
LOCK_WAIT_MS = 5000


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
    vector = await embedded(state, request, item.query)
    if isinstance(vector, web.Response):
        return vector
    try:
        if not state.learn_collection_ready:
            await state.store.ensure_collection(COLLECTION, state.embedder.dimension)
            state.learn_collection_ready = True
        key = query_lock_key(item.query)
        async with state.learn_turns.turn(key, LOCK_WAIT_MS / 1000):
            learned = await store_solution(state, item, vector, key)
    except (asyncpg.LockNotAvailableError, TurnNotReached) as error:
        return lock_wait_exceeded(state, error)
    except QdrantUnavailable as error:
        return dependency_down(state, "qdrant", error)
    except postgres.CONNECTION_ERRORS as error:
        return dependency_down(state, "postgres", error)
    return json_answer(learned.as_json(), status=201)


def query_lock_key(query: str) -> int:
    """The second int4 of a query's advisory lock: a hash of its normalised text that is the
    same in every process (blake2b; Python's hash() is salted per process)."""
    text = normalise_text(query).strip().encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big", signed=True)


async def lock_query(connection: asyncpg.Connection, key: int) -> None:
    """Wait (at most LOCK_WAIT_MS) for this query's lock, held until the transaction ends."""
    # One round trip for both statements; the values put into the text are integers.
    await connection.execute(
        f"SET LOCAL lock_timeout = {LOCK_WAIT_MS};"
        f" SELECT pg_advisory_xact_lock({LEARN_LOCK_CLASS}, {key})"
    )


async def store_solution(
    state: GatewayState, item: LearnRequest, vector: list[float], key: int
) -> Learned:
    assert state.pool is not None and state.store is not None
    threshold = state.config.gc.deduplicate_similarity
    written: int | None = None  # the point this learn wrote, while its row is uncommitted
    try:
        async with postgres.acquire(state.pool) as connection, connection.transaction():
            await lock_query(connection, key)
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
            written = row["id"]
            return Learned(row["id"])
    except Exception:
        # The commit failed after Qdrant took the point: the point goes now, not at the
        # GC's next orphan sweep. If Qdrant fails this too, the sweep still removes it.
        if written is not None:
            await state.store.delete(COLLECTION, [written])
        raise


def lock_wait_exceeded(state: GatewayState, error: Exception) -> web.Response:
    state.metrics.dependency_down("learn_lock")
    log.warning("gateway.learn_lock_wait", error=str(error)[:300])
    return error_answer(
        503,
        f"solved_issues is busy: a lock was held past lock_timeout ({LOCK_WAIT_MS} ms) by "
        "another learn of the same query or a GC batch; retry later",
        [{"loc": "postgres", "type": "busy", "msg": "lock_timeout"}],
        {"Retry-After": str(RETRY_AFTER_BUSY)},
    )


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
