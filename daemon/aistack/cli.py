"""The one entry point: `aistack <command>`. Exit 0 success, 1 runtime failure, 2 bad
usage or bad configuration; every error names what was wrong and what to do."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aistack import __version__
from aistack.acme.cli import register as register_acme
from aistack.command import config_argument, load_config, run_async, serve_on_one_blas_thread
from aistack.errors import EXIT_FAILURE, EXIT_OK, Failure
from aistack.gc.cli import register as register_gc
from aistack.observability.logs import EventLog, setup_logging

if TYPE_CHECKING:
    from aistack.config import Config

log = EventLog("cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aistack",
        description="Hardening for a self-hosted AI stack: a validating, rate-limiting "
        "gateway over Qdrant and PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"aistack {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gateway = commands.add_parser(
        "gateway", help="serve the HTTP API until SIGTERM (SIGHUP reloads TLS material)"
    )
    config_argument(gateway)
    gateway.set_defaults(run=run_gateway)

    ingest = commands.add_parser(
        "ingest", help="embed and upsert documents ({id?, text, payload?} per line)"
    )
    config_argument(ingest)
    ingest.add_argument("--collection", required=True, help="target collection")
    ingest.add_argument("file", metavar="FILE.jsonl", type=Path)
    ingest.set_defaults(run=run_ingest)

    config = commands.add_parser("config", help="work with configuration files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a configuration and print it with secrets redacted"
    )
    config_argument(check)
    check.set_defaults(run=run_config_check)

    demo = commands.add_parser(
        "demo",
        help="the embedded stack for a first try: private PostgreSQL, local Qdrant, "
        "bundled model, sample corpus, gateway on 127.0.0.1:8080",
    )
    demo.add_argument("--listen", default="127.0.0.1:8080", help="gateway address")
    demo.add_argument(
        "--dir", type=Path, default=None, help="keep the demo's data here instead of a temp dir"
    )
    demo.set_defaults(run=run_demo)

    db = commands.add_parser("db", help="the PostgreSQL schema of the learning store")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser(
        "migrate", help="create or upgrade the schema (idempotent; safe to run at every start)"
    )
    config_argument(migrate)
    migrate.set_defaults(run=run_db_migrate)

    register_gc(commands)
    register_acme(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except Failure as failure:
        print(f"aistack: {failure}", file=sys.stderr)
        return failure.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def run_db_migrate(args: argparse.Namespace) -> int:
    from aistack.stores.postgres import connection
    from aistack.stores.schema import LATEST, migrate

    config = _load(args)

    async def apply() -> int:
        async with connection(config.postgres) as db:
            applied = await migrate(db)
        if applied:
            log.info("db.migrated", applied=",".join(map(str, applied)), version=LATEST)
            print(f"aistack: schema migrated to version {LATEST} (applied {applied})")
        else:
            print(f"aistack: schema already at version {LATEST}; nothing to do")
        return EXIT_OK

    return run_async(apply(), config)


def run_config_check(args: argparse.Namespace) -> int:
    from aistack.config import redacted

    config = _load(args)
    print(json.dumps(redacted(config), indent=2))
    print(f"aistack: {args.config}: configuration is valid", file=sys.stderr)
    return EXIT_OK


def run_gateway(args: argparse.Namespace) -> int:
    serve_on_one_blas_thread()
    from aistack.gateway.server import serve

    config = _load(args)

    async def gateway() -> int:
        try:
            await serve(config)
        except OSError as error:
            raise Failure(f"gateway: cannot listen: {error.strerror or error}") from None
        return EXIT_OK

    return run_async(gateway(), config)


def run_ingest(args: argparse.Namespace) -> int:
    from aistack.config import COLLECTION_NAME, ConfigError
    from aistack.embedding import open_embedder
    from aistack.ingest.jsonl import ingest, read_documents
    from aistack.stores.qdrant import VectorStore

    config = _load(args)
    if not COLLECTION_NAME.fullmatch(args.collection):
        raise ConfigError(f"--collection {args.collection!r}: not 1-64 of A-Z a-z 0-9 _ -")
    if args.collection not in config.validation.collections:
        log.warning(
            "ingest.collection_not_served",
            collection=args.collection,
            hint="add it to validation.collections or the gateway will not search it",
        )
    documents = read_documents(args.file)
    if not documents:
        raise ConfigError(f"{args.file}: no documents")

    async def load() -> int:
        embedder = await open_embedder(config.embedding)
        store = VectorStore.connect(config.qdrant)
        try:
            loaded = await ingest(documents, args.collection, embedder, store)
        finally:
            await store.close()
            await embedder.close()
        log.info(
            "ingest.done",
            collection=args.collection,
            documents=loaded.documents,
            seconds=f"{loaded.seconds:.1f}",
        )
        return EXIT_OK

    return run_async(load())


def run_demo(args: argparse.Namespace) -> int:
    serve_on_one_blas_thread()
    from aistack.demo.run import run_demo_stack

    return run_async(run_demo_stack(args.listen, args.dir))
