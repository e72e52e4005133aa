#!/usr/bin/env python3
"""GC benchmark: near-duplicate detection in numpy, and expiry + pruning in PostgreSQL.

    python3 bench/gc.py [--quick] [--json] [--only a|b]

(a) Near duplicates among 100,000 x 384 float32 unit vectors (seeded numpy: random
    vectors plus planted near-duplicate pairs and groups of three, cosine about 0.98),
    threshold 0.95:
      - full scan: `aistack.gc.duplicates.similar_pairs` against a plain numpy all-pairs
        baseline written here (row blocks times the whole matrix, no preallocated buffer,
        no j < i pruning); both must find the same pair set and every planted pair;
      - incremental: 2,000 new rows against the 100,000 (first_new on a 102,000 matrix),
        three times, the goal judged on the median;
      - working memory of each scan (tracemalloc peak above what was allocated before it,
        so the input matrix is excluded; numpy reports its buffers to tracemalloc);
      - `choose_survivors` on the pairs found.
(b) Expiry + pruning of about 300,000 of 1,000,000 rows of `solved_issues` in a private
    PostgreSQL server (127.0.0.1 and a Unix socket in a temporary directory):
      - baseline: one DELETE of the expired rows plus one DELETE of the pruned rows, no
        archive;
      - ours: the real pass, `aistack.gc.job.run_gc`, on an identical copy of the database,
        with an empty Qdrant local-mode directory (no collection, so every Qdrant delete is
        skipped: this measures the PostgreSQL side) and a stub embedder that is never
        called; batch_size 5000 (the default) and 10000;
      - during each, a writer process inserts single rows on its own connection (one
        INSERT, then a 5 ms pause) and records each insert's latency.

Figures come from one run on a shared machine: compare the ratios, not absolute times.
"CPUs busy" is this process's CPU time over wall time: about 2.0 on two idle cores, less
when other work on the machine took its share. --quick: 20,000 vectors, 100,000 rows.
Every goal prints PASS or FAIL; the exit status is 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import os
import re
import signal
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

# The repository on sys.path, for `bench.common`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aistack.config import Config, GcConfig
from aistack.gc import policies
from aistack.gc.duplicates import TILE_COLUMNS, TILE_ROWS, choose_survivors, similar_pairs
from aistack.gc.job import run_gc
from aistack.gc.plan import select_expired, select_pruned
from aistack.stores.private_postgres import PrivatePostgres
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import migrate
from bench import common
from bench.common import (
    DimensionOnlyEmbedder,
    Goal,
    Out,
    finish,
    gc_run_config,
    load_average,
    machine_line,
    scratch_directory,
)

SEED = 20_261_107
DIMENSION = 384
THRESHOLD = 0.95
NOISE = 0.15  # norm of the noise added to a planted duplicate: cosine about 0.98-0.99
BASELINE_BLOCK_ROWS = 1024
PLANTED_OLD_PAIRS = 300
PLANTED_OLD_GROUPS = 50  # groups of three: three pairs each
PLANTED_NEW_OLD_PAIRS = 60
PLANTED_NEW_NEW_PAIRS = 10

MAX_AGE_DAYS = 30
MIN_VALUE_SCORE = 0.5
SPAN_DAYS = 60
REMOVE_FRACTION = 0.3
WRITER_PAUSE_S = 0.005
BATCH_SIZES = (5000, 10000)

GOAL_SCAN_RATIO = 1.2
GOAL_INCREMENTAL_S = 2.0
GOAL_SCAN_MB = 300.0
GOAL_GC_RATIO = 3.0
GOAL_BATCH_MS = 300.0

MB = 1e6
SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class Sizes:
    vectors: int
    new: int
    rows: int


FULL = Sizes(vectors=100_000, new=2_000, rows=1_000_000)
QUICK = Sizes(vectors=20_000, new=2_000, rows=100_000)


# --- the machine -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        **common.machine(),
        "blas": blas_info(),
        "openblas_env": {
            name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        }
        | {name: value for name, value in os.environ.items() if name.endswith("_NUM_THREADS")},
    }


def blas_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        config: Any = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        info = {
            "name": blas.get("name"),
            "version": blas.get("version"),
            "configuration": " ".join(str(blas.get("openblas configuration", "")).split()),
        }
    # What OpenBLAS chose at run time: its core type and thread count.
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1]
            if "openblas" not in path.lower() or not path.startswith("/"):
                continue
            library = ctypes.CDLL(path)
            for suffix in ("64_", "_64", ""):
                for prefix in ("scipy_openblas", "openblas"):
                    corename = getattr(library, f"{prefix}_get_corename{suffix}", None)
                    threads = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
                    if corename is not None and threads is not None:
                        corename.restype = ctypes.c_char_p
                        info["core"] = corename().decode()
                        info["threads"] = int(threads())
                        return info
            break
    return info


# --- (a) near duplicates ------------------------------------------------------------------


@dataclass
class Vectors:
    matrix: npt.NDArray[np.float32]  # old rows first, then the new ones
    old: int
    planted_old: set[tuple[int, int]]  # (i, j), i > j, both old
    planted_new: set[tuple[int, int]]  # (i, j), i > j, i new
    expected_removed: int  # choose_survivors on planted_old


def make_vectors(sizes: Sizes) -> Vectors:
    rng = np.random.default_rng(SEED)
    total = sizes.vectors + sizes.new
    matrix = rng.standard_normal((total, DIMENSION), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    old_pool = iter(rng.permutation(sizes.vectors).tolist())
    new_pool = iter((sizes.vectors + rng.permutation(sizes.new)).tolist())

    def copy_of(source: int, target: int) -> None:
        noise = rng.standard_normal(DIMENSION, dtype=np.float32) * (NOISE / DIMENSION**0.5)
        row = matrix[source] + noise
        matrix[target] = row / np.linalg.norm(row)

    def pair(a: int, b: int) -> tuple[int, int]:
        return (max(a, b), min(a, b))

    planted_old: set[tuple[int, int]] = set()
    planted_new: set[tuple[int, int]] = set()
    for _ in range(PLANTED_OLD_PAIRS):
        source, target = next(old_pool), next(old_pool)
        copy_of(source, target)
        planted_old.add(pair(source, target))
    for _ in range(PLANTED_OLD_GROUPS):
        source, first, second = next(old_pool), next(old_pool), next(old_pool)
        copy_of(source, first)
        copy_of(source, second)
        planted_old |= {pair(source, first), pair(source, second), pair(first, second)}
    for _ in range(PLANTED_NEW_OLD_PAIRS):
        source, target = next(old_pool), next(new_pool)
        copy_of(source, target)
        planted_new.add(pair(source, target))
    for _ in range(PLANTED_NEW_NEW_PAIRS):
        source, target = next(new_pool), next(new_pool)
        copy_of(source, target)
        planted_new.add(pair(source, target))
    return Vectors(
        matrix, sizes.vectors, planted_old, planted_new, PLANTED_OLD_PAIRS + 2 * PLANTED_OLD_GROUPS
    )


def baseline_pairs(
    vectors: npt.NDArray[np.float32], threshold: float, first_new: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The obvious all-pairs scan: a block of rows times the whole matrix, keep i > j."""
    found_i: list[npt.NDArray[np.int64]] = []
    found_j: list[npt.NDArray[np.int64]] = []
    for start in range(first_new, vectors.shape[0], BASELINE_BLOCK_ROWS):
        block = vectors[start : start + BASELINE_BLOCK_ROWS]
        similarities = block @ vectors.T
        rows, columns = np.nonzero(similarities >= threshold)
        i = rows.astype(np.int64) + start
        j = columns.astype(np.int64)
        below = i > j
        found_i.append(i[below])
        found_j.append(j[below])
    if not found_i:
        empty = np.empty(0, np.int64)
        return empty, empty
    return np.concatenate(found_i), np.concatenate(found_j)


