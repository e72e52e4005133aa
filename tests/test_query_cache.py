"""The cache of query embeddings, over the real model: bounded by bytes, least recently
used first out, honest about its size, and shared by search and learn."""

from __future__ import annotations

import gc
import tracemalloc

from aiohttp import ClientSession

from aistack.embedding.cache import CachedEmbedder, entry_bytes


def texts(count: int) -> list[str]:
    # Lengths from a few characters to 3,000: the cache counts the text as well.
    return [f"question {number} " + "words " * (number * 97 % 600) for number in range(count)]


async def test_the_cache_holds_at_most_its_bytes_the_least_recent_out_first(embedder):
    limit = 150_000
    cache = CachedEmbedder(embedder.backend, limit)
    questions = texts(60)
    for text in questions:
        await cache.embed_query(text)
        assert cache.bytes <= limit
    assert 0 < cache.entries < len(questions)
    assert cache.bytes == sum(
        entry_bytes(text, embedder.dimension) for text in questions[-cache.entries :]
    )
    misses = cache.misses
    newest = await cache.embed_query(questions[-1])
    assert cache.misses == misses and cache.hits == 1
    assert newest == await embedder.backend.embed_query(questions[-1])  # exactly the vector
    await cache.embed_query(questions[0])
    assert cache.misses == misses + 1


async def test_an_entry_larger_than_the_cache_is_not_kept_and_zero_turns_it_off(embedder):
    small = CachedEmbedder(embedder.backend, entry_bytes("short", embedder.dimension))
    await small.embed_query("short")
    assert small.entries == 1
    await small.embed_query("a longer question than the cache can hold")
    assert small.entries == 1 and small.bytes <= small.max_bytes
    off = CachedEmbedder(embedder.backend, 0)
    await off.embed_query("short")
    await off.embed_query("short")
    assert (off.entries, off.hits, off.misses) == (0, 0, 2)


async def test_the_counted_bytes_are_the_memory_the_entries_hold(embedder):
    vector = await embedder.backend.embed_query("one vector for every entry")
    cache = CachedEmbedder(embedder.backend, 10**9)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts(2000):  # made here, so the texts the cache keeps are traced
            cache._keep(text, vector)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.entries == 2000
    assert 0.85 * cache.bytes <= held <= 1.15 * cache.bytes, (held, cache.bytes)


async def test_search_and_learn_share_one_cache(gateway, learning, embedder):
    server = await gateway(store=learning.store, postgres={"dsn": learning.dsn})
    query = "How do I make the boot menu wait longer?"
    misses = embedder.misses
    async with ClientSession() as session:
        learned = {"query": query, "solution": "boot.loader.timeout = 10;", "value_score": 0.8}
        async with session.post(server.make_url("/hybrid/learn"), json=learned) as response:
            assert response.status == 201
        search = {"collection": "solved_issues", "query": query}
        async with session.post(server.make_url("/vector/search"), json=search) as response:
            assert response.status == 200
    assert embedder.misses == misses + 1
