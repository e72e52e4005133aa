"""The embedding scheduler: concurrent texts go to the real model together, in bounded
batches of one length class, fairly between clients; and the gateway's admission to it.

`Recording` is the real bundled model with each batch it is handed written down: the
vectors are the model's own, the record is what the tests read."""

from __future__ import annotations

import asyncio
import math
import os

import pytest
from aiohttp import ClientSession

from aistack.config import validate_config
from aistack.embedding import EmbedderBusy, EmbedderUnavailable
from aistack.embedding.cache import CachedEmbedder
from aistack.embedding.local import FastembedModel
from aistack.embedding.scheduler import BatchLimits, EmbeddingScheduler, length_class
from aistack.gateway.embedqueue import EmbeddingQueue

SHORT = "open the firewall for nginx"
LONG = " ".join(f"word{n} of a very long question about nixos modules" for n in range(60))
LIMITS = BatchLimits(size=32, tokens=512, wait_seconds=0)  # the defaults


class Recording:
    def __init__(self, model: FastembedModel) -> None:
        self.model = model
        self.dimension = model.dimension
        self.batches: list[list[str]] = []

    def tokens(self, text: str) -> int:
        return self.model.tokens(text)

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(list(texts))
        return self.model.embed_batch(texts)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the session's model stays loaded for the other tests


@pytest.fixture
def model(embedder: CachedEmbedder) -> Recording:
    scheduler = embedder.backend
    assert isinstance(scheduler, EmbeddingScheduler)
    assert isinstance(scheduler.model, FastembedModel)
    return Recording(scheduler.model)


def close_to(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a, b, strict=True))


async def test_concurrent_queries_are_embedded_together_with_the_same_vectors(model):
    scheduler = EmbeddingScheduler(model, 2, LIMITS)
    questions = [f"how do I enable service number {n} on nixos" for n in range(48)]
    try:
        vectors = await asyncio.gather(
            *(scheduler.embed_query(q, f"c{n}") for n, q in enumerate(questions))
        )
    finally:
        await scheduler.close()
    assert len(model.batches) <= 8, [len(b) for b in model.batches]
    assert sum(len(b) for b in model.batches) == len(questions)
    for question, vector in zip(questions, vectors, strict=True):
        assert close_to(vector, model.model.embed_batch([question])[0]), question


async def test_a_batch_holds_one_length_class_within_its_bounds(model):
    limits = BatchLimits(size=8, tokens=600, wait_seconds=0)
    scheduler = EmbeddingScheduler(model, 1, limits)
    texts = [SHORT + f" {n}" if n % 3 else LONG + f" {n}" for n in range(60)]
    try:
        await asyncio.gather(*(scheduler.embed_query(t, f"c{n % 5}") for n, t in enumerate(texts)))
    finally:
        await scheduler.close()
    assert sum(len(b) for b in model.batches) == len(texts)
    for batch in model.batches:
        tokens = [model.tokens(text) for text in batch]
        assert len({length_class(t) for t in tokens}) == 1, tokens
        assert len(batch) <= limits.size
        assert len(batch) == 1 or max(tokens) * len(batch) <= limits.tokens, tokens
    long_batches = [b for b in model.batches if model.tokens(b[0]) == 256]
    assert long_batches and max(len(b) for b in long_batches) == 2  # 2 x 256 <= 600


async def test_a_short_query_waits_about_one_batch_while_20_clients_flood_long_ones(model):
    threads = 2
    scheduler = EmbeddingScheduler(model, threads, LIMITS)
    stop = asyncio.Event()

    async def flood(client: int, lane: int) -> None:
        n = 0
        while not stop.is_set():
            await scheduler.embed_query(f"{LONG} {client}.{lane}.{n}", f"flood-{client}")
            n += 1

    flooders = [asyncio.create_task(flood(c, lane)) for c in range(20) for lane in range(2)]
    try:
        await asyncio.sleep(0.05)  # every lane has its first query in
        waits = []
        for n in range(8):
            ahead = scheduler.waiting
            started = len(model.batches)
            await scheduler.embed_query(f"{SHORT} {n}", "short")
            served = next(i for i, b in enumerate(model.batches) if f"{SHORT} {n}" in b)
            waits.append(served - started)
            # First come, first served would put it behind `ahead` long queries, two to a
            # batch: many batches, not at most one per worker.
            assert ahead >= 2 * (threads + 1), ahead
        print(f"batches started between a short query's arrival and its batch: {waits}")
        assert all(w <= threads for w in waits), waits
    finally:
        stop.set()
        await asyncio.gather(*flooders)
        await scheduler.close()


async def test_a_wait_for_company_gathers_queries_only_while_another_worker_is_busy(model):
    scheduler = EmbeddingScheduler(model, 2, BatchLimits(size=32, tokens=512, wait_seconds=5))
    try:
        # Idle: a lone query starts at once, not after the 5 s wait.
        await asyncio.wait_for(scheduler.embed_query(SHORT, "a"), 2.0)
        assert len(model.batches) == 1
        # One worker busy with a long text: the other waits for the short ones to gather.
        busy = asyncio.create_task(scheduler.embed_query(LONG, "a"))
        await asyncio.sleep(0.01)
        shorts = []
        for n in range(5):
            shorts.append(asyncio.create_task(scheduler.embed_query(f"{SHORT} {n}", "b")))
            await asyncio.sleep(0.005)
        await asyncio.gather(busy, *shorts)
    finally:
        await scheduler.close()
    short_batches = [b for b in model.batches[1:] if LONG not in b]
    assert len(short_batches) <= 2, short_batches


