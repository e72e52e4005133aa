"""An LRU cache of query embeddings: the same question asked twice is embedded once.

Bounded by bytes (`embedding.query_cache_bytes`), not by entries: a query may be 10,000
characters, and 4,096 entries held as Python lists of floats (about 12 KB a 384-float
vector, plus the text) could grow to 90 MB. Vectors are kept as C doubles (3 KB for 384
dimensions; doubles, not floats, so a remote embedder's values come back exactly), and
each entry is counted as its text, its vector and the bookkeeping of one LRU entry. The
gateway's one cache serves search and learn alike.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from aistack.embedding import Embedder

# One OrderedDict entry besides its key and value (measured with tracemalloc, CPython
# 3.11-3.13: about 100 bytes for the hash slot and the linked-list node), and the array
# object's header.
ENTRY_OVERHEAD = 100 + sys.getsizeof(array("d"))


def entry_bytes(text: str, dimension: int) -> int:
    return sys.getsizeof(text) + 8 * dimension + ENTRY_OVERHEAD


class CachedEmbedder:
    def __init__(self, backend: Embedder, max_bytes: int) -> None:
        self.backend = backend
        self.dimension = backend.dimension
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, array[float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def entries(self) -> int:
        # Not __len__: an embedder with an empty cache would be falsy.
        return len(self._entries)

    async def embed_query(self, text: str, client: str = "") -> list[float]:
        cached = self._entries.get(text)
        if cached is not None:
            self._entries.move_to_end(text)
            self.hits += 1
            return cached.tolist()
        self.misses += 1
        vector = await self.backend.embed_query(text, client)
        self._keep(text, vector)
        return vector

    def _keep(self, text: str, vector: list[float]) -> None:
        size = entry_bytes(text, len(vector))
        if size > self.max_bytes or text in self._entries:
            return  # larger than the whole cache; or a concurrent miss kept it already
        self._entries[text] = array("d", vector)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest, evicted = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(oldest, len(evicted))

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return await self.backend.embed_documents(texts)

    async def check(self) -> None:
        await self.backend.check()

    async def close(self) -> None:
        await self.backend.close()
