"""`aistack --help`, a command's `--help` and a usage error answer without loading what
only running a command needs (the configuration models, asyncio, the stores, the ACME
client): what makes them take 0.4 s instead of 0.08 s (hyperfine figures in the README).
A not-due `acme renew`, against a real pebble, loads the configuration models and
nothing of the ACME client or the X.509 parser."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pebble import Pebble, running_pebble

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
    "idna.uts46data",
    "aistack.config",
)
PROBE = """
import json, sys
from aistack.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
config = sys.modules.get("aistack.config")
built = [
    name
    for name, model in vars(config).items()
    if isinstance(model, type) and issubclass(model, config.Section) and model.__pydantic_complete__
] if config else []
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules], "built": built}))
"""


def loaded_by(*argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    answer["said"] = (result.stderr.strip().splitlines() or [""])[-1]
    return answer


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
    answer = loaded_by(*argv)
    assert (answer["code"], answer["loaded"], answer["built"]) == (code, [], [])


def test_a_command_that_runs_still_loads_what_it_needs(tmp_path):
    config = tmp_path / "aistack.json"
    config.write_text('{"qdrant": {"path": "/tmp/x"}}')
    answer = loaded_by("config", "check", "--config", str(config))
    assert answer["code"] == 0 and "aistack.config" in answer["loaded"]
    # One validator for the file, Config's, its sections inside it: none built on its own.
    assert answer["built"] == ["Config"]


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble"))


def test_a_not_due_renewal_loads_no_acme_client_and_no_x509_parser(tmp_path: Path, pebble):
    config = tmp_path / "aistack.json"
    acme = {"domains": ["startup.aistack.test"], **pebble.acme_settings(tmp_path)}
    config.write_text(json.dumps({"qdrant": {"path": str(tmp_path / "q")}, "acme": acme}))
    issued = loaded_by("acme", "renew", "--config", str(config))
    assert issued["code"] == 0 and " renewed " in issued["said"]
    assert {"acme", "josepy", "requests", "cryptography"} <= set(issued["loaded"])

    answer = loaded_by("acme", "renew", "--config", str(config))
    assert answer["code"] == 0 and " not-due " in answer["said"], answer
    # The certificate's facts were kept when it was installed (certfiles.py), and the CA's
    # renewal window is read with the standard library (ari.py).
    assert answer["loaded"] == ["pydantic", "aistack.config"]
    assert answer["built"] == ["Config"]
