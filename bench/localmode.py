#!/usr/bin/env python3
"""Where one search in Qdrant local mode spends its time, against plain numpy.

    python3 bench/localmode.py [--rounds N] [--json]

The collection is bench/gateway.py's (10,000 documents embedded with the bundled model,
built once under bench/out/), copied here as a Cosine collection, as every release before
the dot-product one made them, and as it is (dot product); the queries are bench/common.py's 50,
embedded with the same model. In each round the pieces below take turns call by call
over the queries (a drift of the shared machine falls on all of them alike); a row is the
median round, its ratio the median of the per-round ratios to the numpy baseline. Wall
time counts the waits for a core that other work on the machine causes; CPU time (all of
this process's threads) does not, and is the steadier figure on a shared machine.

  numpy               the baseline: the stored float32 matrix times the query, the top 11
                      by argpartition (what a search needs, nothing else); in turns with
                      the rest, and the 50 back to back (caches warm with the matrix);
  store.search        the gateway's call, `VectorStore.search` awaited on an event loop:
                      the hop to the store's thread, the collection check, qdrant-client,
                      our Hit records; "ours" is its excess over query_points;
  query_points        qdrant-client alone, on this thread, as `VectorStore.search` calls it
                      (with_payload, limit 11), and without the payload; and on the
                      dot-product collection, as collections are made now;
  thread hop          a no-op awaited on the store's one-thread executor;
  local mode's numpy  what qdrant-client's local search computes, repeated here on a copy
                      of the matrix: every stored vector renormalised (cosine), the float32
                      matrix times the float64 array it makes of the query, the argsort of
                      every score; "the rest" is what query_points spends besides;
  count               `VectorStore.count` (exact in local mode; the gateway caches it for
                      30 s, so an unfiltered search pays it about never);
  filtered            a search with one exact-match filter (`service`, a 30th of the points),
                      and the exact count behind a filtered page's `total`;
  embed               one query through the bundled model, the other half of a search.

Each OpenBLAS setting runs in its own process (it must be set before numpy loads): one
thread, as `aistack gateway` serves, and OpenBLAS's default (a thread per core). The top
10 of qdrant-client and of numpy are compared for every query. Nothing here is a goal.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The repository on sys.path, for `bench.common`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    QUERIES,
    SEARCH_COLLECTION,
    Out,
    finish,
    machine,
    machine_line,
    progress,
    scratch_directory,
)

LIMIT = 11  # the gateway asks for one hit more than a page of 10
FILTER_SERVICE = "nginx"  # one of bench/gateway.py's 30 services
FILTERED_QUERIES = 5  # each filtered call is a Python pass over every point
BLAS_SETTINGS = {"1": "one OpenBLAS thread (as served)", "default": "OpenBLAS default threads"}
CLOCKS = ("wall", "cpu")

# A call for one input (an awaitable it returns is awaited), its inputs, and how many
# searches one call makes (the warm baseline makes all of them back to back).
Piece = tuple[Callable[[Any], object], list[Any], int]
# (key, label) in the order printed. "ours" and "local_rest" are differences of one
# round's figures; every other piece is timed.
PIECES = [
    ("numpy", "numpy: float32 matrix x query, top 11 (baseline)"),
    ("numpy_warm", "  the same, 50 back to back (warm caches)"),
    ("store_search", "store.search (the gateway's call)"),
    ("query_points", "query_points, with_payload (as we call it)"),
    ("query_points_no_payload", "query_points, no payload"),
    ("query_points_dot", "query_points, dot-product collection"),
    ("ours", "ours: store.search - query_points"),
    ("thread_hop", "  of which the thread hop (a no-op)"),
    ("collection_exists", "  of which collection_exists"),
    ("renormalise", "local mode: renormalise 10k stored vectors"),
    ("dot_float64", "local mode: float32 matrix x float64 query"),
    ("argsort", "local mode: argsort of every score"),
    ("local_rest", "local mode, the rest (models, copies, loop)"),
    ("count", "count (exact; cached 30 s by the gateway)"),
    ("filtered_search", "store.search with a filter (service)"),
    ("filtered_count", "count with that filter (a page's total)"),
    ("embed", "embed one query (the bundled model)"),
]


def child_report(blas: str, rounds: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if blas != "default":
        env["OPENBLAS_NUM_THREADS"] = blas
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", blas, "--rounds", str(rounds)]
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the run with OPENBLAS_NUM_THREADS={blas} failed")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def prepared_store(work: Path) -> tuple[Path, Path]:
    """Copies of bench/gateway.py's ingested store (local mode locks what it opens): as a
    Cosine collection, and as it is."""
    from aistack.stores.private_postgres import free_port
    from bench.gateway import cached_store, cosine_copy

    # Ingest does not reach PostgreSQL: a closed port will do (as in bench/gateway.py).
    cached = cached_store(work, f"postgresql://bench@127.0.0.1:{free_port()}/aistack")
    dot = work / "qdrant-dot"
    shutil.copytree(cached, dot)
    cosine = work / "qdrant"
    cosine_copy(cached, cosine)
    return cosine, dot


async def stored_matrix(store: Any) -> tuple[list[int | str], Any]:
    """The collection's ids and vectors as local mode keeps them (float32, unit length)."""
    import numpy as np

    ids: list[int | str] = []
    rows: list[list[float]] = []
    async for page in store.scroll(SEARCH_COLLECTION, with_vectors=True):
        ids += [point.id for point in page]
        rows += [point.vector or [] for point in page]
    return ids, np.array(rows, dtype=np.float32)


