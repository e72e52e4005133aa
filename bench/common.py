"""What the bench scripts share: the machine a figure came from, where human lines go
when stdout carries JSON, and goals with their verdicts.

Scripts import it as `bench.common`, with the repository on sys.path (bench/acme.py must
keep bench/ itself off sys.path: its name would shadow the `acme` library).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Out:
    """Human lines to stdout (to stderr with --json, where stdout is the JSON object)."""

    def __init__(self, as_json: bool) -> None:
        self.stream = sys.stderr if as_json else sys.stdout

    def __call__(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class Goal:
    name: str
    value: float
    limit: float
    passed: bool
    unit: str = ""
    value_format: str = "g"

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"goal {self.name}: {self.value:{self.value_format}}{self.unit} {verdict}"

    def as_json(self) -> dict[str, Any]:
        return {"goal": self.name, "value": self.value, "limit": self.limit, "pass": self.passed}


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


def machine() -> dict[str, Any]:
    """The facts every figure is printed with; scripts add their own (numpy, BLAS)."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1)) / 1024
