"""An LRU cache of query embeddings: the same question asked twice is embedded once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from aistack.embedding import Embedder


class CachedEmbedder:
    def __init__(self, backend: Embedder, size: int) -> None:
        self.backend = backend
        self.dimension = backend.dimension
        self._size = size
        self._entries: OrderedDict[str, list[float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def embed_query(self, text: str) -> list[float]:
        vector = self._entries.get(text)
        if vector is not None:
            self._entries.move_to_end(text)
            self.hits += 1
            return vector
        self.misses += 1
        vector = await self.backend.embed_query(text)
        self._entries[text] = vector
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return vector

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return await self.backend.embed_documents(texts)

    async def check(self) -> None:
        await self.backend.check()

    async def close(self) -> None:
        await self.backend.close()
