#!/usr/bin/env python3
"""Growth benchmark: a year of continuous learning with the nightly GC on a compressed clock.

    python3 bench/growth.py [--quick] [--days N] [--per-day N] [--json] [--plot PNG]

Each simulated day writes --per-day solutions (default 2,000, about 2 KB each: a query of
about 200 bytes and a solution of about 1.8 KB of pseudo-words drawn from a seeded
vocabulary) into `solved_issues` of a private PostgreSQL server (`PrivatePostgres`,
migrated with `aistack.stores.schema.migrate`) and into the Qdrant collection of a real
Qdrant local-mode store (`VectorStore`, a directory). The rows carry simulated
`created_at` values spread over their day; then the nightly GC runs for real,
`aistack.gc.job.run_gc(..., now=<the simulated night>)`, with the default [gc] settings
(max_age_days 30, min_value_score 0.5, max_solutions 100,000, prune_fraction 0.2,
deduplicate_similarity 0.95, archive_days 30).

Writes follow the product's write path (`gateway/learn.py`): the same columns of
`solved_issues` and a point per row with `point_payload(value_score, created_at)`, but
batched, one INSERT ... SELECT FROM unnest() and one Qdrant upsert per day, and without
the gateway's per-request write-time merge (a nearest-neighbour query per write, which
local mode answers in about 0.1 s at 100k points). So every near-duplicate reaches the
store and the nightly GC's deduplication removes it; what the write-time merge would
have folded away at once is counted here as removed by the GC the same night.

Vectors are synthetic, not embeddings (embedding 730k texts with the real model would
take hours on two cores): 384-dimensional unit vectors from a topic-cluster model. A
distinct solution is normalise(0.6 * topic + 0.8 * random unit vector) for one of 256
seeded topic vectors (cosine between two distinct ones about 0.36 in a topic, about 0
across topics: far below 0.95). A near-duplicate (--duplicate-share, default 25%) copies
a distinct solution of the last 7 days: its vector is that solution's vector plus
Gaussian noise of norm 0.15 (cosine about 0.99 to it, about 0.98 to its siblings: above
the GC's 0.95), its texts are the source's texts with a few words changed.
Low-value solutions (--low-value-share, default 20%) get value_score uniform in
[0, min_value_score); the others uniform in [min_value_score, 1].

Compressed clock: the GC's `now` is the simulated night (03:00 after each day); rows'
created_at and points' payloads carry simulated times. The archive's `archived_at` is
stamped by PostgreSQL with the wall clock (`DEFAULT now()`), which the simulated
`archive_days` purge would never reach, so after each run the bench sets `archived_at` of
that run's archive batches to the simulated night (the only write outside the product's
own code paths; nothing in daemon/ is changed). Autovacuum stays on with
autovacuum_naptime = 1 s, so it gets a chance every simulated day as it would in a real one.

Every 30 simulated days ("a month") the bench records: pg_database_size; the total
(table + TOAST + indexes) size of `solved_issues` and of `solved_issues_archive`; the
Qdrant collection's bytes on disk (`VectorStore.storage_bytes`: the local-mode directory;
a Qdrant server lays data out differently); live rows; rows the GC removed as expired,
pruned and duplicate. Growth of a month = its end size minus the previous month's end
size; steady-state growth = the mean growth of the last 3 months.

Storage that deduplication saved, at the end of a month: let D be the rows the GC removed
as duplicates that would still be live without deduplication (value_score >=
min_value_score, or created within max_age_days, so expiry would not have taken them
yet), L the live rows, and b the bytes per live row of the learning store ((solutions
table total size + vector bytes) / L). Saved bytes = D * b; saving % = D / (L + D), the
share of a store without deduplication that is duplicates. Pruning is not replayed for
the store without deduplication: once max_solutions caps the store, deduplication no
longer shrinks it but leaves room for that many distinct rows instead.

Goals (roadmap): steady-state PostgreSQL growth < 100 MB/month, vector growth < 50
MB/month, deduplication saving >= 20% at the end. Each prints PASS or FAIL; the exit status
is 0 unless something crashed. A PNG plot (matplotlib, headless) goes to --plot. Figures
come from one run on a shared machine. Qdrant local mode is slow (about 3 ms per point
written, and every GC pass scrolls all points with their vectors): on two cores the full
default run took 1 h 53 min; --per-day 250 runs a year in about 20 minutes.
--quick: 90 days x 250 a day, a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
import numpy.typing as npt

# The repository on sys.path, for `bench.common`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aistack.config import Config
from aistack.gc.job import run_gc
from aistack.stores.private_postgres import PrivatePostgres
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import migrate
from aistack.stores.solutions import COLLECTION, point_payload
from bench.common import (
    DimensionOnlyEmbedder,
    Goal,
    Out,
    finish,
    gc_run_config,
    load_average,
    machine,
    machine_line,
    progress,
    scratch_directory,
)

DIMENSION = 384
TOPICS = 256
TOPIC_WEIGHT = 0.6
NOISE_NORM = 0.15
POOL_DAYS = 7
MONTH_DAYS = 30
STEADY_MONTHS = 3
START = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
NIGHT = datetime.timedelta(hours=27)  # 03:00 after the day
QUERY_WORDS = 26  # about 200 bytes
SOLUTION_WORDS = 235  # about 1.8 KB
CHANGED_WORDS = 4  # words a near-duplicate changes in each text

GOAL_PG_MB = 100.0
GOAL_VECTOR_MB = 50.0
GOAL_DEDUP_PERCENT = 20.0

MB = 1e6
DEFAULT_PLOT = Path(__file__).resolve().parent / "out" / "growth.png"


# --- the synthetic workload --------------------------------------------------------------


@dataclass
class Day:
    queries: list[str]
    solutions: list[str]
    scores: npt.NDArray[np.float64]
    created: list[datetime.datetime]
    vectors: npt.NDArray[np.float32]
    duplicate: npt.NDArray[np.bool_]


def unit_rows(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def make_vocabulary(rng: np.random.Generator, size: int = 4096) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + [
        "sql", "nix", "py", "gc", "tls", "dns", "io", "db", "api", "ssl",
    ]  # fmt: skip
    words: set[str] = set()
    while len(words) < size:
        parts = rng.integers(0, len(syllables), int(rng.integers(1, 5)))
        words.add("".join(syllables[p] for p in parts))
    return sorted(words)


class Workload:
    """Seeded solutions, day by day; near-duplicates copy distinct ones of recent days."""

    def __init__(
        self, seed: int, per_day: int, duplicate_share: float, low_value_share: float, low: float
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.per_day = per_day
        self.duplicate_share = duplicate_share
        self.low_value_share = low_value_share
        self.low = low
        self.words = np.array(make_vocabulary(self.rng), dtype=object)
        self.topics = unit_rows(self.rng.standard_normal((TOPICS, DIMENSION), dtype=np.float32))
        # The distinct solutions of the last POOL_DAYS days: (vectors, queries, solutions).
        self.pool: list[tuple[npt.NDArray[np.float32], list[str], list[str]]] = []

    def text(self, count: int, words: int) -> list[str]:
        picks = self.words[self.rng.integers(0, self.words.size, (count, words))]
        return [" ".join(row) for row in picks]

    def changed(self, text: str) -> str:
        words = text.split(" ")
        for where in self.rng.integers(0, len(words), CHANGED_WORDS):
            words[where] = str(self.words[self.rng.integers(0, self.words.size)])
        return " ".join(words)

    def day(self, index: int) -> Day:
        rng = self.rng
        duplicates = round(self.per_day * self.duplicate_share)
        distinct = self.per_day - duplicates
        topic = rng.integers(0, TOPICS, distinct)
        spread = unit_rows(rng.standard_normal((distinct, DIMENSION), dtype=np.float32))
        vectors = unit_rows(
            TOPIC_WEIGHT * self.topics[topic] + (1 - TOPIC_WEIGHT**2) ** 0.5 * spread
        )
        queries = [f"how to fix: {q}" for q in self.text(distinct, QUERY_WORDS)]
        solutions = self.text(distinct, SOLUTION_WORDS)
        self.pool.append((vectors, queries, solutions))
        self.pool = self.pool[-POOL_DAYS:]
        pool_vectors = np.concatenate([p[0] for p in self.pool])
        pool_queries = [q for p in self.pool for q in p[1]]
        pool_solutions = [s for p in self.pool for s in p[2]]

        source = rng.integers(0, pool_vectors.shape[0], duplicates)
        noise = rng.standard_normal((duplicates, DIMENSION), dtype=np.float32)
        noise *= NOISE_NORM / DIMENSION**0.5
        copies = unit_rows(pool_vectors[source] + noise)
        all_vectors = np.concatenate([vectors, copies])
        all_queries = queries + [self.changed(pool_queries[s]) for s in source]
        all_solutions = solutions + [self.changed(pool_solutions[s]) for s in source]
        is_duplicate = np.concatenate([np.zeros(distinct, bool), np.ones(duplicates, bool)])

        low = rng.random(self.per_day) < self.low_value_share
        scores = np.where(
            low,
            rng.random(self.per_day) * self.low,
            self.low + rng.random(self.per_day) * (1 - self.low),
        )
        order = rng.permutation(self.per_day)  # near-duplicates arrive among the others
        day_start = START + datetime.timedelta(days=index)
        step = 86400 / self.per_day
        created = [day_start + datetime.timedelta(seconds=i * step) for i in range(self.per_day)]
        return Day(
            [all_queries[i] for i in order],
            [all_solutions[i] for i in order],
            scores[order],
            created,
            np.ascontiguousarray(all_vectors[order]),
            is_duplicate[order],
        )


# --- the simulation ----------------------------------------------------------------------

INSERT_DAY = """
INSERT INTO solved_issues (query, solution, value_score, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::timestamptz[])
RETURNING id, created_at
"""
SIZES = """
SELECT pg_database_size(current_database()) AS database,
       pg_total_relation_size('solved_issues') AS solutions,
       pg_total_relation_size('solved_issues_archive') AS archive,
       (SELECT count(*) FROM solved_issues) AS live