def pieces(
    store: Any, dot: Any, embedder: Any, matrix: Any, queries: list[list[float]]
) -> dict[str, Piece]:
    import numpy as np
    from qdrant_client import models

    client = store.client
    scratch = matrix.copy()  # renormalised in place, as local mode does its own
    as32 = [np.array(q, dtype=np.float32) for q in queries]
    as64 = [np.array(q) for q in queries]  # what local mode makes of a list of floats
    match = models.MatchValue(value=FILTER_SERVICE)
    only = models.Filter(must=[models.FieldCondition(key="service", match=match)])
    few = queries[:FILTERED_QUERIES]

    def numpy_top(q: Any) -> Any:
        scores = matrix @ q
        top = np.argpartition(-scores, LIMIT)[:LIMIT]
        return top[np.argsort(-scores[top])]

    def renormalise(q: Any) -> None:
        norms = np.linalg.norm(scratch, axis=-1)[:, np.newaxis]
        np.divide(scratch, np.where(norms != 0.0, norms, 1e-10), out=scratch)

    def query_points(with_payload: bool) -> Callable[[list[float]], object]:
        return lambda q: client.query_points(
            SEARCH_COLLECTION, query=list(q), limit=LIMIT, with_payload=with_payload
        )

    return {
        "numpy": (numpy_top, as32, 1),
        "numpy_warm": (lambda batch: [numpy_top(q) for q in batch], [as32], len(as32)),
        "store_search": (lambda q: store.search(SEARCH_COLLECTION, q, LIMIT, 0), queries, 1),
        "query_points": (query_points(True), queries, 1),
        "query_points_no_payload": (query_points(False), queries, 1),
        "query_points_dot": (
            lambda q: dot.query_points(
                SEARCH_COLLECTION, query=list(q), limit=LIMIT, with_payload=True
            ),
            queries,
            1,
        ),
        "thread_hop": (lambda q: store._run(int), queries, 1),
        "collection_exists": (
            lambda q: client.collection_exists(SEARCH_COLLECTION),
            queries,
            1,
        ),
        "renormalise": (renormalise, as64, 1),
        "dot_float64": (lambda q: np.dot(matrix, q), as64, 1),
        "argsort": (lambda scores: np.argsort(scores)[::-1], [matrix @ q for q in as64], 1),
        "count": (lambda q: store.count(SEARCH_COLLECTION), few, 1),
        "filtered_search": (
            lambda q: store.search(SEARCH_COLLECTION, q, LIMIT, 0, only),
            few,
            1,
        ),
        "filtered_count": (lambda q: store.count(SEARCH_COLLECTION, only), few, 1),
        # The backend's own call: the gateway's query cache would answer a repeated text.
        "embed": (lambda text: embedder.embed_documents([text]), QUERIES, 1),
    }


async def one_round(timed: dict[str, Piece]) -> dict[str, dict[str, float]]:
    """Wall and CPU ms per call of every piece, the pieces taking turns call by call."""
    spent = {clock: dict.fromkeys(timed, 0.0) for clock in CLOCKS}
    for index in range(max(len(inputs) for _, inputs, _ in timed.values())):
        for key, (call, inputs, _) in timed.items():
            if index >= len(inputs):
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            result = call(inputs[index])
            if inspect.isawaitable(result):
                await result
            spent["wall"][key] += time.perf_counter() - wall
            spent["cpu"][key] += time.process_time() - cpu
    times = {
        clock: {
            key: spent[clock][key] * 1000 / (len(inputs) * searches)
            for key, (_, inputs, searches) in timed.items()
        }
        for clock in CLOCKS
    }
    for figures in times.values():
        figures["ours"] = figures["store_search"] - figures["query_points"]
        brute = ("renormalise", "dot_float64", "argsort")
        figures["local_rest"] = figures["query_points"] - sum(figures[key] for key in brute)
    return times


