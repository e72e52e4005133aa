"""Run the two fuzzers of the test suite with many more cases than CI does.

    python3 bench/fuzz.py                    # 2000 schemathesis cases per operation and mode
    python3 bench/fuzz.py --examples 500 --config-examples 2000

It runs pytest on tests/test_fuzz_api.py (schemathesis against /openapi.json of a real
gateway) and tests/test_fuzz_config.py (hypothesis on the config loader, "fuzz" profile),
collects the per-test counts the tests write to AISTACK_FUZZ_REPORT, and prints cases,
failures, wall time and the machine. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for bench.common

from bench.common import machine, machine_line  # noqa: E402

TESTS = ["tests/test_fuzz_api.py", "tests/test_fuzz_config.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=2000,
        help="schemathesis cases per operation and generation mode (default 2000; CI: 200)",
    )
    parser.add_argument(
        "--config-examples",
        type=int,
        default=5000,
        help="hypothesis examples per config property (default 5000; CI: 200)",
    )
    parser.add_argument("--only", choices=["api", "config"], help="run one of the two fuzzers only")
    args = parser.parse_args()

    tests = {"api": TESTS[:1], "config": TESTS[1:]}.get(args.only or "", TESTS)
    with tempfile.TemporaryDirectory(prefix="aistack-fuzz-") as directory:
        report = Path(directory) / "report.jsonl"
        env = {
            **os.environ,
            "AISTACK_FUZZ_EXAMPLES": str(args.examples),
            "AISTACK_FUZZ_CONFIG_EXAMPLES": str(args.config_examples),
            "HYPOTHESIS_PROFILE": "fuzz",
            "AISTACK_FUZZ_REPORT": str(report),
        }
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        records = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if (report.exists())
            else []
        )

    print(machine_line(machine()))
    print(f"settings: --examples {args.examples} --config-examples {args.config_examples}")
    totals: Counter[str] = Counter()
    for record in records:
        if record["fuzzer"] == "schemathesis":
            name = f"{record['operation']} [{record['mode']}]"
            statuses = " ".join(f"{code}x{n}" for code, n in record["statuses"].items())
            print(
                f"  schemathesis {name:<48} {record['cases']:>6} cases "
                f"{record['failures']} failures {record['seconds']:>7.1f} s  {statuses}"
            )
        else:
            name = record["test"]
            print(f"  hypothesis   {name:<48} {record['cases']:>6} cases")
        totals[f"{record['fuzzer']} cases"] += record["cases"]
        totals[f"{record['fuzzer']} failures"] += record.get("failures", 0)
    summary = [line for line in result.stdout.splitlines() if line.strip()][-1:]
    print(
        f"total: schemathesis {totals['schemathesis cases']} cases, "
        f"{totals['schemathesis failures']} failures; "
        f"hypothesis {totals['hypothesis cases']} cases; wall time {seconds:.1f} s"
    )
    print(f"pytest: {summary[0] if summary else '(no output)'}")
    if result.returncode != 0:
        print(result.stdout[-6000:], file=sys.stderr)
        print(result.stderr[-2000:], file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
