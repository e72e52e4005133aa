"""The harness the bench scripts share: the machine a figure came from, where human lines
go, goals and the tail every report ends with, the server processes a script starts and
the scratch directory it works in, and what the scripts feed the product (search queries,
an embedder that only knows its dimension, a GC configuration).

Each script keeps only what it measures. Scripts import this as `bench.common`, with the
repository on sys.path (bench/acme.py and bench/soak.py must keep bench/ itself off
sys.path: bench/acme.py would shadow the `acme` library).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aistack.config import Config

# --- the machine ------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "?"


def memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> dict[str, Any]:
    """The facts every figure is printed with; scripts add their own (BLAS)."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "load_average": load_average(),
    }


def machine_line(host: dict[str, Any]) -> str:
    return (
        f"machine: {host['nproc']} CPUs usable ({host['cpus']} online), {host['cpu_model']}, "
        f"{host['memory_gib']} GiB, Linux {host['kernel']}; Python {host['python']}, "
        f"numpy {host['numpy']}; load average {host['load_average']}"
    )


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, so utime (14) and stime (15) sit at 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- human lines, goals and the tail of a report ------------------------------------------


class Out:
    """Human lines, flushed at once: to stdout, or to stderr where stdout is kept for the
    JSON object of --json (progress lines always go there)."""

    def __init__(self, to_stderr: bool, prefix: str = "") -> None:
        self.to_stderr = to_stderr
        self.prefix = prefix

    def __call__(self, text: str = "") -> None:
        stream = sys.stderr if self.to_stderr else sys.stdout
        stream.write(f"{self.prefix}{text}\n" if text else "\n")
        stream.flush()


progress = Out(to_stderr=True)


@dataclass
class Goal:
    """A goal and its verdict: `value` against `limit` where the goal is a figure, and
    `detail` for what the verdict rests on or what stands beside the figure."""

    name: str
    passed: bool
    value: float | None = None
    limit: float | None = None
    unit: str = ""
    value_format: str = "g"
    detail: str = ""

    def line(self) -> str:
        figure = "" if self.value is None else f"{self.value:{self.value_format}}{self.unit} "
        verdict = "PASS" if self.passed else "FAIL"
        detail = f" ({self.detail})" if self.detail else ""
        return f"goal {self.name}: {figure}{verdict}{detail}"

    def as_json(self) -> dict[str, Any]:
        fields = {"goal": self.name, "value": self.value, "limit": self.limit}
        fields |= {"pass": self.passed, "detail": self.detail or None}
        return {key: value for key, value in fields.items() if value is not None}


def finish(
    report: dict[str, Any], goals: Sequence[Goal], say: Out, as_json: bool, started: float
) -> None:
    """The tail of every report: a line a goal and the time taken; with --json the report,
    its goals and that time in one JSON object on stdout."""
    for goal in goals:
        say(goal.line())
    report["goals"] = [goal.as_json() for goal in goals]
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    say(f"elapsed {report['elapsed_s']:.0f} s")
    if as_json:
        print(json.dumps(report))


def missing_tools(say: Out, packages: dict[str, str]) -> bool:
    """Say which of `packages` (program: its Debian package) are not on PATH; True if any."""
    missing = [program for program in packages if shutil.which(program) is None]
    for program in missing:
        say(f"{program} is missing: apt-get install {packages[program]} (nothing to measure)")
    return bool(missing)


# --- processes and the scratch directory ----------------------------------------------------


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed with all in it afterwards. Others may pass through
    it (0711): as root, a private PostgreSQL server inside runs as `postgres`."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def aistack_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "aistack", *args]


class Server:
    """A child process serving on a loopback port, its output in a log file: started,
    waited for until `ready(port)` holds (an OSError counts as not yet), measured, stopped
    (SIGTERM, then kill). Every script stops what it started before it exits."""

    start_seconds = 180.0  # loading the model on a busy two-core machine
    stop_seconds = 60.0  # a gateway drains its requests and closes its pools first

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        ready: Callable[[int], bool],
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.ready(self.port):
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} not up after {self.start_seconds:.0f} s:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    def stop(self) -> int | None:
        """Its exit status; None if it never started."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                progress(f"{self.name}: running {self.stop_seconds:.0f} s after SIGTERM; killed")
                process.kill()
                process.wait()
        return process.returncode


# --- what the scripts feed the product -------------------------------------------------------

SEARCH_COLLECTION = "nixos_docs"
UNKNOWN_COLLECTION_BODY = {"collection": "evil_collection", "query": "how do I enable ssh"}

# Searches for the gateway: bench/gateway.py sends all of them, bench/soak.py the first 20.
QUERIES = [
    "how do I enable ssh on nixos",
    "open a port in the nixos firewall",
    "set up nginx as a reverse proxy",
    "postgresql service will not start",
    "rollback to the previous generation",
    "garbage collect the nix store",
    "enable flakes in nix.conf",
    "add a user with sudo rights",
    "configure a static ip address",
    "enable docker for my user",
    "pin nixpkgs to a specific revision",
    "configure wireguard vpn",
    "systemd timer instead of cron",
    "set up letsencrypt certificates with acme",
    "limit journald disk usage",
    "enable zram swap",
    "run a container with podman",
    "use secrets with systemd LoadCredential",
    "add a binary cache substituter",
    "enable ollama with gpu acceleration",
    "mount an ext4 disk at boot",
    "set the system time zone",
    "install a package only for one user",
    "home-manager service fails after upgrade",
    "enable automatic upgrades",
    "enable the nvidia driver",
    "why does nixos-rebuild switch fail",
    "configure fail2ban for ssh",
    "change the default shell to zsh",
    "enable bluetooth and pipewire audio",
    "build a custom iso image",
    "override a package version in an overlay",
    "enable tailscale on a server",
    "set kernel parameters at boot",
    "optimise the nix store with hard links",
    "enable redis and bind it to localhost",
    "grafana and prometheus monitoring setup",
    "qdrant service configuration",
    "set up a samba share",
    "configure the bootloader timeout",
    "enable printing with cups",
    "set environment variables for all users",
    "run a python script as a systemd service",
    "create a development shell with nix develop",
    "disk full after many generations",
    "enable openssh password authentication off",
    "setup borg backup jobs",
    "use a different kernel version",
    "enable avahi for local hostname resolution",
    "configure nftables rules",
]


class DimensionOnlyEmbedder:
    """What the GC benches hand run_gc: it asks for the dimension, and embeds only rows
    that lost their point, which these benches never have. Loading the real model would
    cost seconds and hundreds of MB for nothing."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    async def embed_query(self, text: str, client: str = "") -> list[float]:
        raise AssertionError("the bench has a point for every row: nothing to embed")

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        raise AssertionError("the bench has a point for every row: nothing to embed")

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def gc_run_config(dsn: str, qdrant_path: Path, gc: dict[str, Any]) -> Config:
    """A GC run against one PostgreSQL database and a Qdrant local-mode directory."""
    from aistack.config import validate_config

    return validate_config(
        {"qdrant": {"path": str(qdrant_path)}, "postgres": {"dsn": dsn}, "gc": gc}
    )
