"""The committed renderings of the VM tests (tests/vm/rendered/NAME.json) are what the NixOS
module and nix/tests render now: a stale one would have the container runtime test old units.
Regenerate with `AISTACK_NIXPKGS_LIB=... python3 -m tests.vm.render`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.tools import tool_missing
from tests.vm.machine import lint
from tests.vm.render import LIB_HINT, SCENARIOS, dumps, path_of, render


def nixpkgs_lib() -> Path:
    value = os.environ.get("AISTACK_NIXPKGS_LIB", "")
    if not value or not (Path(value) / "lib" / "default.nix").is_file():
        pytest.skip(f"nixpkgs' lib is missing: {LIB_HINT}")
    return Path(value)


def nix_instantiate() -> str:
    found = shutil.which("nix-instantiate")
    if found is None:
        tool_missing("nix-instantiate", "apt-get install nix-bin")
    return found


def first_difference(committed: dict[str, Any], fresh: dict[str, Any]) -> str:
    """Where two renderings part, named as a reader looks for it: a unit of a node first."""
    for node in sorted(set(committed["nodes"]) | set(fresh["nodes"])):
        old, new = committed["nodes"].get(node), fresh["nodes"].get(node)
        if old is None or new is None:
            return f"node {node} is {'new' if old is None else 'gone'}"
        for unit in sorted(set(old["units"]) | set(new["units"])):
            if old["units"].get(unit) != new["units"].get(unit):
                return f"node {node}, unit {unit}"
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                    changed = sorted(
                        k
                        for k in set(old[key]) | set(new[key])
                        if old[key].get(k) != new[key].get(k)
                    )
                    return f"node {node}, {key}: {changed[0]}"
                return f"node {node}, {key}"
    for key in sorted(set(committed) | set(fresh)):
        if committed.get(key) != fresh.get(key):
            return key
    return "formatting only"


@pytest.mark.parametrize("name", SCENARIOS)
def test_committed_rendering_is_current(name):
    fresh = render(name, nixpkgs_lib(), nix_instantiate())
    path = path_of(name)
    assert path.is_file(), f"{path} is missing: run python3 -m tests.vm.render {name}"
    text = path.read_text()
    committed = json.loads(text)
    where = first_difference(committed, fresh)
    assert text == dumps(fresh), (
        f"{name}: tests/vm/rendered/{name}.json is stale (first difference: {where}); "
        f"run AISTACK_NIXPKGS_LIB=... python3 -m tests.vm.render {name}"
    )


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_test_script_is_pyflakes_clean_as_the_nixpkgs_driver_requires(name):
    # The lint `python3 -m tests.vm` runs first: pyflakes with the builtins that
    # nixos/lib/testing/driver.nix hands it (the node names and the driver's symbols).
    rendering = json.loads(path_of(name).read_text())
    assert lint(rendering["testScript"], list(rendering["nodes"])) == ""


def test_the_lint_sees_an_f_string_left_without_placeholders():
    # The defect nix/tests/gc.nix had: Nix substituted ${configFile} into an f-string.
    script = 'machine.succeed(f"aistack gc status --config /nix/store/x-aistack.json")\n'
    report = lint(script, ["machine"])
    assert "f-string is missing placeholders" in report, report


def test_the_lint_knows_the_driver_symbols_and_no_more():
    script = "start_all()\nwith subtest('x'):\n    webserver.succeed('true')\nscreen.x()\n"
    report = lint(script, ["webserver", "acme"])
    assert report.count("undefined name") == 1 and "'screen'" in report, report