def ours_pairs(
    vectors: npt.NDArray[np.float32], threshold: float, first_new: int = 0
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    return list(similar_pairs(vectors, threshold, first_new=first_new))


def pair_codes(i: npt.NDArray[np.int64], j: npt.NDArray[np.int64], count: int) -> set[int]:
    return set((i * count + j).tolist())


def measured(function: Any, *args: Any) -> tuple[Any, float, float, float]:
    """Result, seconds, peak bytes allocated above what was live when it started, and the
    CPUs this process kept busy on average (2.0 on two idle cores; less when other work on
    the machine took its share)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    began = time.perf_counter()
    began_cpu = time.process_time()
    result = function(*args)
    seconds = time.perf_counter() - began
    cpus = (time.process_time() - began_cpu) / seconds if seconds else 0.0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, float(peak - before), cpus


def bench_duplicates(sizes: Sizes, say: Out) -> tuple[dict[str, Any], list[Goal]]:
    began_part = time.perf_counter()
    data = make_vectors(sizes)
    total = data.matrix.shape[0]
    full = data.matrix[: data.old]  # a view: no copy
    say(
        f"(a) near duplicates: {data.old:,} x {DIMENSION} float32 (+{sizes.new:,} new), "
        f"threshold {THRESHOLD}, planted pairs {len(data.planted_old)} among the old rows "
        f"and {len(data.planted_new)} involving new rows (made in "
        f"{time.perf_counter() - began_part:.1f} s); load average {load_average()}"
    )

    ours, ours_s, ours_bytes, ours_cpus = measured(ours_pairs, full, THRESHOLD)
    ours_i = np.concatenate([p[0] for p in ours]) if ours else np.empty(0, np.int64)
    ours_j = np.concatenate([p[1] for p in ours]) if ours else np.empty(0, np.int64)
    say(
        f"  full scan, ours (similar_pairs, tiles {TILE_ROWS}x{TILE_COLUMNS}): {ours_s:.2f} s "
        f"(CPUs busy {ours_cpus:.2f}), peak extra memory {ours_bytes / MB:.0f} MB, "
        f"{ours_i.size} pairs"
    )
    (base_i, base_j), base_s, base_bytes, base_cpus = measured(baseline_pairs, full, THRESHOLD)
    say(
        f"  full scan, numpy baseline ({BASELINE_BLOCK_ROWS}-row blocks @ all rows.T): "
        f"{base_s:.2f} s (CPUs busy {base_cpus:.2f}), peak extra memory "
        f"{base_bytes / MB:.0f} MB, {base_i.size} pairs"
    )
    ours_set = pair_codes(ours_i, ours_j, total)
    base_set = pair_codes(base_i, base_j, total)
    planted_set = {i * total + j for i, j in data.planted_old}
    ratio = ours_s / base_s
    say(
        f"  ours/baseline {ratio:.2f}; same pair set: {ours_set == base_set} "
        f"(only ours {len(ours_set - base_set)}, only baseline {len(base_set - ours_set)}); "
        f"planted found: ours {len(planted_set & ours_set)}/{len(planted_set)}, "
        f"baseline {len(planted_set & base_set)}/{len(planted_set)}; "
        f"unplanted pairs found {len(ours_set - planted_set)}"
    )
    lowest = min(float(data.matrix[i] @ data.matrix[j]) for i, j in data.planted_old)
    say(f"  lowest planted cosine {lowest:.4f}; load average {load_average()}")

    # Short enough to repeat: the median of three, each printed, so one slice of time
    # taken by other work on the machine does not decide the goal.
    repeats = [measured(ours_pairs, data.matrix, THRESHOLD, data.old) for _ in range(3)]
    new_ours, _, new_bytes, _ = repeats[0]
    new_times = [round(r[1], 3) for r in repeats]
    new_s = float(np.median(new_times))
    new_i = np.concatenate([p[0] for p in new_ours]) if new_ours else np.empty(0, np.int64)
    new_j = np.concatenate([p[1] for p in new_ours]) if new_ours else np.empty(0, np.int64)
    (nb_i, nb_j), new_base_s, _, _ = measured(baseline_pairs, data.matrix, THRESHOLD, data.old)
    new_set = pair_codes(new_i, new_j, total)
    new_base_set = pair_codes(nb_i, nb_j, total)
    new_planted = {i * total + j for i, j in data.planted_new}
    say(
        f"  incremental, {sizes.new:,} new rows against {total:,}: ours median {new_s:.2f} s "
        f"of {', '.join(f'{t:.2f}' for t in new_times)} (CPUs busy "
        f"{', '.join(f'{r[3]:.2f}' for r in repeats)}; peak extra {new_bytes / MB:.0f} MB), "
        f"baseline {new_base_s:.2f} s; "
        f"same pair set: {new_set == new_base_set}; "
        f"planted found {len(new_planted & new_set)}/{len(new_planted)}, {new_i.size} pairs"
    )

    rng = np.random.default_rng(SEED + 1)
    scores = rng.random(data.old)
    created = 1.7e9 + rng.random(data.old) * 60 * 86400
    ids = np.arange(1, data.old + 1, dtype=np.int64)
    began = time.perf_counter()
    choice = choose_survivors(scores, created, ids, ours)
    choose_s = time.perf_counter() - began
    say(
        f"  choose_survivors on {ours_i.size} pairs: {choose_s * 1000:.1f} ms, "
        f"{choice.removed.size} rows removed (planted: {data.expected_removed})"
    )
    say()

    figures = {
        "vectors": data.old,
        "new": sizes.new,
        "dimension": DIMENSION,
        "threshold": THRESHOLD,
        "planted_pairs": len(data.planted_old),
        "planted_new_pairs": len(data.planted_new),
        "lowest_planted_cosine": round(lowest, 4),
        "full_scan": {
            "ours_s": round(ours_s, 3),
            "baseline_s": round(base_s, 3),
            "ours_cpus_busy": round(ours_cpus, 2),
            "baseline_cpus_busy": round(base_cpus, 2),
            "ratio": round(ratio, 3),
            "ours_peak_mb": round(ours_bytes / MB, 1),
            "baseline_peak_mb": round(base_bytes / MB, 1),
            "ours_pairs": int(ours_i.size),
            "baseline_pairs": int(base_i.size),
            "same_pairs": ours_set == base_set,
            "planted_found_ours": len(planted_set & ours_set),
            "planted_found_baseline": len(planted_set & base_set),
            "baseline_block_rows": BASELINE_BLOCK_ROWS,
        },
        "incremental": {
            "ours_s": round(new_s, 3),
            "ours_runs_s": new_times,
            "ours_cpus_busy": [round(r[3], 2) for r in repeats],
            "baseline_s": round(new_base_s, 3),
            "ours_peak_mb": round(new_bytes / MB, 1),
            "pairs": int(new_i.size),
            "same_pairs": new_set == new_base_set,
            "planted_found": len(new_planted & new_set),
        },
        "choose_survivors": {
            "ms": round(choose_s * 1000, 2),
            "pairs": int(ours_i.size),
            "removed": int(choice.removed.size),
            "expected_removed": data.expected_removed,
        },
        "seconds": round(time.perf_counter() - began_part, 1),
    }
    correct = ours_set == base_set and planted_set <= ours_set
    goals = [
        Goal(
            f"(a) full scan ours/baseline <= {GOAL_SCAN_RATIO}"
            + ("" if correct else " (pair sets differ or planted pairs missed)"),
            ratio <= GOAL_SCAN_RATIO and correct,
            round(ratio, 3),
            GOAL_SCAN_RATIO,
        ),
        Goal(
            f"(a) incremental {sizes.new:,} x {total:,} (median of 3) < {GOAL_INCREMENTAL_S} s",
            new_s < GOAL_INCREMENTAL_S and new_planted <= new_set,
            round(new_s, 3),
            GOAL_INCREMENTAL_S,
            " s",
        ),
        Goal(
            f"(a) full scan working memory < {GOAL_SCAN_MB:.0f} MB",
            ours_bytes / MB < GOAL_SCAN_MB,
            round(ours_bytes / MB, 1),
            GOAL_SCAN_MB,
            " MB",
        ),
    ]
    return figures, goals


# --- (b) expiry and pruning in PostgreSQL -------------------------------------------------

FILL = """
INSERT INTO solved_issues (query, solution, value_score, created_at)
SELECT 'how do I fix ' || repeat(md5(g::text), 6),
       'do this: ' || repeat(md5((-g)::text), 6),
       random(),
       $1::timestamptz - make_interval(secs => $3 * (1 - g::float8 / $2))
FROM generate_series(1, $2::int) AS g
"""
WRITER_INSERT = (
    "INSERT INTO solved_issues (query, solution, value_score, created_at)"
    " VALUES ($1, $2, $3, now())"
)
REMAINING = "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM solved_issues WHERE id <= $1"
LOG_LINE = re.compile(r"duration: ([0-9.]+) ms\s+(?:(?:parse|bind|execute) [^:]*|statement): (.*)$")


@dataclass
class WriterStats:
    inserts: int
    worst_ms: float
    p99_ms: float
    p50_ms: float

    def text(self) -> str:
        return (
            f"{self.inserts} inserts, worst {self.worst_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"p50 {self.p50_ms:.2f} ms"
        )


class Writer:
    """A child process inserting single rows until told to stop."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Writer:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--writer",
            self.dsn,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"the writer did not start: {line!r}")
        await asyncio.sleep(0.2)  # a few inserts before the work starts
        return self

    async def stop(self, window: tuple[float, float]) -> WriterStats:
        """Stop the writer; latencies of the inserts that overlapped the window."""
        assert self.process is not None and self.process.stdout is not None
        await asyncio.sleep(0.1)
        self.process.send_signal(signal.SIGTERM)
        output = await asyncio.wait_for(self.process.stdout.read(), 60)
        await self.process.wait()
        samples: list[list[float]] = json.loads(output)
        began, ended = window
        latencies = np.array(
            [took for start, took in samples if start <= ended and start + took >= began]
        )
        if latencies.size == 0:
            return WriterStats(0, 0.0, 0.0, 0.0)
        return WriterStats(
            int(latencies.size),
            round(float(latencies.max()) * 1000, 2),
            round(float(np.percentile(latencies, 99)) * 1000, 2),
            round(float(np.percentile(latencies, 50)) * 1000, 3),
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def writer_main(dsn: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    connection = await asyncpg.connect(
        dsn,
        server_settings={"application_name": "bench-writer", "log_min_duration_statement": "-1"},
    )
    samples: list[tuple[float, float]] = []
    text = "a query written while the GC runs " + "x" * 170
    print("ready", flush=True)
    try:
        while not stop.is_set():
            began = time.monotonic()
            await connection.execute(WRITER_INSERT, text, "a solution " + "y" * 190, 0.9)
            samples.append((began, time.monotonic() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WRITER_PAUSE_S)
    finally:
        await connection.close()
    print(json.dumps(samples), flush=True)
    return 0


async def execute_count(connection: asyncpg.Connection, query: str, *args: Any) -> int:
    status = await connection.execute(query, *args)
    return int(status.split()[-1])


def gc_settings(rows: int, expired: int, batch_size: int) -> dict[str, Any]:
    """Expiry takes what it takes; pruning takes the rest up to REMOVE_FRACTION of rows."""
    remaining = rows - expired
    target = int(rows * REMOVE_FRACTION) - expired
    return {
        "max_age_days": MAX_AGE_DAYS,
        "min_value_score": MIN_VALUE_SCORE,
        "max_solutions": remaining // 2,
        "prune_fraction": max(target, 1) / remaining,
        "orphan_cleanup": False,
        "batch_size": batch_size,
    }


async def fill(dsn: str, rows: int, now: datetime.datetime) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await migrate(connection)
        await connection.execute("SELECT setseed(0.25)")
        await connection.execute(FILL, now, rows, float(SPAN_DAYS * 86400))
        await connection.execute("VACUUM ANALYZE solved_issues")
    finally:
        await connection.close()


async def run_baseline(
    dsn: str, config: GcConfig, now: datetime.datetime
) -> tuple[dict[str, Any], WriterStats]:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
        cutoff = policies.expiry_cutoff(config, now)
        rows = await connection.fetchval("SELECT count(*) FROM solved_issues")
        async with Writer(dsn) as writer:
            began = time.monotonic()
            expired = await execute_count(
                connection,
                "DELETE FROM solved_issues WHERE created_at < $1 AND value_score < $2",
                cutoff,
                config.min_value_score,
            )
            middle = time.monotonic()
            pruned = await execute_count(
                connection,
                "DELETE FROM solved_issues WHERE id IN (SELECT id FROM solved_issues"
                " WHERE NOT (created_at < $1 AND value_score < $2) AND created_at < $3"
                " ORDER BY value_score, created_at, id LIMIT $4)",
                cutoff,
                config.min_value_score,
                policies.prune_protected_after(now),
                policies.prune_count(rows - expired, config),
            )
            ended = time.monotonic()
            stats = await writer.stop((began, ended))
    finally:
        await connection.close()
    return {
        "seconds": round(ended - began, 3),
        "expire_delete_s": round(middle - began, 3),
        "prune_delete_s": round(ended - middle, 3),
        "expired": expired,
        "pruned": pruned,
    }, stats


def statement_times(log_text: str) -> list[tuple[str, float, int]]:
    """Server-side time per statement (parse + bind + execute), biggest first."""
    totals: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        match = LOG_LINE.search(line)
        if match is None:
            continue
        key = " ".join(match.group(2).split())[:90]
        entry = totals.setdefault(key, [0.0, 0])
        entry[0] += float(match.group(1))
        if " execute " in line or "statement:" in line:
            entry[1] += 1
    return sorted(((k, v[0], int(v[1])) for k, v in totals.items()), key=lambda t: -t[1])


async def run_ours(
    server: PrivatePostgres, dsn: str, config: Config, now: datetime.datetime
) -> tuple[dict[str, Any], WriterStats, list[tuple[str, float, int]]]:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    log_offset = server.log_file.stat().st_size
    store = VectorStore.connect(config.qdrant)
    try:
        async with Writer(dsn) as writer:
            began = time.monotonic()
            result = await run_gc(
                config, store, DimensionOnlyEmbedder(DIMENSION), now=now, progress=None
            )
            ended = time.monotonic()
            stats = await writer.stop((began, ended))
    finally:
        await store.close()
    with server.log_file.open("rb") as log:
        log.seek(log_offset)
        log_text = log.read().decode(errors="replace")
    figures = {
        "seconds": round(ended - began, 3),
        "done": result.done,
        "plan_counts": result.plan.counts(),
        "batch_size": config.gc.batch_size,
    }
    return figures, stats, statement_times(log_text)


async def bench_postgres(
    sizes: Sizes, say: Out, directory: Path
) -> tuple[dict[str, Any], list[Goal]]:
    began_part = time.perf_counter()
    server = PrivatePostgres(directory / "server")
    figures: dict[str, Any] = {"rows": sizes.rows}
    goals: list[Goal] = []
    try:
        server.start()
        admin = await asyncpg.connect(server.dsn)
        try:
            # Nothing of one database's aftermath (autovacuum after 300k deletes) runs
            # during the next measurement; every measurement starts after a CHECKPOINT.
            await admin.execute("ALTER SYSTEM SET autovacuum = off")
            await admin.execute("SELECT pg_reload_conf()")
            figures["server_version"] = await admin.fetchval("SHOW server_version")
        finally:
            await admin.close()
        now = datetime.datetime.now(datetime.UTC)
        base_dsn = server.create_database("gc_baseline")
        began = time.perf_counter()
        await fill(base_dsn, sizes.rows, now)
        fill_s = time.perf_counter() - began
        names = ["gc_baseline"] + [f"gc_ours_{size}" for size in BATCH_SIZES]
        admin = await asyncpg.connect(server.dsn)
        try:
            began = time.perf_counter()
            for name in names[1:]:
                await admin.execute(
                    f"CREATE DATABASE {name} TEMPLATE gc_baseline STRATEGY FILE_COPY"
                )
                # Every statement of our runs goes to the server log, with its duration.
                await admin.execute(f"ALTER DATABASE {name} SET log_min_duration_statement = 0")
                await admin.execute(f"ALTER DATABASE {name} SET log_parameter_max_length = 0")
            copy_s = time.perf_counter() - began
        finally:
            await admin.close()
        dsns = {name: server.dsn_of(name) for name in names}

        connection = await asyncpg.connect(base_dsn)
        try:
            fill_max = await connection.fetchval("SELECT max(id) FROM solved_issues")
            table_mb = await connection.fetchval(
                "SELECT pg_total_relation_size('solved_issues') / 1e6::float8"
            )
            probe = GcConfig(max_age_days=MAX_AGE_DAYS, min_value_score=MIN_VALUE_SCORE)
            expired_count = len(await select_expired(connection, probe, now))
        finally:
            await connection.close()
        settings = gc_settings(sizes.rows, expired_count, BATCH_SIZES[0])
        gc_config = GcConfig(**settings)
        say(
            f"(b) expiry + pruning in PostgreSQL {figures['server_version']}: {sizes.rows:,} rows "
            f"({table_mb:.0f} MB with indexes; filled in {fill_s:.1f} s, copied to "
            f"{len(names) - 1} more databases in {copy_s:.1f} s), created_at spread over "
            f"{SPAN_DAYS} days in id order, value_score uniform"
        )
        say(
            f"  gc: max_age_days {MAX_AGE_DAYS}, min_value_score {MIN_VALUE_SCORE}, "
            f"max_solutions {settings['max_solutions']:,}, prune_fraction "
            f"{settings['prune_fraction']:.5f} (expiry takes {expired_count:,}, pruning the "
            f"rest of {REMOVE_FRACTION:.0%}); autovacuum off, CHECKPOINT before each run"
        )
        say(
            f"  writer: its own connection and process, one INSERT then {WRITER_PAUSE_S * 1000:.0f}"
            " ms pause, latencies of the inserts overlapping the measured work"
        )
        figures["fill_s"] = round(fill_s, 1)
        figures["table_mb"] = round(table_mb, 1)
        figures["gc"] = settings

        connection = await asyncpg.connect(base_dsn)
        try:
            planned_pruned = len(
                await select_pruned(connection, gc_config, now, sizes.rows - expired_count)
            )
        finally:
            await connection.close()
        figures["planned"] = {"expired": expired_count, "pruned": planned_pruned}

        baseline, base_writer = await run_baseline(base_dsn, gc_config, now)
        say(
            f"  baseline, one DELETE expired + one DELETE pruned, no archive: "
            f"{baseline['seconds']:.2f} s ({baseline['expire_delete_s']:.2f} + "
            f"{baseline['prune_delete_s']:.2f}), removed {baseline['expired']:,} + "
            f"{baseline['pruned']:,}; load average {load_average()}"
        )
        say(f"    writer during it: {base_writer.text()}")
        figures["baseline"] = baseline | {"writer": base_writer.__dict__}

        connection = await asyncpg.connect(base_dsn)
        try:
            base_left = np.asarray(await connection.fetchval(REMAINING, fill_max), np.int64)
        finally:
            await connection.close()

        qdrant_root = directory / "qdrant"
        runs: list[dict[str, Any]] = []
        for size in BATCH_SIZES:
            name = f"gc_ours_{size}"
            qdrant_path = qdrant_root / name
            qdrant_path.mkdir(parents=True)
            config = gc_run_config(dsns[name], qdrant_path, settings | {"batch_size": size})
            ours, ours_writer, statements = await run_ours(server, dsns[name], config, now)
            connection = await asyncpg.connect(dsns[name])
            try:
                ours_left = np.asarray(await connection.fetchval(REMAINING, fill_max), np.int64)
                archived = {
                    r["reason"]: r["count"]
                    for r in await connection.fetch(
                        "SELECT reason, sum(cardinality(ids)) AS count FROM solved_issues_archive"
                        " GROUP BY reason"
                    )
                }
            finally:
                await connection.close()
            done = ours["done"]
            # The writer's rows count towards `remaining`, so pruning may take a few rows
            # more than the baseline did (prune_count = floor(remaining * prune_fraction)):
            # the sets agree when one contains the other and differ by that many rows.
            removed_only_ours = int(np.setdiff1d(base_left, ours_left).size)
            removed_only_base = int(np.setdiff1d(ours_left, base_left).size)
            extra = int(done.get("pruned", 0)) - baseline["pruned"]
            same = done.get("expired") == baseline["expired"] and (
                (extra >= 0 and removed_only_base == 0 and removed_only_ours == extra)
                or (extra < 0 and removed_only_ours == 0 and removed_only_base == -extra)
            )
            ratio = ours["seconds"] / baseline["seconds"]
            say(
                f"  ours, run_gc batch_size {size} (archive + delete per batch; Qdrant: "
                f"empty local store, no collection, its deletes skipped): {ours['seconds']:.2f} s, "
                f"ours/baseline {ratio:.2f}; expired {done.get('expired')}, pruned "
                f"{done.get('pruned')}, batches {done.get('batches')}, longest batch "
                f"{done.get('longest_batch_ms')} ms; archived {archived}; same rows removed as the "
                f"baseline: {same} (removed only by ours {removed_only_ours}, only by the "
                f"baseline {removed_only_base}); load average {load_average()}"
            )
            say(f"    writer during it: {ours_writer.text()}")
            sql_ms = sum(total for _, total, _ in statements)
            say(
                f"    server time of its statements {sql_ms / 1000:.2f} s of "
                f"{ours['seconds']:.2f} s; biggest:"
            )
            for text, total, count in statements[:6]:
                say(f"      {total / 1000:7.2f} s  x{count:<4} {text}")
            runs.append(
                ours
                | {
                    "ratio": round(ratio, 3),
                    "writer": ours_writer.__dict__,
                    "archived": archived,
                    "same_rows_removed": same,
                    "removed_only_ours": removed_only_ours,
                    "removed_only_baseline": removed_only_base,
                    "sql_s": round(sql_ms / 1000, 3),
                    "statements": [
                        {"statement": text, "s": round(total / 1000, 3), "count": count}
                        for text, total, count in statements[:10]
                    ],
                }
            )
            correct = same
            goals.append(
                Goal(
                    f"(b) run_gc batch {size} time / single DELETE <= {GOAL_GC_RATIO}"
                    + ("" if correct else " (removed a different set)"),
                    ratio <= GOAL_GC_RATIO and correct,
                    round(ratio, 3),
                    GOAL_GC_RATIO,
                )
            )
            longest = float(done.get("longest_batch_ms", 0))
            goals.append(
                Goal(
                    f"(b) run_gc batch {size} longest batch <= {GOAL_BATCH_MS:.0f} ms",
                    longest <= GOAL_BATCH_MS,
                    longest,
                    GOAL_BATCH_MS,
                    " ms",
                )
            )
            say(
                f"    writer worst latency: ours {ours_writer.worst_ms:.1f} ms vs baseline "
                f"{base_writer.worst_ms:.1f} ms (p99 {ours_writer.p99_ms:.1f} vs "
                f"{base_writer.p99_ms:.1f} ms)"
            )
        figures["ours"] = runs
    finally:
        server.stop(mode="immediate")
    figures["seconds"] = round(time.perf_counter() - began_part, 1)
    say()
    return figures, goals


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=("a", "b"), help="run one part")
    parser.add_argument("--writer", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        return asyncio.run(writer_main(args.writer))

    started = time.monotonic()
    say = Out(args.json)
    sizes = QUICK if args.quick else FULL
    host = machine()
    blas = host["blas"]
    say(machine_line(host))
    say(
        f"BLAS: {blas.get('name')} {blas.get('version')} ({blas.get('configuration')}); "
        f"runtime core {blas.get('core', '?')}, {blas.get('threads', '?')} threads; "
        f"environment {host['openblas_env']}"
    )
    say()
    report: dict[str, Any] = {"quick": args.quick, "machine": host}
    goals: list[Goal] = []
    if args.only in (None, "a"):
        report["duplicates"], part = bench_duplicates(sizes, say)
        goals += part
    if args.only in (None, "b"):
        with scratch_directory("aistack-bench-gc-") as directory:
            report["postgres"], part = asyncio.run(bench_postgres(sizes, say, directory))
        goals += part
    finish(report, goals, say, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
