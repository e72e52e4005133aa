"""The NixOS VM tests' scripts, unchanged, against the module's rendered units booted under
a real systemd (tests/vm): each scenario as a user runs it, `python3 -m tests.vm NAME`.

The first run builds the Debian root (debootstrap, about a minute) when it is absent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import container as ct
from tests.vm.__main__ import load, scenarios
from tests.vm_rig import require_rig

CHECKOUT = Path(__file__).resolve().parents[1]


def run_rig(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.vm", *argv],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_three_vm_tests_are_listed():
    listed = run_rig("--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["acme", "gateway", "gc"]


def test_an_unknown_scenario_is_refused_naming_the_known_ones():
    result = run_rig("gatway")
    assert result.returncode == 2
    assert "unknown scenario 'gatway'" in result.stderr
    assert "acme, gateway, gc" in result.stderr


@pytest.fixture(scope="module")
def debian_root() -> None:
    require_rig()
    ct.ensure_root()


@pytest.mark.parametrize("name", scenarios())
def test_the_vm_test_script_passes_against_the_booted_units(debian_root, name):
    result = run_rig(name)
    # The whole log on failure: the script's traceback, the failed units, the journal.
    assert result.returncode == 0, result.stderr[-20000:]
    assert f"{name}: passed in" in result.stderr
    # Every subtest of the script finished: the log is the whole scenario's.
    script = load(name)["testScript"]
    subtests = re.findall(r'with subtest\("([^"]+)"\)', script)
    assert subtests
    for subtest in subtests:
        assert f"(finished: subtest: {subtest}, in" in result.stderr, subtest
