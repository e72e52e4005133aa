"""The embedded stack: a private PostgreSQL in a temporary directory, Qdrant in local mode
on disk, the bundled model, the sample corpus in `nixos_docs`, the gateway on loopback.
Ctrl-C stops everything it started and removes what it created (unless --dir was given)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from aistack.config import Config, ConfigError, parse_listen_address, validate_config
from aistack.embedding import Embedder, open_embedder
from aistack.errors import Failure
from aistack.gateway.server import serve
from aistack.gc.job import GcBusy, run_gc
from aistack.ingest.jsonl import ingest, read_documents
from aistack.observability.logs import EventLog
from aistack.stores.postgres import connection
from aistack.stores.private_postgres import PrivatePostgres
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import migrate

CORPUS = Path(__file__).parent / "corpus.jsonl"
log = EventLog("demo")
LEARN_FIRST = '{"query": "How to install vim", "solution": "pkgs.vim", "value_score": 0.8}'
LEARN_AGAIN = '{"query": "how to install vim?", "solution": "programs.vim", "value_score": 0.9}'

FILTERED_SEARCH = (
    '{"collection": "nixos_docs", "query": "open a port", "filter": {"topic": "networking"}}'
)

GC_INTERVAL_SECONDS = 600


def demo_config(directory: Path, listen: str, dsn: str) -> Config:
    return validate_config(
        {
            "gateway": {"listen": [listen]},
            "qdrant": {"path": str(directory / "qdrant")},
            "postgres": {"dsn": dsn},
            # The sample corpus files every document under a topic.
            "validation": {"filterable": {"nixos_docs": ["topic"]}},
        },
        name="<demo>",
    )


def try_lines(listen: str) -> str:
    base = f"http://{listen}"
    search = "curl -s {base}/vector/search -H 'Content-Type: application/json' -d '{body}'"
    learn = "curl -s {base}/hybrid/learn -H 'Content-Type: application/json' -d '{body}'"
    return "\n".join(
        [
            "",
            f"aistack demo: gateway on {base} (Ctrl-C stops everything)",
            "Try:",
            "  "
            + search.format(
                base=base,
                body='{"collection": "nixos_docs", "query": "install", "limit": 3}',
            ),
            "  "
            + search.format(
                base=base,
                body='{"collection": "nixos_docs", "query": "install", "limit": 10, "offset": 20}',
            ),
            "  # only the documents of one topic (total counts only those):",
            "  " + search.format(base=base, body=FILTERED_SEARCH),
            "  # refused with 422, the rule named:",
            "  " + search.format(base=base, body='{"collection": "evil_collection", "query": "x"}'),
            "  "
            + search.format(
                base=base,
                body='{"collection": "nixos_docs", "query": "x", "limit": 1000000}',
            ),
            "  # the learning store: a solution, then a near-copy merged into it",
            "  " + learn.format(base=base, body=LEARN_FIRST),
            "  " + learn.format(base=base, body=LEARN_AGAIN),
            f"  curl -s {base}/readyz",
            f"  curl -s {base}/metrics | grep -E '^aidb_|^aistack_rate'",
            f"  curl -sI {base}/healthz | grep -i ratelimit",
            "",
        ]
    )


async def collect_garbage(config: Config, store: VectorStore, embedder: Embedder) -> None:
    """A GC pass every GC_INTERVAL_SECONDS, as aistack-gc.timer would run one."""
    while True:
        await asyncio.sleep(GC_INTERVAL_SECONDS)
        try:
            await run_gc(config, store, embedder, progress=None)
        except GcBusy:
            continue
        except Exception:
            # The demo keeps serving; the next pass tries again.
            log.exception("demo.gc_failed")


def check_listen_address(listen: str) -> None:
    """Bind `listen` and let it go again, before anything starts: a busy or foreign address
    is found in a moment, not after PostgreSQL, the model and the corpus (and the curl
    lines for an address nobody serves). Bound as aiohttp binds it (SO_REUSEADDR, every
    address the host resolves to), so what passes here is what the gateway can take."""
    try:
        host, port = parse_listen_address(listen)
    except ValueError as error:
        raise ConfigError(f"--listen {listen!r}: {error}") from None
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, protocol, _, address in addresses:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as error:
        raise Failure(cannot_listen(listen, error)) from None


def cannot_listen(listen: str, error: OSError) -> str:
    return (
        f"demo: cannot listen on {listen}: {error.strerror or error} "
        "(is another demo running? try --listen 127.0.0.1:8081)"
    )


async def start_postgres(postgres: PrivatePostgres) -> None:
    """Start the server in a thread, and finish starting it even when Ctrl-C comes first.

    A thread cannot be interrupted: a Ctrl-C that only cancelled the wait would stop the
    server and remove its directory while initdb still writes there or pg_ctl starts it,
    leaving the directory (or a server) behind. So the start runs to its end, and the
    caller's clean-up then stops what it started.
    """
    starting = asyncio.ensure_future(asyncio.to_thread(postgres.start))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait([starting])
        if not starting.cancelled():
            starting.exception()  # retrieved: a failed start matters no more once stopping
        raise


async def run_demo_stack(listen: str, keep_dir: Path | None) -> int:
    check_listen_address(listen)
    directory = keep_dir or Path(tempfile.mkdtemp(prefix="aistack-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    if keep_dir is None:
        # Traversable, not listable: as root, PostgreSQL runs as `postgres` inside it.
        directory.chmod(0o711)
    postgres = PrivatePostgres(directory / "postgres")
    try:
        print(f"aistack demo: starting PostgreSQL in {directory / 'postgres'}", file=sys.stderr)
        await start_postgres(postgres)
        config = demo_config(directory, listen, postgres.dsn)
        async with connection(config.postgres) as db:
            await migrate(db)
        print("aistack demo: loading the embedding model", file=sys.stderr)
        embedder = await open_embedder(config.embedding)
        store = VectorStore.connect(config.qdrant)
        try:
            documents = read_documents(CORPUS)
            print(
                f"aistack demo: loading {len(documents)} documents into nixos_docs",
                file=sys.stderr,
            )
            await ingest(documents, "nixos_docs", embedder, store)
            print(try_lines(listen), file=sys.stderr)
            # Local mode admits one process, so the GC runs here rather than as its own.
            collector = asyncio.create_task(collect_garbage(config, store, embedder))
            try:
                await serve(config, embedder=embedder, store=store)
            except OSError as error:  # taken since check_listen_address
                raise Failure(cannot_listen(listen, error)) from None
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
        finally:
            await store.close()
            await embedder.close()
    finally:
        await asyncio.to_thread(postgres.stop)
        if keep_dir is None:
            shutil.rmtree(directory, ignore_errors=True)
        print("aistack demo: stopped", file=sys.stderr)
    return 0
