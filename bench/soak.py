#!/usr/bin/env python3
"""Soak: the gateway, the GC and ACME together, under mixed traffic, for a bounded time.

    python3 bench/soak.py [--duration SECONDS] [--rate REQUESTS_PER_S] [--json]

What runs, all on loopback, all real: a private PostgreSQL server (migrated with
`aistack db migrate`), pebble (Let's Encrypt's test CA) issuing the gateway's certificate
through `aistack acme renew`, and the gateway serving HTTPS with that certificate over a
Qdrant local-mode store holding the demo corpus and a learning store of --seed-rows
solved issues (synthetic vectors, a share of them near-duplicates, low-value or old, so the
GC has work to do).

Qdrant local mode admits one process, so the GC runs inside the gateway's process on
SIGUSR1 (as `aistack demo` runs it), with the same store; in production the GC is its own
unit against a Qdrant server. Everything else is the product as shipped.

Traffic (open loop, --rate requests/s, every request from a client address given in
X-Forwarded-For by a trusted proxy, 127.0.0.1):

* valid searches from 2,000 ordinary clients (IPv4 and IPv6, each far under its quota);
* invalid searches (unknown collection, 11 KB query, limit out of range, control
  characters, unknown field): 422;
* POST /hybrid/learn writes (new solutions and near-copies of stored ones);
* 10 "hot" clients searching at 4 requests/s each, over the 60/minute quota.

Events: a GC pass at 35% of the run; at 55% a forced renewal (`aistack acme renew
--force`) and SIGHUP to the gateway, after which new TLS handshakes must present the new
certificate.

Report: status counts per kind, 5xx (none allowed but deliberate 503s, and none are
deliberate here), p50/p99 of valid searches before, during and after the GC pass, RSS over
the run (growth under 10% from the end of warm-up to the end), file descriptors before and
after (no leak), and the rate limits: for every hot client and minute window in which it
was refused, exactly 60 requests admitted; ordinary clients never refused.

Needs pebble and pebble-challtestsrv (Debian: apt-get install pebble) and a PostgreSQL
server (apt-get install postgresql).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ holds acme.py and gc.py: at the head of sys.path they would shadow the `acme`
# library. The repository takes its place, for `bench.common`.
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import numpy as np  # noqa: E402

from aistack.stores.private_postgres import (  # noqa: E402
    PostgresNotFound,
    PostgresStartError,
    PrivatePostgres,
    free_port,
)
from bench.common import (  # noqa: E402
    QUERIES,
    SEARCH_COLLECTION,
    UNKNOWN_COLLECTION_BODY,
    Goal,
    Out,
    Server,
    aistack_argv,
    finish,
    machine,
    machine_line,
    scratch_directory,
)

CORPUS = REPO / "daemon" / "aistack" / "demo" / "corpus.jsonl"
DOMAIN = "soak.aistack.test"
HOT_CLIENTS = 10
HOT_RATE = 4.0  # requests/s per hot client: 240/minute against a quota of 60
MINUTE_QUOTA = 60
ORDINARY_V4 = 1500
ORDINARY_V6 = 500
WARMUP_FRACTION = 0.15
GC_AT = 0.35
RENEW_AT = 0.55
MAX_IN_FLIGHT = 256
RSS_GROWTH_GOAL = 0.10
POOL_SIZE = 10  # stores.postgres.open_pool's max_size
DIMENSION = 384

SOAK_QUERIES = QUERIES[:20]
INVALID_BODIES: list[dict[str, Any]] = [
    UNKNOWN_COLLECTION_BODY,
    {"collection": SEARCH_COLLECTION, "query": "x" * 11_000},
    {"collection": SEARCH_COLLECTION, "query": "install", "limit": 1_000_000},
    {"collection": SEARCH_COLLECTION, "query": "drop\x00table"},
    {"collection": SEARCH_COLLECTION, "query": "install", "admin": True},
    {"collection": "../../etc/passwd", "query": "install"},
]
RATE_FIELD = re.compile(r'"([^"]+)";r=(\d+);t=(\d+)')


say = Out(to_stderr=True, prefix="soak: ")


# --- the gateway process: serve() plus a GC pass on SIGUSR1 --------------------------------


def gc_figures(result: Any) -> dict[str, Any]:
    return {"counts": result.plan.counts(), "done": result.done}


def serve_with_gc(config_path: str) -> int:
    """Run in the child: the product's serve() with the GC in the same process."""
    from aistack.config import load_config
    from aistack.embedding import open_embedder
    from aistack.gateway.server import serve
    from aistack.gc.job import run_gc
    from aistack.observability.logs import setup_logging
    from aistack.stores.qdrant import VectorStore

    setup_logging("INFO")
    config = load_config(config_path)

    async def main() -> None:
        embedder = await open_embedder(config.embedding)
        store = VectorStore.connect(config.qdrant)
        loop = asyncio.get_running_loop()
        passes: set[asyncio.Task[None]] = set()

        async def gc_pass() -> None:
            print(f"SOAK-EVENT gc_started {time.time():.3f}", flush=True)
            result = await run_gc(config, store, embedder, progress=None)
            print(
                f"SOAK-EVENT gc_finished {time.time():.3f} {json.dumps(gc_figures(result))}",
                flush=True,
            )

        def start_gc() -> None:
            task = loop.create_task(gc_pass())
            passes.add(task)
            task.add_done_callback(passes.discard)

        loop.add_signal_handler(signal.SIGUSR1, start_gc)
        try:
            await serve(config, embedder=embedder, store=store)
        finally:
            await store.close()
            await embedder.close()

    asyncio.run(main())
    return 0