async def test_documents_come_back_in_their_order_from_several_batches(model):
    scheduler = EmbeddingScheduler(model, 2, BatchLimits(size=4, tokens=1024, wait_seconds=0))
    texts = [LONG[: 40 * (n % 7 + 1)] + f" {n}" for n in range(30)]
    try:
        vectors = await scheduler.embed_documents(texts)
    finally:
        await scheduler.close()
    assert len(model.batches) >= 8
    for text, vector in zip(texts, vectors, strict=True):
        assert close_to(vector, model.model.embed_batch([text])[0]), text


async def test_a_caller_that_gives_up_leaves_the_queue_and_the_model_never_sees_it(model):
    scheduler = EmbeddingScheduler(model, 1, BatchLimits(size=1, tokens=1024, wait_seconds=0))
    try:
        busy = [asyncio.create_task(scheduler.embed_query(f"{LONG} {n}", "a")) for n in range(6)]
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(scheduler.embed_query("given up", "b"), 0.01)
        assert scheduler.waiting <= 6
        await asyncio.gather(*busy)
        assert scheduler.waiting == 0
        assert not any("given up" in batch for batch in model.batches)
    finally:
        await scheduler.close()


async def test_closing_fails_what_still_waits_and_refuses_more(model):
    scheduler = EmbeddingScheduler(model, 1, BatchLimits(size=1, tokens=1024, wait_seconds=0))
    waiting = [asyncio.create_task(scheduler.embed_query(f"{LONG} {n}", "a")) for n in range(10)]
    await asyncio.sleep(0.05)
    await scheduler.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    failed = [r for r in results if isinstance(r, EmbedderUnavailable)]
    assert failed and all(isinstance(r, (list, EmbedderUnavailable)) for r in results)
    with pytest.raises(EmbedderUnavailable, match="shutting down"):
        await scheduler.embed_query(SHORT, "a")


async def test_a_full_queue_drops_the_flooders_newest_query_not_the_newcomers(model):
    scheduler = EmbeddingScheduler(model, 1, BatchLimits(size=1, tokens=1024, wait_seconds=0))
    embedder = CachedEmbedder(scheduler, 0)
    queue = EmbeddingQueue(depth=4, wait_seconds=30)
    try:
        flood = [
            asyncio.create_task(queue.embed_query(embedder, f"{LONG} {n}", "flooder"))
            for n in range(4)
        ]
        await asyncio.sleep(0)
        # The flooder's fifth is refused: it already holds the whole queue.
        with pytest.raises(EmbedderBusy, match="4 queries are waiting"):
            await queue.embed_query(embedder, f"{LONG} 5", "flooder")
        vector = await queue.embed_query(embedder, SHORT, "newcomer")
        assert len(vector) == embedder.dimension
        results = await asyncio.gather(*flood, return_exceptions=True)
        dropped = [r for r in results if isinstance(r, EmbedderBusy)]
        assert len(dropped) == 1 and isinstance(results[3], EmbedderBusy), results
        assert queue.waiting == 0
    finally:
        await scheduler.close()


async def test_a_client_flooding_the_gateway_leaves_room_for_another(gateway):
    server = await gateway(
        gateway={"trusted_proxies": ["127.0.0.1/32"]},
        embedding={"max_queue_depth": 4},
        validation={"rate_limits": ["1000/minute"]},
    )
    url = server.make_url("/vector/search")
    async with ClientSession() as session:

        async def search(query: str, address: str) -> int:
            body = {"collection": "nixos_docs", "query": query}
            headers = {"X-Forwarded-For": address}
            async with session.post(url, json=body, headers=headers) as response:
                return response.status

        flood = [asyncio.create_task(search(f"{LONG} {n}", "203.0.113.1")) for n in range(16)]
        await asyncio.sleep(0.05)
        other = await search("how do I open a port in the firewall", "198.51.100.2")
        statuses = await asyncio.gather(*flood)
    assert other == 200
    assert 503 in statuses and 200 in statuses, statuses


def test_threads_default_to_the_usable_cores_at_most_8_and_bad_values_are_refused():
    config = validate_config({"qdrant": {"path": "/unused"}}).embedding
    assert config.worker_threads() == min(len(os.sched_getaffinity(0)), 8)
    assert (
        validate_config(
            {"qdrant": {"path": "/x"}, "embedding": {"threads": 3}}
        ).embedding.worker_threads()
        == 3
    )
    for bad in ({"threads": -1}, {"batch_size": 0}, {"batch_tokens": 0}, {"batch_wait_ms": -1}):
        with pytest.raises(Exception, match="embedding"):
            validate_config({"qdrant": {"path": "/x"}, "embedding": bad})