async def measure(store_paths: tuple[Path, Path], rounds: int, blas: str) -> dict[str, Any]:
    from qdrant_client import QdrantClient

    from aistack.config import EmbeddingConfig, QdrantConfig
    from aistack.embedding import open_embedder
    from aistack.stores.qdrant import VectorStore

    embedder = await open_embedder(EmbeddingConfig())
    store = VectorStore.connect(QdrantConfig(path=str(store_paths[0])))
    dot = QdrantClient(path=str(store_paths[1]))
    try:
        queries = await embedder.embed_documents(QUERIES)
        ids, matrix = await stored_matrix(store)
        timed = pieces(store, dot, embedder, matrix, queries)
        per_round: dict[str, dict[str, list[float]]] = {
            clock: {key: [] for key, _ in PIECES} for clock in CLOCKS
        }
        for number in range(rounds + 1):  # round 0 warms every path up, and is dropped
            times = await one_round(timed)
            if number:
                for clock, figures in times.items():
                    for key, value in figures.items():
                        per_round[clock][key].append(value)
            wall = times["wall"]
            progress(
                f"OPENBLAS_NUM_THREADS={blas}, round {number}/{rounds}: numpy "
                f"{wall['numpy']:.2f} ms, store.search {wall['store_search']:.2f} ms (wall)"
            )
        agreement = top10_agreement(store.client, ids, matrix, queries)
    finally:
        dot.close()
        await store.close()
        await embedder.close()
    return {
        "points": len(ids),
        "top10_same": agreement,
        "pieces": {
            key: {clock: median_and_ratio(per_round[clock], key) for clock in CLOCKS}
            for key, _ in PIECES
        },
    }


def median_and_ratio(rounds: dict[str, list[float]], key: str) -> dict[str, Any]:
    pairs = zip(rounds[key], rounds["numpy"], strict=True)
    return {
        "ms": round(statistics.median(rounds[key]), 3),
        "x_numpy": round(statistics.median(value / base for value, base in pairs), 2),
        "rounds_ms": [round(value, 3) for value in rounds[key]],
    }


def top10_agreement(
    client: Any, ids: list[int | str], matrix: Any, queries: list[list[float]]
) -> float:
    """The share of queries whose top 10 from numpy and from qdrant-client are the same
    points with the same scores. Compared as sets: the corpus repeats some texts, and
    points of equal score come in either order."""
    import numpy as np

    same = 0
    for q in queries:
        scores = matrix @ np.array(q, dtype=np.float32)
        top = np.argsort(-scores)[:10]
        points = client.query_points(SEARCH_COLLECTION, query=q, limit=10).points
        theirs = [point.score for point in points]
        same += {ids[i] for i in top} == {point.id for point in points} and bool(
            np.allclose(scores[top], theirs, atol=1e-5)
        )
    return same / len(queries)


def print_report(reports: dict[str, dict[str, Any]], rounds: int, say: Out) -> None:
    say(f"{rounds} rounds, the pieces in turns over {len(QUERIES)} queries; median round:")
    for blas, report in reports.items():
        say()
        say(
            f"{BLAS_SETTINGS[blas]}: {report['points']} points, the same top 10 as numpy "
            f"for {report['top10_same']:.0%} of the queries"
        )
        say(f"  {'ms a search':<48} {'wall':>8} {'x numpy':>8} {'CPU':>8} {'x numpy':>8}")
        for key, label in PIECES:
            wall, cpu = (report["pieces"][key][clock] for clock in CLOCKS)
            say(
                f"  {label:<48} {wall['ms']:8.3f} {wall['x_numpy']:8.2f}"
                f" {cpu['ms']:8.3f} {cpu['x_numpy']:8.2f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every piece (7)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", choices=BLAS_SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.child:
        with scratch_directory("aistack-localmode-") as work:
            report = asyncio.run(measure(prepared_store(work), args.rounds, args.child))
        print(json.dumps(report))
        return 0
    say = Out(args.json)
    started = time.monotonic()
    host = machine()
    say(machine_line(host))
    try:
        reports = {blas: child_report(blas, args.rounds) for blas in BLAS_SETTINGS}
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    print_report(reports, args.rounds, say)
    finish({"machine": host, "rounds": args.rounds, "runs": reports}, [], say, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
