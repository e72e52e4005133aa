"""The private PostgreSQL server of the tests and of `aistack demo`: a server that fails to
start leaves neither a directory nor a process behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from aistack.stores.private_postgres import PostgresStartError, PrivatePostgres
from tests.pg import private_postgres_fixture


def leftovers(prefix: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(prefix + "*"))


def test_a_server_refused_its_port_leaves_no_directory_behind():
    # A prefix of this test's own: other runs on the machine make aistack-test-pg-* too.
    prefix = f"aistack-test-pg-busy-{os.getpid()}-"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fixture = private_postgres_fixture(port=port, prefix=prefix)
        with pytest.raises(PostgresStartError) as refused:
            next(fixture)
    # The real server's refusal, from its log: it could not bind the port.
    assert "could not bind" in str(refused.value) or "in use" in str(refused.value), refused
    assert leftovers(prefix) == []
    running = subprocess.run(["pgrep", "-f", prefix], capture_output=True, text=True)
    assert running.stdout == "", f"still running: {running.stdout}"


def test_a_server_pg_ctl_stopped_waiting_for_is_stopped():
    """pg_ctl gives up after its timeout (here none at all) and leaves the server starting:
    the failed start stops it, so no server outlives the error."""
    prefix = f"aistack-test-pg-slow-{os.getpid()}-"
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o711)
    server = PrivatePostgres(directory / "server", start_timeout_seconds=0)
    try:
        with pytest.raises(PostgresStartError, match="did not start in time"):
            server.start()
        running = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
        assert running.stdout == "", f"still running: {running.stdout}"
    finally:
        # Were the server left running, this test stops it rather than the next one.
        time.sleep(1)
        server.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)
