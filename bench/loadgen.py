"""Load that wrk cannot make, for bench/gateway.py: the model's own limit, searches at a
fixed rate (open loop: a request goes out on schedule whether or not the last one came
back, so a slow server shows as latency, not as a lower offered rate), and the flood of
long queries from many clients while one client's short queries are timed.

The clients are aiohttp in this process; the gateway is another process. Clients are told
apart by X-Forwarded-For, which the gateway under test trusts from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, TCPConnector

LONG_QUERY = " ".join(
    f"step {n}: the nixos module for the service fails after the upgrade, what now"
    for n in range(40)
)


def unique_queries(queries: list[str], start: int = 0) -> list[str]:
    """As wrk's unique script: a query picked in turn, a request number appended."""
    return [f"{queries[n % len(queries)]} ({n})" for n in range(start, start + 200_000)]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def model_limit(queries: list[str], seconds: float, batch: int = 32) -> tuple[float, int]:
    """Queries/s of the bundled model alone: batches of `batch` new queries on as many
    threads as the gateway's scheduler uses, each with one ONNX Runtime thread."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from aistack.config import validate_config
    from aistack.embedding.local import FastembedModel

    config = validate_config({"qdrant": {"path": "/unused"}}).embedding
    model = asyncio.run(FastembedModel.load(config))
    threads = config.worker_threads()
    texts = unique_queries(queries)
    counts = [0] * threads
    model.embed_batch(texts[:batch])  # warm
    deadline = time.perf_counter() + seconds

    def work(worker: int) -> None:
        position = worker * (len(texts) // threads)
        while time.perf_counter() < deadline:
            model.embed_batch(texts[position : position + batch])
            position += batch
            counts[worker] += batch

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = sum(counts) / (time.perf_counter() - began)
    asyncio.run(model.close())
    return rate, threads


@dataclass
class Timed:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def p(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction)


async def fixed_rate(
    port: int, collection: str, queries: list[str], rate: float, seconds: float
) -> Timed:
    """Searches sent at `rate` per second for `seconds`, each query new."""
    timed = Timed()
    url = f"http://127.0.0.1:{port}/vector/search"
    texts = unique_queries(queries, start=500_000)
    async with ClientSession(
        connector=TCPConnector(limit=0), timeout=ClientTimeout(total=60)
    ) as session:

        async def one(query: str) -> None:
            body = json.dumps({"collection": collection, "query": query, "limit": 10})
            began = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
            timed.latencies_ms.append((time.perf_counter() - began) * 1000)
            timed.statuses[response.status] += 1

        tasks = []
        began = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(texts[n])))
        await asyncio.gather(*tasks)
    return timed


async def flood(
    port: int, collection: str, short_queries: list[str], seconds: float, flooders: int = 20
) -> tuple[Timed, Timed]:
    """`flooders` clients each keep two long queries in flight; one more client sends short
    queries one after another. Returns (the short client's, the flood's)."""
    url = f"http://127.0.0.1:{port}/vector/search"
    short, long = Timed(), Timed()
    deadline = time.perf_counter() + seconds
    async with ClientSession(
        connector=TCPConnector(limit=0), timeout=ClientTimeout(total=60)
    ) as session:

        async def search(query: str, address: str, into: Timed) -> None:
            body = json.dumps({"collection": collection, "query": query, "limit": 10})
            headers = {"Content-Type": "application/json", "X-Forwarded-For": address}
            began = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            into.latencies_ms.append((time.perf_counter() - began) * 1000)
            into.statuses[response.status] += 1

        async def flooder(client: int, lane: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                await search(f"{LONG_QUERY} {client}.{lane}.{n}", f"198.51.100.{client}", long)
                n += 1

        async def short_client() -> None:
            await asyncio.sleep(1.0)  # the flood has filled the queue
            n = 0
            while time.perf_counter() < deadline:
                query = f"{short_queries[n % len(short_queries)]} [{n}]"
                await search(query, "203.0.113.7", short)
                n += 1
                await asyncio.sleep(0.05)

        await asyncio.gather(
            short_client(), *(flooder(c, lane) for c in range(1, flooders + 1) for lane in (0, 1))
        )
    return short, long


def summary(timed: Timed) -> str:
    statuses = " ".join(f"{s}:{n}" for s, n in sorted(timed.statuses.items()))
    return (
        f"{len(timed.latencies_ms)} requests, p50 {timed.p(0.5):.0f} ms, "
        f"p99 {timed.p(0.99):.0f} ms, max {max(timed.latencies_ms, default=0):.0f} ms, "
        f"mean {statistics.fmean(timed.latencies_ms) if timed.latencies_ms else 0:.0f} ms  "
        f"[{statuses}]"
    )
