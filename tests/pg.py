"""A private PostgreSQL server for the tests (the same code `aistack demo` uses)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aistack.stores.private_postgres import PostgresNotFound, PrivatePostgres
from tests.tools import tool_missing

DIRECTORY_PREFIX = "aistack-test-pg-"


def private_postgres_fixture(
    port: int = 0, prefix: str = DIRECTORY_PREFIX
) -> Iterator[PrivatePostgres]:
    # Not under pytest's 0700 temp tree: as root the server runs as `postgres`, which
    # must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        directory.chmod(0o711)
        server = PrivatePostgres(directory / "server", port=port)
        try:
            server.start()
        except PostgresNotFound as error:
            tool_missing("PostgreSQL", str(error))
        try:
            yield server
        finally:
            server.stop(mode="immediate")
    finally:
        # Also when the server did not start, or the tool is missing (a skip is raised).
        shutil.rmtree(directory, ignore_errors=True)
