"""What every `aistack` command shares: its `--config` argument, loading that file, and
running its coroutine.

It stands below every command module, so `gc/cli.py` and `acme/cli.py` need nothing from
`cli.py`, which registers them. Nothing heavy is imported here or by the parsers: the
configuration models (pydantic) and asyncio load only once a command runs, so
`aistack --help` and a mistyped command answer at once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aistack.errors import Failure

if TYPE_CHECKING:
    from aistack.config import Config


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="configuration file (.toml or .json)"
    )


def serve_on_one_blas_thread() -> None:
    """Give OpenBLAS one thread in a serving process, before numpy is first imported.

    Set here, not left to the environment: a search's numpy work (Qdrant local mode's dot
    products) is small, and OpenBLAS's own threads, one per core by default, spin beside
    ONNX Runtime's waiting for more: 38 ms of CPU per search with the default against
    21-23 ms with one thread, at the same rate (measured on two cores; bench/gateway.py
    prints the CPU per search). The GC's large matrix products keep every thread.
    """
    os.environ["OPENBLAS_NUM_THREADS"] = "1"


def load_config(path: str) -> Config:
    from aistack.config import load_config as load

    return load(path)


def run_async(coroutine: Coroutine[Any, Any, int], config: Config | None = None) -> int:
    """Run a command's coroutine. The project's failures say themselves (`Failure`); what
    asyncpg and the OS raise when PostgreSQL cannot be reached becomes one line (exit 1)."""
    import asyncio

    from aistack.config import redact_dsn
    from aistack.stores.postgres import CONNECTION_ERRORS

    try:
        return asyncio.run(coroutine)
    except CONNECTION_ERRORS as error:
        where = redact_dsn(config.postgres.dsn) if config else "PostgreSQL"
        raise Failure(
            f"PostgreSQL ({where}): {error.__class__.__name__}: {error}; "
            "is it running, and does postgres.dsn point at it?"
        ) from None
