"""What every `aistack` command shares: its `--config` argument, and running its coroutine.

It stands below every command module, so `gc/cli.py` and `acme/cli.py` need nothing from
`cli.py`, which registers them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from aistack.config import Config, redact_dsn
from aistack.errors import Failure


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="configuration file (.toml or .json)"
    )


def run_async(coroutine: Coroutine[Any, Any, int], config: Config | None = None) -> int:
    """Run a command's coroutine. The project's failures say themselves (`Failure`); what
    asyncpg and the OS raise when PostgreSQL cannot be reached becomes one line (exit 1)."""
    from aistack.stores.postgres import CONNECTION_ERRORS

    try:
        return asyncio.run(coroutine)
    except CONNECTION_ERRORS as error:
        where = redact_dsn(config.postgres.dsn) if config else "PostgreSQL"
        raise Failure(
            f"PostgreSQL ({where}): {error.__class__.__name__}: {error}; "
            "is it running, and does postgres.dsn point at it?"
        ) from None
