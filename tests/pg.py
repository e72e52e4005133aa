"""A private PostgreSQL server for the tests (the same code `aistack demo` uses)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aistack.stores.private_postgres import PostgresNotFound, PrivatePostgres
from tests.tools import tool_missing


def private_postgres_fixture() -> Iterator[PrivatePostgres]:
    # Not under pytest's 0700 temp tree: as root the server runs as `postgres`, which
    # must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix="aistack-test-pg-"))
    directory.chmod(0o711)
    server = PrivatePostgres(directory / "server")
    try:
        server.start()
    except PostgresNotFound as error:
        tool_missing("PostgreSQL", str(error))
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)
