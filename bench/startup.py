#!/usr/bin/env python3
"""Start-up benchmark: how fast `aistack` answers what needs no work, under hyperfine.

    python3 bench/startup.py [--runs N] [--json]

Measured in one run, each against bare Python in the same run (`python3 -c pass`, which
pays for the interpreter and whatever site-packages' .pth files import):

  --help                  `aistack --help`: only the argument parser;
  gc run --help           one command's parser;
  acme renew (not due)    a complete not-due renewal against a real pebble: the
                          configuration read and validated, the installed certificate
                          read (its facts kept since it was installed, checked by
                          digest), the CA's directory and ARI renewal window fetched,
                          the decision logged. The certificate is issued once beforehand.

Bytecode is written and used as an installed package's is (a NixOS package ships it
compiled): PYTHONDONTWRITEBYTECODE, which some environments set, would otherwise make every
start compile aistack's modules from source again.

Goals: `--help` under 100 ms and a not-due `acme renew` under 300 ms (mean wall time).
Needs hyperfine (Debian: apt-get install hyperfine) and pebble (apt-get install pebble).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.acme import aistack_command, aistack_config
from bench.common import (
    Goal,
    Out,
    finish,
    machine,
    machine_line,
    missing_tools,
    scratch_directory,
)
from tests.pebble import Pebble, running_pebble

GOAL_HELP_MS = 100.0
GOAL_NOT_DUE_MS = 300.0


def hyperfine(commands: dict[str, list[str]], runs: int, work: Path) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min and max wall time (ms) of each command."""
    export = work / "hyperfine.json"
    argv = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", str(export)]
    for label, command in commands.items():
        argv += ["--command-name", label, subprocess.list2cmdline(command)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    results = json.loads(export.read_text())["results"]
    return {
        result["command"]: {
            key: round(result[key] * 1000, 1) for key in ("mean", "stddev", "min", "max")
        }
        for result in results
    }


def acme_config(work: Path, pebble: Pebble) -> Path:
    path = work / "aistack.json"
    path.write_text(json.dumps(aistack_config(work, pebble)))
    return path


def renew_line(script: list[str], config: Path) -> str:
    result = subprocess.run(
        [*script, "acme", "renew", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"acme renew failed ({result.returncode}): {result.stderr[-500:]}")
    return result.stderr.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per command (30)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # see the docstring
    say = Out(args.json)
    started = time.monotonic()
    if missing_tools(say, {"hyperfine": "hyperfine", "pebble": "pebble"}):
        return 1
    host = machine()
    say(machine_line(host))
    script = aistack_command()
    with scratch_directory("aistack-startup-") as work, contextlib.ExitStack() as stack:
        (work / "pebble").mkdir()
        pebble = stack.enter_context(contextlib.contextmanager(running_pebble)(work / "pebble"))
        config = acme_config(work, pebble)
        say(f"first run: {renew_line(script, config)}")
        line = renew_line(script, config)
        if " not-due " not in f" {line} ":
            raise RuntimeError(f"the second renewal was not a not-due run: {line}")
        say(f"measured: {line}")
        commands = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "aistack --help": [*script, "--help"],
            "aistack gc run --help": [*script, "gc", "run", "--help"],
            "aistack acme renew (not due)": [*script, "acme", "renew", "--config", str(config)],
        }
        times = hyperfine(commands, args.runs, work)
    say()
    say(f"hyperfine -N, {args.runs} runs after 3 warm-ups, wall ms:")
    bare = times["python3 -c pass"]["mean"]
    for label, figures in times.items():
        say(
            f"  {label:<30} mean {figures['mean']:6.1f} ± {figures['stddev']:5.1f}"
            f"  min {figures['min']:6.1f}  max {figures['max']:6.1f}"
            f"  ({figures['mean'] - bare:+.1f} over bare Python)"
        )
    say()
    help_ms = times["aistack --help"]["mean"]
    not_due_ms = times["aistack acme renew (not due)"]["mean"]
    goals = [
        Goal(
            f"--help < {GOAL_HELP_MS:.0f} ms",
            help_ms < GOAL_HELP_MS,
            help_ms,
            GOAL_HELP_MS,
            " ms",
            ".0f",
        ),
        Goal(
            f"not-due acme renew < {GOAL_NOT_DUE_MS:.0f} ms",
            not_due_ms < GOAL_NOT_DUE_MS,
            not_due_ms,
            GOAL_NOT_DUE_MS,
            " ms",
            ".0f",
            detail=f"bare Python {bare:.0f} ms in the same run",
        ),
    ]
    finish({"machine": host, "wall_ms": times}, goals, say, args.json, started)
    return 0 if all(goal.passed for goal in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
