"""Admission to the embedder: a bounded queue, a bounded wait in it, fair when full.

The embedder (embedding/scheduler.py) batches and fair-queues what it is given, but
without a bound a crowd of long queries, each within its quota, makes every search wait
seconds. Past `embedding.max_queue_depth` queries waiting, or
`embedding.max_queue_wait_seconds` for one, a search or a learned solution is answered
503 with Retry-After instead: the client retries later, and queries that are answered are
answered promptly.

When the queue is full, the client holding the most waiting queries loses its newest one
to a client holding at least two fewer ("longest queue drop"): a flood fills the queue
with its own queries and is refused its own, and a newcomer's query still gets in.
"""

from __future__ import annotations

import asyncio

from aistack.embedding import Embedder, EmbedderBusy


class EmbeddingQueue:
    def __init__(self, depth: int, wait_seconds: float) -> None:
        self.depth = depth
        self.wait_seconds = wait_seconds
        self._held: dict[str, list[asyncio.Future[list[float]]]] = {}
        self._evicted: set[asyncio.Future[list[float]]] = set()

    @property
    def waiting(self) -> int:
        return sum(map(len, self._held.values()))  # at most `depth` + 1 clients

    async def embed_query(self, embedder: Embedder, text: str, client: str) -> list[float]:
        if self.waiting >= self.depth:
            self._make_room_for(client)
        query = asyncio.ensure_future(embedder.embed_query(text, client))
        self._held.setdefault(client, []).append(query)
        try:
            # A query not yet in a batch is taken out of the embedder's queue when its
            # wait ends; one already in a batch finishes, and its result is dropped.
            async with asyncio.timeout(self.wait_seconds):
                return await query
        except TimeoutError:
            raise EmbedderBusy(f"no embedding within {self.wait_seconds:g} s") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if query not in self._evicted or (current is not None and current.cancelling()):
                raise
            raise EmbedderBusy(f"{self.depth} queries are waiting for the embedder") from None
        finally:
            query.cancel()
            if query in self._evicted:
                self._evicted.discard(query)  # _make_room_for let go of it already
            else:
                self._let_go(client, query)

    def _let_go(self, client: str, query: asyncio.Future[list[float]]) -> None:
        held = self._held[client]
        held.remove(query)
        if not held:
            del self._held[client]

    def _make_room_for(self, client: str) -> None:
        heaviest = max(self._held, key=lambda key: len(self._held[key]))
        if len(self._held[heaviest]) < len(self._held.get(client, ())) + 2:
            raise EmbedderBusy(f"{self.waiting} queries are waiting for the embedder")
        newest = self._held[heaviest][-1]
        self._let_go(heaviest, newest)
        self._evicted.add(newest)
        newest.cancel()