# --- setup: PostgreSQL, pebble, certificate, stores ---------------------------------------


def aistack(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(aistack_argv(*args), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"aistack {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def write_config(work: Path, dsn: str, pebble: Any, port: int) -> Path:
    certs = work / "certs"
    config = {
        "gateway": {
            "listen": [f"127.0.0.1:{port}"],
            "trusted_proxies": ["127.0.0.1/32"],
            "tls_cert_file": str(certs / DOMAIN / "fullchain.pem"),
            "tls_key_file": str(certs / DOMAIN / "key.pem"),
        },
        "qdrant": {"path": str(work / "qdrant")},
        "postgres": {"dsn": dsn},
        "validation": {"collections": [SEARCH_COLLECTION]},
        "gc": {"max_age_days": 30, "min_value_score": 0.5, "max_solutions": 100_000},
        "acme": {
            "domains": [DOMAIN],
            "email": "soak@aistack.test",
            "accept_terms": True,
            "directory_url": pebble.directory_url,
            "ca_bundle": str(pebble.ca_file),
            "challenge": "standalone",
            "http_address": pebble.http_address,
            "cert_dir": str(certs),
            "state_dir": str(work / "acme-state"),
        },
    }
    path = work / "aistack.json"
    path.write_text(json.dumps(config, indent=2))
    return path


async def seed_learning_store(config_path: Path, rows: int, seed: int) -> dict[str, int]:
    """`rows` solved issues straight into PostgreSQL and Qdrant, as learn.py writes them:
    20% near-copies of an earlier row, 20% low-value, 20% older than max_age_days."""
    from aistack.config import load_config
    from aistack.stores.qdrant import VectorStore
    from aistack.stores.solutions import COLLECTION as SOLUTIONS
    from aistack.stores.solutions import point_payload

    config = load_config(config_path)
    rng = np.random.default_rng(seed)
    now = datetime.datetime.now(datetime.UTC)
    vectors = rng.standard_normal((rows, DIMENSION)).astype(np.float32)
    copies = rng.random(rows) < 0.2
    for index in np.flatnonzero(copies):
        if index:
            original = vectors[rng.integers(0, index)]
            vectors[index] = original + rng.standard_normal(DIMENSION).astype(np.float32) * 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = np.where(
        rng.random(rows) < 0.2, rng.uniform(0.0, 0.4, rows), rng.uniform(0.6, 1.0, rows)
    )
    ages = np.where(rng.random(rows) < 0.2, rng.uniform(31, 90, rows), rng.uniform(0, 29, rows))
    records = [
        (
            f"soak question {number}: " + "how do I configure this service? " * 8,
            f"soak answer {number}: " + "set the option, rebuild and check the journal. " * 35,
            float(scores[number]),
            now - datetime.timedelta(days=float(ages[number])),
        )
        for number in range(rows)
    ]
    db = await asyncpg.connect(config.postgres.dsn)
    try:
        ids = [
            row["id"]
            for row in await db.fetch(
                "INSERT INTO solved_issues (query, solution, value_score, created_at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::timestamptz[])"
                " RETURNING id",
                [r[0] for r in records],
                [r[1] for r in records],
                [r[2] for r in records],
                [r[3] for r in records],
            )
        ]
    finally:
        await db.close()
    store = VectorStore.connect(config.qdrant)
    try:
        await store.ensure_collection(SOLUTIONS, DIMENSION)
        for start in range(0, rows, 1000):
            chunk = slice(start, start + 1000)
            await store.upsert(
                SOLUTIONS,
                ids[chunk],
                vectors[chunk].tolist(),
                [point_payload(r[2], r[3]) for r in records[chunk]],
            )
    finally:
        await store.close()
    return {
        "rows": rows,
        "near_copies": int(copies.sum()),
        "low_value": int((scores < 0.5).sum()),
        "old": int((ages > 30).sum()),
    }


def served_serial(port: int, roots: Path) -> int:
    """The serial of the certificate a new TLS handshake gets, verified against pebble."""
    import socket

    from cryptography import x509

    context = ssl.create_default_context(cafile=str(roots))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- the gateway process, watched ----------------------------------------------------------


def gateway_server(config: Path, log: Path, port: int, roots: Path) -> Server:
    """The product's serve() with a GC pass on SIGUSR1, up once it hands out its certificate."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(config)]
    return Server("gateway", argv, port, log, lambda port: bool(served_serial(port, roots)))


def gateway_events(gateway: Server, name: str) -> list[list[str]]:
    prefix = f"SOAK-EVENT {name} "
    return [
        line[len(prefix) :].split(" ", 1)
        for line in gateway.log_text().splitlines()
        if line.startswith(prefix)
    ]


def descriptor_counts(gateway: Server, postgres_port: int) -> dict[str, int]:
    """Open descriptors: client connections to the gateway, connections of its
    PostgreSQL pool (bounded by its size, reused), and everything else."""
    clients, pool = socket_inodes(gateway.port, postgres_port)
    counts = {"client_connections": 0, "postgres_connections": 0, "other": 0}
    for entry in os.listdir(f"/proc/{gateway.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{gateway.pid}/fd/{entry}")
        except OSError:
            continue  # closed meanwhile
        inode = target[8:-1] if target.startswith("socket:[") else ""
        if inode in clients:
            counts["client_connections"] += 1
        elif inode in pool:
            counts["postgres_connections"] += 1
        else:
            counts["other"] += 1
    return counts


def socket_inodes(local_port: int, remote_port: int) -> tuple[set[str], set[str]]:
    """Inodes of TCP connections (not listeners) on `local_port`, and of those to
    `remote_port`, from /proc/net/tcp{,6}."""
    accepted: set[str] = set()
    outgoing: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                accepted.add(fields[9])
            elif int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                outgoing.add(fields[9])
    return accepted, outgoing


# --- traffic ------------------------------------------------------------------------------


@dataclass
class Answer:
    kind: str
    client: str
    sent: float  # wall clock
    seconds: float
    status: int  # 0: no answer (connection error)
    rate_field: str = ""


@dataclass
class Traffic:
    answers: list[Answer] = field(default_factory=list)
    skipped: int = 0  # requests not sent because MAX_IN_FLIGHT were outstanding
    errors: Counter[str] = field(default_factory=Counter)


def ordinary_clients(rng: random.Random) -> list[str]:
    v4 = [f"198.18.{n // 250}.{n % 250 + 1}" for n in range(ORDINARY_V4)]
    v6 = [
        f"2001:db8:{n:x}:{rng.randrange(256):x}00::{rng.randrange(1, 9999):x}"
        for n in range(ORDINARY_V6)
    ]
    return v4 + v6


def pick_request(
    rng: random.Random, clients: list[str], learned: int
) -> tuple[str, str, str, dict[str, Any]]:
    """(kind, client, path, body) for one ordinary request."""
    client = rng.choice(clients)
    draw = rng.random()
    if draw < 0.60:
        query = rng.choice(SOAK_QUERIES)
        if rng.random() < 0.3:
            query += f" ({rng.randrange(10**6)})"  # not in the query cache: embedded
        body = {
            "collection": SEARCH_COLLECTION,
            "query": query,
            "limit": rng.choice([5, 10, 20]),
            "offset": rng.choice([0, 0, 0, 10]),
        }
        return "search", client, "/vector/search", body
    if draw < 0.85:
        return "invalid", client, "/vector/search", rng.choice(INVALID_BODIES)
    base = rng.choice(SOAK_QUERIES)
    query = base if rng.random() < 0.5 else f"{base}, case {learned}"
    body = {
        "query": query,
        "solution": "Set the option and rebuild. " * 20,
        "value_score": round(rng.uniform(0.3, 1.0), 2),
    }
    return "learn", client, "/hybrid/learn", body


async def send(
    session: aiohttp.ClientSession,
    base: str,
    kind: str,
    client: str,
    path: str,
    body: dict[str, Any],
    traffic: Traffic,
    gate: asyncio.Semaphore,
) -> None:
    sent = time.time()
    started = time.perf_counter()
    status = 0
    rate_field = ""
    try:
        async with session.post(
            base + path, json=body, headers={"X-Forwarded-For": client}
        ) as response:
            await response.read()
            status = response.status
            rate_field = response.headers.get("RateLimit", "")
    except (aiohttp.ClientError, TimeoutError) as error:
        traffic.errors[error.__class__.__name__] += 1
    finally:
        gate.release()
    traffic.answers.append(
        Answer(kind, client, sent, time.perf_counter() - started, status, rate_field)
    )


async def drive(
    base: str,
    roots: Path,
    duration: float,
    rate: float,
    seed: int,
    events: list[tuple[float, Any]],
) -> Traffic:
    """Send traffic for `duration` s; run each (fraction, callable) event at its time."""
    rng = random.Random(seed)
    clients = ordinary_clients(rng)
    hot = [f"203.0.113.{n + 1}" for n in range(HOT_CLIENTS)]
    context = ssl.create_default_context(cafile=str(roots))
    context.check_hostname = False
    traffic = Traffic()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    ordinary_rate = max(0.0, rate - HOT_CLIENTS * HOT_RATE)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, ssl=context)
    timeout = aiohttp.ClientTimeout(total=60)
    pending_events = sorted(events, key=lambda event: event[0])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.monotonic()
        sent_ordinary = 0.0
        sent_hot = [0.0] * HOT_CLIENTS
        learned = 0
        last_report = began
        while (elapsed := time.monotonic() - began) < duration:
            while pending_events and elapsed >= pending_events[0][0] * duration:
                _, action = pending_events.pop(0)
                tasks.add(asyncio.create_task(asyncio.to_thread(action)))
            batch: list[tuple[str, str, str, dict[str, Any]]] = []
            while sent_ordinary < elapsed * ordinary_rate:
                kind, client, path, body = pick_request(rng, clients, learned)
                learned += kind == "learn"
                batch.append((kind, client, path, body))
                sent_ordinary += 1
            for number, client in enumerate(hot):
                while sent_hot[number] < elapsed * HOT_RATE:
                    body = {"collection": SEARCH_COLLECTION, "query": rng.choice(SOAK_QUERIES)}
                    batch.append(("hot", client, "/vector/search", body))
                    sent_hot[number] += 1
            for kind, client, path, body in batch:
                if gate.locked():
                    traffic.skipped += 1
                    continue
                await gate.acquire()
                task = asyncio.create_task(
                    send(session, base, kind, client, path, body, traffic, gate)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                say(
                    f"{elapsed:4.0f} s of {duration:.0f}: {len(traffic.answers)} answers, "
                    f"{len(tasks)} in flight"
                )
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, return_exceptions=True)
    return traffic


# --- analysis -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rate_limit_check(answers: list[Answer]) -> dict[str, Any]:
    """Hot clients: per (client, minute window) the admitted count, from the window the
    server named in each answer's RateLimit field (its end is the answer time plus t)."""
    admitted: Counter[tuple[str, int]] = Counter()
    refused: Counter[tuple[str, int]] = Counter()
    unreadable = 0
    for answer in answers:
        if answer.kind != "hot" or not answer.status:
            continue
        match = RATE_FIELD.match(answer.rate_field)
        if match is None or match.group(1) != "minute":
            unreadable += 1
            continue
        window_end = round((answer.sent + answer.seconds + int(match.group(3))) / 60)
        key = (answer.client, window_end)
        if answer.status == 429:
            refused[key] += 1
        else:
            admitted[key] += 1
    windows = set(admitted) | set(refused)
    over = sorted(key for key in windows if admitted[key] > MINUTE_QUOTA)
    refused_windows = [key for key in windows if refused[key]]
    exact = [key for key in refused_windows if admitted[key] == MINUTE_QUOTA]
    ordinary_refused = sum(1 for answer in answers if answer.kind != "hot" and answer.status == 429)
    return {
        "hot_windows": len(windows),
        "refused_windows": len(refused_windows),
        "refused_windows_exact": len(exact),
        "windows_over_quota": len(over),
        "unreadable_fields": unreadable,
        "ordinary_clients_refused": ordinary_refused,
        "admitted_in_refused_windows": sorted({admitted[key] for key in refused_windows}),
    }


def analyse(traffic: Traffic, gc_window: tuple[float, float], warm_until: float) -> dict[str, Any]:
    statuses: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, status), count in sorted(
        Counter((a.kind, a.status) for a in traffic.answers).items()
    ):
        statuses[kind][str(status)] = count
    server_errors = Counter(a.status for a in traffic.answers if a.status >= 500)
    gc_start, gc_end = gc_window

    def phase(answer: Answer) -> str | None:
        if answer.sent < warm_until:
            return None
        if answer.sent < gc_start:
            return "before"
        if answer.sent <= gc_end:
            return "during"
        return "after"

    latencies: dict[str, list[float]] = defaultdict(list)
    for answer in traffic.answers:
        if answer.kind == "search" and answer.status == 200:
            name = phase(answer)
            if name:
                latencies[name].append(answer.seconds * 1000)
    return {
        "answers": len(traffic.answers),
        "skipped_by_client": traffic.skipped,
        "client_errors": dict(traffic.errors),
        "statuses": dict(statuses),
        "server_errors": {str(k): v for k, v in server_errors.items()},
        "search_latency_ms": {
            name: {
                "count": len(latencies[name]),
                "p50": round(percentile(latencies[name], 0.50), 1),
                "p99": round(percentile(latencies[name], 0.99), 1),
            }
            for name in ("before", "during", "after")
        },
        "rate_limits": rate_limit_check(traffic.answers),
    }


# --- the run ------------------------------------------------------------------------------


def soak(duration: float, rate: float, seed_rows: int, seed: int) -> dict[str, Any]:
    for tool in ("pebble", "pebble-challtestsrv"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: apt-get install pebble")
    with scratch_directory("aistack-soak-") as work:
        return soak_in(work, duration, rate, seed_rows, seed)


def soak_in(work: Path, duration: float, rate: float, seed_rows: int, seed: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.pebble import Pebble

    postgres = PrivatePostgres(work / "postgres")
    pebble: Pebble | None = None
    gateway: Server | None = None
    result: dict[str, Any] = {"machine": machine(), "duration_s": duration, "rate": rate}
    try:
        (work / "pebble-dir").mkdir()
        pebble = Pebble(work / "pebble-dir")
        say("starting PostgreSQL and pebble")
        postgres.start()
        pebble.start()
        dsn = postgres.create_database("soak")
        port = free_port()
        config = write_config(work, dsn, pebble, port)
        roots = work / "pebble-roots.pem"
        roots.write_bytes(
            b"".join(root.public_bytes(Encoding.PEM) for root in pebble.issuing_roots())
        )
        aistack("db", "migrate", "--config", str(config))
        say("aistack acme renew: first certificate from pebble")
        aistack("acme", "renew", "--config", str(config))
        say(f"seeding: {SEARCH_COLLECTION} (demo corpus) and {seed_rows} solved issues")
        aistack("ingest", "--config", str(config), "--collection", SEARCH_COLLECTION, str(CORPUS))
        result["seed"] = asyncio.run(seed_learning_store(config, seed_rows, seed))

        gateway = gateway_server(config, work / "gateway.log", port, roots)
        say("starting the gateway (loads the model)")
        gateway.start()
        serial_before = served_serial(port, roots)
        fds: dict[str, dict[str, int]] = {}
        rss: list[tuple[float, float]] = []
        renewal: dict[str, Any] = {}

        def count_fds() -> None:
            fds["after_warmup"] = descriptor_counts(gateway, postgres.port)

        def run_gc() -> None:
            say("event: GC pass (SIGUSR1)")
            os.kill(gateway.pid, signal.SIGUSR1)

        def renew_and_reload() -> None:
            say("event: aistack acme renew --force, then SIGHUP")
            began = time.monotonic()
            aistack("acme", "renew", "--force", "--config", str(config))
            os.kill(gateway.pid, signal.SIGHUP)
            time.sleep(0.5)
            renewal["seconds"] = round(time.monotonic() - began, 2)
            renewal["serial_changed"] = served_serial(port, roots) != serial_before

        async def sample_rss(stop: asyncio.Event) -> None:
            while not stop.is_set():
                rss.append((time.time(), gateway.rss_mb()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

        async def load() -> Traffic:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(stop))
            try:
                return await drive(
                    f"https://127.0.0.1:{port}",
                    roots,
                    duration,
                    rate,
                    seed,
                    [(WARMUP_FRACTION, count_fds), (GC_AT, run_gc), (RENEW_AT, renew_and_reload)],
                )
            finally:
                stop.set()
                await sampler

        began = time.time()
        say(f"traffic: {rate:.0f} requests/s for {duration:.0f} s")
        traffic = asyncio.run(load())
        time.sleep(2.0)  # let the server close what the client closed
        fds["end"] = descriptor_counts(gateway, postgres.port)
        started = gateway_events(gateway, "gc_started")
        finished = gateway_events(gateway, "gc_finished")
        if not started or not finished:
            raise RuntimeError(f"the GC pass did not finish:\n{gateway.log_tail()}")
        gc_window = (float(started[0][0]), float(finished[0][0]))
        gc_summary = json.loads(finished[0][1])
        warm_until = began + WARMUP_FRACTION * duration
        result.update(analyse(traffic, gc_window, warm_until))
        result["gc"] = {"seconds": round(gc_window[1] - gc_window[0], 2), **gc_summary}
        result["renewal"] = renewal
        after_warmup = [mb for stamp, mb in rss if stamp >= warm_until]
        result["rss_mb"] = {
            "after_warmup": round(after_warmup[0], 1) if after_warmup else math.nan,
            "end": round(rss[-1][1], 1) if rss else math.nan,
            "max": round(max(mb for _, mb in rss), 1) if rss else math.nan,
        }
        result["fds"] = fds
        result["exit_code"] = gateway.stop()
        result["log_tracebacks"] = gateway.log_text().count("Traceback")
        return result
    finally:
        if gateway is not None:
            gateway.stop()
        if pebble is not None:
            pebble.stop()
        postgres.stop()


def goals(result: dict[str, Any]) -> list[Goal]:
    limits = result["rate_limits"]
    rss = result["rss_mb"]
    fds = result["fds"]
    growth = (rss["end"] - rss["after_warmup"]) / rss["after_warmup"]
    unexpected_5xx = {k: v for k, v in result["server_errors"].items() if k != "503"}
    return [
        Goal(
            "no 5xx (503 only when deliberate: none here)",
            not result["server_errors"],
            detail=json.dumps(result["server_errors"]) or "{}",
        ),
        Goal(
            "no client-side connection errors",
            not result["client_errors"],
            detail=json.dumps(result["client_errors"]),
        ),
        Goal(
            f"RSS growth after warm-up < {RSS_GROWTH_GOAL:.0%}",
            growth < RSS_GROWTH_GOAL,
            detail=f"{rss['after_warmup']} -> {rss['end']} MB ({growth:+.1%})",
        ),
        Goal(
            "no file descriptor leaked (client connections closed, PostgreSQL pool within"
            " its size, the rest as after warm-up)",
            fds["end"]["client_connections"] == 0
            and fds["end"]["other"] <= fds["after_warmup"]["other"]
            and fds["end"]["postgres_connections"] <= POOL_SIZE,
            detail=json.dumps(fds),
        ),
        Goal(
            "hot clients: exactly 60 admitted in every refused minute window",
            limits["refused_windows"] > 0
            and limits["refused_windows_exact"] == limits["refused_windows"]
            and limits["windows_over_quota"] == 0,
            detail=f"{limits['refused_windows_exact']}/{limits['refused_windows']} exact, "
            f"{limits['windows_over_quota']} over quota",
        ),
        Goal(
            "ordinary clients never refused",
            limits["ordinary_clients_refused"] == 0,
            detail=str(limits["ordinary_clients_refused"]),
        ),
        Goal(
            "renewed certificate served after SIGHUP",
            bool(result["renewal"].get("serial_changed")),
            detail=json.dumps(result["renewal"]),
        ),
        Goal(
            "gateway exits 0 on SIGTERM, no traceback in its log",
            result["exit_code"] == 0 and result["log_tracebacks"] == 0,
            detail=f"exit {result['exit_code']}, {result['log_tracebacks']} tracebacks",
        ),
    ] + (
        [Goal("(unexpected 5xx)", False, detail=json.dumps(unexpected_5xx))]
        if unexpected_5xx
        else []
    )


def print_report(result: dict[str, Any], say: Out) -> None:
    say(machine_line(result["machine"]))
    say(
        f"run: {result['duration_s']:.0f} s at {result['rate']:.0f} requests/s offered; "
        f"{result['answers']} answers, {result['skipped_by_client']} not sent "
        f"(client at {MAX_IN_FLIGHT} in flight)"
    )
    say(f"seeded: {json.dumps(result['seed'])}")
    say("statuses by kind:")
    for kind, counts in result["statuses"].items():
        say(f"  {kind:8} " + " ".join(f"{status}:{count}" for status, count in counts.items()))
    say("valid searches (200), latency by phase of the GC pass:")
    for name, figures in result["search_latency_ms"].items():
        say(
            f"  {name:7} n={figures['count']:6d}  p50 {figures['p50']:7.1f} ms"
            f"  p99 {figures['p99']:7.1f} ms"
        )
    say(f"GC pass: {json.dumps(result['gc'])}")
    say(f"RSS MB: {json.dumps(result['rss_mb'])}; fds: {json.dumps(result['fds'])}")
    say(f"rate limits: {json.dumps(result['rate_limits'])}")
    say()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=180, help="seconds of traffic (default 180)"
    )
    parser.add_argument("--rate", type=float, default=150, help="requests/s offered (default 150)")
    parser.add_argument(
        "--seed-rows", type=int, default=10_000, help="solved issues seeded (default 10000)"
    )
    parser.add_argument("--seed", type=int, default=20_261_125, help="random seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_with_gc(args.serve)
    if args.duration < 60:
        parser.error("--duration must be at least 60 s (the rate-limit check needs whole minutes)")
    if args.rate <= HOT_CLIENTS * HOT_RATE:
        parser.error(f"--rate must be above {HOT_CLIENTS * HOT_RATE:.0f} (the hot clients alone)")
    if args.seed_rows < 1:
        parser.error("--seed-rows must be >= 1")
    started = time.monotonic()
    try:
        result = soak(args.duration, args.rate, args.seed_rows, args.seed)
    except (
        RuntimeError,
        OSError,
        subprocess.SubprocessError,
        PostgresNotFound,
        PostgresStartError,
    ) as error:
        print(f"soak: {error}", file=sys.stderr)
        return 1
    report = Out(args.json)
    print_report(result, report)
    goal_list = goals(result)
    finish(result, goal_list, report, args.json, started)
    return 0 if all(goal.passed for goal in goal_list) else 3


if __name__ == "__main__":
    sys.exit(main())
