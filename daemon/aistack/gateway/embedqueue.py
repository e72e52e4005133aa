"""Admission to the one embedding thread: a bounded queue, and a bounded wait in it.

The local model embeds one query at a time, so queries queue; without a bound, a crowd
of long queries (each within its quota) makes every other search wait seconds. Past
`embedding.max_queue_depth` queries waiting, or `embedding.max_queue_wait_seconds` in the
queue, a search or a learned solution is answered 503 with Retry-After instead: the
client retries later, and queries that are answered are answered promptly.
"""

from __future__ import annotations

import asyncio

from aistack.embedding import Embedder


class EmbedderBusy(Exception):
    """The queue is full, or the query waited too long in it."""


class EmbeddingQueue:
    def __init__(self, depth: int, wait_seconds: float) -> None:
        self.depth = depth
        self.wait_seconds = wait_seconds
        self.waiting = 0

    async def embed_query(self, embedder: Embedder, text: str) -> list[float]:
        if self.waiting >= self.depth:
            raise EmbedderBusy(f"{self.waiting} queries are waiting for the embedder")
        self.waiting += 1
        try:
            # A query not yet started is taken off the executor's queue when its wait
            # ends; one already running finishes, and its result is dropped.
            async with asyncio.timeout(self.wait_seconds):
                return await embedder.embed_query(text)
        except TimeoutError:
            raise EmbedderBusy(f"no embedding within {self.wait_seconds:g} s") from None
        finally:
            self.waiting -= 1
