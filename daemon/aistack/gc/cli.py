"""`aistack gc run | restore | status`: the GC's commands."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aistack.command import config_argument, load_config, run_async
from aistack.errors import EXIT_OK, Failure

if TYPE_CHECKING:
    from aistack.config import Config

SHOWN_IDS = 20
# gc_runs.id is a bigint identity counting from 1: no other number names a run.
LARGEST_RUN_ID = 2**63 - 1


def register(commands: Any) -> None:
    gc = commands.add_parser("gc", help="garbage collection of the learning store")
    gc_commands = gc.add_subparsers(dest="gc_command", required=True)

    run = gc_commands.add_parser(
        "run",
        help="one pass: expiry, pruning, deduplication, orphan sweep; prints per-policy counts",
    )
    config_argument(run)
    run.add_argument(
        "--dry-run", action="store_true", help="print what a run would remove; change nothing"
    )
    run.add_argument(
        "--json", action="store_true", help="print the result as JSON: counts, not ids (see --ids)"
    )
    run.add_argument(
        "--ids",
        action="store_true",
        help="also list every id: with --json every removed row (a duplicate with the row it"
        " was merged into), orphan point and re-embedded row; in the text, every removed row"
        f" instead of the first {SHOWN_IDS} of each policy",
    )
    run.add_argument(
        "--full-scan",
        action="store_true",
        help="compare every row with every row for duplicates, not only the rows not compared yet",
    )
    run.add_argument(
        "--metrics-file",
        type=Path,
        metavar="FILE",
        help="write the GC's Prometheus figures here (node_exporter textfile collector)",
    )
    run.set_defaults(run=run_gc_command)

    restore = gc_commands.add_parser("restore", help="put archived rows (and their vectors) back")
    config_argument(restore)
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--run", type=parse_run_id, dest="run_id", metavar="ID", help="everything run ID removed"
    )
    which.add_argument(
        "--since",
        type=parse_time,
        metavar="TIME",
        help="everything archived since TIME (ISO 8601, e.g. 2026-11-20T00:00:00Z)",
    )
    restore.add_argument(
        "--reason", choices=["expired", "pruned", "duplicate"], help="only rows removed for this"
    )
    restore.set_defaults(run=run_restore_command)

    status = gc_commands.add_parser(
        "status", help="recent runs, what each removed, archive and storage size"
    )
    config_argument(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--metrics-file", type=Path, metavar="FILE", help="also write the Prometheus figures"
    )
    status.set_defaults(run=run_status_command)


def parse_run_id(text: str) -> int:
    """The id of `--run`, or a usage error (exit 2) for a number no run can have, decided
    before PostgreSQL is asked: an id beyond bigint used to fail as if PostgreSQL were down."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= LARGEST_RUN_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id (1 to {LARGEST_RUN_ID})")
    return number


def parse_time(text: str) -> datetime.datetime:
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-20T00:00:00Z"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)


@asynccontextmanager
async def open_parts(config: Config) -> AsyncIterator[tuple[Any, Any]]:
    from aistack.embedding import open_embedder
    from aistack.stores.qdrant import VectorStore

    store = VectorStore.connect(config.qdrant)
    try:
        embedder = await open_embedder(config.embedding)
        try:
            yield store, embedder
        finally:
            await embedder.close()
    finally:
        await store.close()


async def write_figures(config: Config, store: Any, path: Path) -> None:
    from aistack.gc.status import gather, write_metrics_file
    from aistack.stores.postgres import connection

    async with connection(config.postgres) as db:
        figures = await gather(db, store)
    try:
        write_metrics_file(path, figures)
    except OSError as error:
        raise Failure(f"cannot write --metrics-file {path}: {error.strerror}") from None


def run_json(result: Any, ids: bool) -> str:
    document = {**result.as_json(), **result.plan.ids_json()} if ids else result.as_json()
    return json.dumps(document, indent=2)


def format_run(result: Any, shown_ids: int | None = SHOWN_IDS) -> str:
    """The run for a person; `shown_ids` removed ids per policy at most (None: all)."""
    plan = result.plan
    if result.dry_run:
        lines = ["gc: dry run, nothing changed. A run now would remove:"]
    else:
        lines = [f"gc: run {result.run_id} done in {result.seconds:.1f} s. Removed:"]
    for reason, ids in plan.removals():
        cut = len(ids) if shown_ids is None else shown_ids
        shown = " ".join(map(str, ids[:cut])) + (" ..." if len(ids) > cut else "")
        lines.append(f"  {reason:<10} {len(ids):>8}  {shown}".rstrip())
    lines.append(
        f"  orphan points {len(plan.orphan_points)}, rows without points "
        f"{len(plan.rows_without_points)} (re-embedded), archive entries past archive_days "
        f"{plan.archive_purge}, points left by a killed run {plan.pending_points}"
    )
    lines.append(
        f"  {plan.rows} rows before; duplicates checked "
        + ("against every row (full scan)" if plan.full_scan else "for new rows only")
    )
    return "\n".join(lines)


def run_gc_command(args: argparse.Namespace) -> int:
    from aistack.gc.job import GcBusy, run_gc

    config = load_config(args.config)

    async def run() -> int:
        async with open_parts(config) as (store, embedder):
            try:
                result = await run_gc(
                    config, store, embedder, dry_run=args.dry_run, full_scan=args.full_scan
                )
            except GcBusy as busy:
                # The timer fired while a pass (or a restore) runs: that one does the work.
                print(f"aistack: gc: {busy.reason}; nothing done", file=sys.stderr)
                return EXIT_OK
            if args.metrics_file and not args.dry_run:
                await write_figures(config, store, args.metrics_file)
        if args.json:
            print(run_json(result, args.ids))
        else:
            print(format_run(result, None if args.ids else SHOWN_IDS))
        return EXIT_OK

    return run_async(run(), config)


def run_restore_command(args: argparse.Namespace) -> int:
    from aistack.gc.restore import Selection, restore

    config = load_config(args.config)
    selection = Selection(run_id=args.run_id, since=args.since, reason=args.reason)

    async def run() -> int:
        async with open_parts(config) as (store, embedder):
            restored = await restore(config, store, embedder, selection)
        print(f"aistack: restored {restored} rows ({selection.describe()})")
        return EXIT_OK

    return run_async(run(), config)


def run_status_command(args: argparse.Namespace) -> int:
    from aistack.gc.status import format_status, gather, write_metrics_file
    from aistack.stores.postgres import connection
    from aistack.stores.qdrant import VectorStore
    from aistack.stores.schema import require_current

    config = load_config(args.config)

    async def run() -> int:
        store = VectorStore.connect(config.qdrant)
        try:
            async with connection(config.postgres) as db:
                await require_current(db)
                figures = await gather(db, store)
        finally:
            await store.close()
        if args.metrics_file:
            write_metrics_file(args.metrics_file, figures)
        print(json.dumps(figures.as_json(), indent=2) if args.json else format_status(figures))
        return EXIT_OK

    return run_async(run(), config)