"""


@dataclass
class Month:
    month: int
    day: int
    pg_mb: float
    solutions_mb: float
    archive_mb: float
    vector_mb: float
    live: int
    points: int
    expired: int
    pruned: int
    duplicate: int
    dedup_would_live: int
    dedup_saved_mb: float
    dedup_saved_percent: float
    pg_growth_mb: float = 0.0
    vector_growth_mb: float = 0.0
    gc_seconds: float = 0.0


@dataclass
class Totals:
    expired: int = 0
    pruned: int = 0
    duplicate: int = 0
    gc_seconds: float = 0.0
    write_seconds: float = 0.0
    generate_seconds: float = 0.0
    months: list[Month] = field(default_factory=list)


async def measure(
    db: asyncpg.Connection,
    store: VectorStore,
    config: Config,
    month: int,
    day: int,
    totals: Totals,
    removed_ids: list[int],
    scores: npt.NDArray[np.float64],
    created: npt.NDArray[np.float64],
    now: datetime.datetime,
) -> Month:
    sizes = await db.fetchrow(SIZES)
    vector_bytes = await store.storage_bytes(COLLECTION)
    points = await store.count(COLLECTION)
    live = int(sizes["live"])
    gone = np.asarray(removed_ids, dtype=np.int64)
    cutoff = (now - datetime.timedelta(days=config.gc.max_age_days)).timestamp()
    would_live = int(
        np.count_nonzero((scores[gone] >= config.gc.min_value_score) | (created[gone] >= cutoff))
    )
    per_row = (sizes["solutions"] + vector_bytes) / live if live else 0.0
    return Month(
        month=month,
        day=day,
        pg_mb=sizes["database"] / MB,
        solutions_mb=sizes["solutions"] / MB,
        archive_mb=sizes["archive"] / MB,
        vector_mb=vector_bytes / MB,
        live=live,
        points=points,
        expired=totals.expired,
        pruned=totals.pruned,
        duplicate=totals.duplicate,
        dedup_would_live=would_live,
        dedup_saved_mb=would_live * per_row / MB,
        dedup_saved_percent=100 * would_live / (live + would_live) if live + would_live else 0.0,
    )


async def simulate(args: argparse.Namespace, directory: Path, say: Out) -> tuple[Totals, Month]:
    server = PrivatePostgres(directory / "server")
    store: VectorStore | None = None
    totals = Totals()
    try:
        server.start()
        qdrant_path = directory / "qdrant"
        qdrant_path.mkdir()
        config = gc_run_config(server.dsn, qdrant_path, {"max_solutions": args.max_solutions})
        db = await asyncpg.connect(server.dsn)
        try:
            await db.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
            await db.execute("SELECT pg_reload_conf()")
            version = await db.fetchval("SHOW server_version")
            await migrate(db)
            store = VectorStore.connect(config.qdrant)
            await store.ensure_collection(COLLECTION, DIMENSION)
            say(
                f"PostgreSQL {version} (private server), Qdrant local mode at {qdrant_path}; "
                f"gc: {config.gc.model_dump()}"
            )
            workload = Workload(
                args.seed, args.per_day, args.duplicate_share, args.low_value_share,
                config.gc.min_value_score,
            )  # fmt: skip
            total_rows = args.days * args.per_day
            scores = np.zeros(total_rows + 1, dtype=np.float64)  # by row id (1, 2, ...)
            created = np.zeros(total_rows + 1, dtype=np.float64)
            removed_ids: list[int] = []
            start = await measure(db, store, config, 0, 0, totals, [], scores, created, START)
            previous = start
            for index in range(args.days):
                began = time.perf_counter()
                day = workload.day(index)
                totals.generate_seconds += time.perf_counter() - began
                began = time.perf_counter()
                async with db.transaction():
                    rows = await db.fetch(
                        INSERT_DAY, day.queries, day.solutions, day.scores.tolist(), day.created
                    )
                    ids = [r["id"] for r in rows]
                    await store.upsert(
                        COLLECTION,
                        ids,
                        day.vectors.tolist(),
                        [
                            point_payload(float(s), r["created_at"])
                            for s, r in zip(day.scores, rows, strict=True)
                        ],
                    )
                id_array = np.asarray(ids, dtype=np.int64)
                scores[id_array] = day.scores
                created[id_array] = [c.timestamp() for c in day.created]
                totals.write_seconds += time.perf_counter() - began

                night = START + datetime.timedelta(days=index) + NIGHT
                began = time.perf_counter()
                result = await run_gc(
                    config, store, DimensionOnlyEmbedder(DIMENSION), now=night, progress=None
                )
                await db.execute(
                    "UPDATE solved_issues_archive SET archived_at = $2 WHERE run_id = $1",
                    result.run_id,
                    night,
                )
                gc_seconds = time.perf_counter() - began
                totals.gc_seconds += gc_seconds
                done = result.done
                totals.expired += done.get("expired", 0)
                totals.pruned += done.get("pruned", 0)
                totals.duplicate += done.get("duplicate", 0)
                removed_ids.extend(result.plan.duplicate)
                if (index + 1) % 10 == 0 or index == 0:
                    progress(
                        f"day {index + 1}/{args.days}: rows {result.plan.rows:,} before gc, "
                        f"removed expired {done.get('expired', 0)}, pruned "
                        f"{done.get('pruned', 0)}, duplicate {done.get('duplicate', 0)}; "
                        f"gc {gc_seconds:.1f} s; load average {load_average()}"
                    )
                if (index + 1) % MONTH_DAYS == 0:
                    month = await measure(
                        db, store, config, (index + 1) // MONTH_DAYS, index + 1, totals,
                        removed_ids, scores, created, night,
                    )  # fmt: skip
                    month.pg_growth_mb = month.pg_mb - previous.pg_mb
                    month.vector_growth_mb = month.vector_mb - previous.vector_mb
                    month.gc_seconds = totals.gc_seconds
                    totals.months.append(month)
                    previous = month
                    progress(
                        f"month {month.month}: PG {month.pg_mb:.1f} MB "
                        f"(+{month.pg_growth_mb:.1f}), vectors {month.vector_mb:.1f} MB "
                        f"(+{month.vector_growth_mb:.1f}), live {month.live:,}"
                    )
        finally:
            await db.close()
    finally:
        if store is not None:
            await store.close()
        server.stop(mode="immediate")
    return totals, start


# --- the report --------------------------------------------------------------------------


def table(months: list[Month], start: Month) -> list[str]:
    lines = [
        f"{'month':>5} {'day':>4} {'PG MB':>8} {'+MB':>7} {'table':>7} {'archive':>7} "
        f"{'vec MB':>7} {'+MB':>6} {'live':>8} {'dedup':>8} {'expired':>8} {'pruned':>8} "
        f"{'saved':>6}",
        f"{0:>5} {0:>4} {start.pg_mb:>8.1f} {'':>7} {start.solutions_mb:>7.1f} "
        f"{start.archive_mb:>7.1f} {start.vector_mb:>7.1f} {'':>6} {start.live:>8,}",
    ]
    for m in months:
        lines.append(
            f"{m.month:>5} {m.day:>4} {m.pg_mb:>8.1f} {m.pg_growth_mb:>+7.1f} "
            f"{m.solutions_mb:>7.1f} {m.archive_mb:>7.1f} {m.vector_mb:>7.1f} "
            f"{m.vector_growth_mb:>+6.1f} {m.live:>8,} {m.duplicate:>8,} {m.expired:>8,} "
            f"{m.pruned:>8,} {m.dedup_saved_percent:>5.1f}%"
        )
    return lines


def plot(months: list[Month], start: Month, path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    x = [0] + [m.month for m in months]
    figure, left = plt.subplots(figsize=(9, 5))
    left.plot(x, [start.pg_mb] + [m.pg_mb for m in months], "o-", label="PostgreSQL MB")
    left.plot(x, [start.vector_mb] + [m.vector_mb for m in months], "s-", label="vectors MB")
    left.set_xlabel("simulated month (30 days)")
    left.set_ylabel("MB on disk")
    left.grid(True, alpha=0.3)
    right = left.twinx()
    right.plot(x, [start.live] + [m.live for m in months], "--", color="gray", label="live rows")
    right.set_ylabel("live rows")
    handles = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left")
    left.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a share is between 0 and 1")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=365, help="simulated days (default 365)")
    parser.add_argument(
        "--per-day", type=int, default=2000, help="solutions learned a day (default 2000)"
    )
    parser.add_argument(
        "--duplicate-share", type=share, default=0.25,
        help="share of near-duplicates of recent solutions (default 0.25)",
    )  # fmt: skip
    parser.add_argument(
        "--low-value-share", type=share, default=0.20,
        help="share with value_score below the GC's min_value_score (default 0.20)",
    )  # fmt: skip
    parser.add_argument(
        "--max-solutions",
        type=int,
        default=100_000,
        help="gc.max_solutions (default 100000, the product's); with --per-day 250 and "
        "--max-solutions 12500 the roadmap's rate runs at 1/8 scale, reaching the cap when "
        "it would (about day 80)",
    )
    parser.add_argument("--seed", type=int, default=20_261_125, help="workload seed")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 90 days x 250 a day (about 3 minutes)"
    )
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.days, args.per_day = 90, 250
    if args.days < 1 or args.per_day < 1 or args.max_solutions < 1:
        parser.error("--days, --per-day and --max-solutions must be positive")
    logging.getLogger("aistack").setLevel(logging.WARNING)
    # qdrant-client warns about local mode past 20,000 points on every upsert; said once above.
    warnings.filterwarnings("ignore", message="Local mode is not recommended")

    # An hour-long run is often stopped with kill or by a supervisor: stop it as Ctrl-C
    # does, so the private PostgreSQL server is shut down and its files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    say = Out(args.json)
    host = machine()
    say(machine_line(host))
    say(
        f"workload: {args.days} days x {args.per_day:,} solutions (~2 KB), near-duplicates "
        f"{args.duplicate_share:.0%}, low-value {args.low_value_share:.0%}, seed {args.seed}; "
        "synthetic 384-dim vectors (topic clusters), nightly GC on a compressed clock"
    )
    try:
        with scratch_directory("aistack-bench-growth-") as directory:
            totals, start = asyncio.run(simulate(args, directory, say))
    except KeyboardInterrupt:
        progress("interrupted: the servers are stopped and the files removed")
        return 130
    elapsed = time.monotonic() - started

    months = totals.months
    say()
    for line in table(months, start):
        say(line)
    say(
        "(PG MB = pg_database_size; table = solved_issues with TOAST and indexes; archive = "
        "solved_issues_archive; dedup/expired/pruned = rows removed so far; saved = "
        "deduplication saving, see --help)"
    )
    goals: list[Goal] = []
    if months:
        steady = months[-STEADY_MONTHS:]
        pg_growth = sum(m.pg_growth_mb for m in steady) / len(steady)
        vector_growth = sum(m.vector_growth_mb for m in steady) / len(steady)
        last = months[-1]
        say(
            f"steady state (mean of months {steady[0].month}-{steady[-1].month}): PostgreSQL "
            f"{pg_growth:+.1f} MB/month, vectors {vector_growth:+.1f} MB/month; deduplication "
            f"saved {last.dedup_saved_mb:.1f} MB ({last.dedup_would_live:,} rows) at the end"
        )
        goals = [
            Goal(
                f"PostgreSQL growth < {GOAL_PG_MB:.0f} MB/month",
                pg_growth < GOAL_PG_MB, round(pg_growth, 1), GOAL_PG_MB, " MB/month",
            ),
            Goal(
                f"vector growth < {GOAL_VECTOR_MB:.0f} MB/month",
                vector_growth < GOAL_VECTOR_MB, round(vector_growth, 1), GOAL_VECTOR_MB,
                " MB/month",
            ),
            Goal(
                f"deduplication saving >= {GOAL_DEDUP_PERCENT:.0f}%",
                last.dedup_saved_percent >= GOAL_DEDUP_PERCENT,
                round(last.dedup_saved_percent, 1), GOAL_DEDUP_PERCENT, "%",
            ),
        ]  # fmt: skip
    else:
        say(f"fewer than {MONTH_DAYS} days: no month to report")
    title = f"aistack growth: {args.days} days x {args.per_day:,}/day, nightly GC"
    written = plot(months, start, args.plot, title) if months else None
    if months and written is None:
        say("matplotlib is missing: pip install matplotlib")
    elif written:
        say(f"plot: {written}")
    say(
        f"wall time {elapsed:.0f} s (generating {totals.generate_seconds:.0f} s, writing "
        f"{totals.write_seconds:.0f} s, GC {totals.gc_seconds:.0f} s)"
    )
    report = {
        "machine": host,
        "workload": {
            "days": args.days,
            "per_day": args.per_day,
            "duplicate_share": args.duplicate_share,
            "low_value_share": args.low_value_share,
            "seed": args.seed,
        },
        "start": asdict(start),
        "months": [asdict(m) for m in months],
        "plot": written,
    }
    finish(report, goals, say, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
