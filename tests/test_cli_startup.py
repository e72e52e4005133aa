"""`aistack --help`, a command's `--help` and a usage error answer without loading what
only running a command needs (the configuration models, asyncio, the stores, the ACME
client): what makes them take 0.4 s instead of 0.08 s (hyperfine figures in the README)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "pydantic",
    "asyncio",
    "aiohttp",
    "asyncpg",
    "acme",
    "josepy",
    "requests",
    "cryptography",
    "numpy",
    "qdrant_client",
    "aistack.config",
)
PROBE = """
import json, sys
from aistack.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def loaded_by(*argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["gc", "run", "--help"], 0),
        (["acme", "renew", "--help"], 0),
        (["gateway", "--help"], 0),
        (["no-such-command"], 2),
        (["gc", "run"], 2),  # --config missing
    ],
)
def test_help_and_usage_errors_load_nothing_heavy(argv, code):
    assert loaded_by(*argv) == {"code": code, "loaded": []}


def test_a_command_that_runs_still_loads_what_it_needs(tmp_path):
    config = tmp_path / "aistack.json"
    config.write_text('{"qdrant": {"path": "/tmp/x"}}')
    answer = loaded_by("config", "check", "--config", str(config))
    assert answer["code"] == 0 and "aistack.config" in answer["loaded"]
