"""Run one NixOS VM test scenario in containers.

    python3 -m tests.vm --list          the scenarios (tests/vm/rendered/*.json)
    python3 -m tests.vm NAME [--keep]   lint, boot its nodes, run its testScript
    python3 -m tests.vm --cleanup NAME  remove what a --keep or killed run left

NAME may also be the path of a rendering JSON file. Exit status: 0 when the script
passed, 1 when it (or bringing the nodes up) failed, 2 for bad usage or a lint error.
Needs root, systemd-nspawn and debootstrap.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tests.vm import container as ct
from tests.vm.install import host_python_mismatch
from tests.vm.machine import RENDERED, Logger, MachineError, Timings, diagnose, lint, reap, rig


def scenarios() -> list[str]:
    return sorted(path.stem for path in RENDERED.glob("*.json"))


def load(name: str) -> dict[str, Any] | None:
    path = Path(name) if name.endswith(".json") else RENDERED / f"{name}.json"
    if not path.is_file():
        return None
    rendering: dict[str, Any] = json.loads(path.read_text())
    return rendering


def terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the rig's cleanup runs.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.vm", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="scenario (see --list) or a rendering .json")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--keep", action="store_true", help="leave the nodes running")
    parser.add_argument("--cleanup", action="store_true", help="remove a kept run's nodes")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(scenarios()))
        return 0
    rendering = load(args.name) if args.name else None
    if rendering is None:
        known = ", ".join(scenarios()) or f"none: {RENDERED} holds no *.json"
        print(f"tests.vm: unknown scenario {args.name!r}; scenarios: {known}", file=sys.stderr)
        return 2
    if args.cleanup:
        reap(rendering)
        return 0
    missing = ct.missing_tools()
    if missing:
        print(
            f"tests.vm: missing {', '.join(missing)}:"
            " apt-get install systemd-container debootstrap",
            file=sys.stderr,
        )
        return 2
    mismatch = host_python_mismatch()
    if mismatch:
        print(f"tests.vm: {mismatch}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    return run(rendering, keep=args.keep)


def run(rendering: dict[str, Any], keep: bool = False) -> int:
    logger, timings = Logger(), Timings()
    started = time.monotonic()
    status = 1
    try:
        with timings.step("lint"):
            report = lint(rendering["testScript"], list(rendering["nodes"]))
        if report:
            logger.log_test_error(f"pyflakes found problems in the test script:\n{report}")
            return 2
        with timings.step("root"):
            ct.ensure_root()
        with rig(rendering, logger, timings, keep=keep) as driver:
            try:
                with timings.step("script"):
                    driver.run_script(rendering["testScript"])
                status = 0
            except BaseException:
                diagnose(driver)
                raise
    except MachineError as error:
        logger.log_test_error(str(error))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) and exit_.code else 1
    except KeyboardInterrupt:
        logger.log_test_error("interrupted")
        status = 130
    except Exception as error:
        import traceback

        for line in traceback.format_exc().splitlines():
            logger.log_test_error(line)
        logger.log_test_error(f"{type(error).__name__}: {error}")
    finally:
        logger.log(f"timings ({rendering['name']}):\n{timings.report()}")
        logger.log(
            f"{rendering['name']}: {'passed' if status == 0 else 'FAILED'}"
            f" in {time.monotonic() - started:.1f} s"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
