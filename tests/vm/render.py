"""The VM tests' NixOS side, rendered: `python3 -m tests.vm.render [NAME...]` evaluates
nix/tests/NAME.nix with tests/nix/vm.nix (nixpkgs' `lib` plus the option stubs of
tests/nix/stubs.nix) and writes tests/vm/rendered/NAME.json, which the container runtime
installs. Needs AISTACK_NIXPKGS_LIB (a checkout of nix-community/nixpkgs.lib) and
nix-instantiate; tests/test_vm_rendering.py checks the committed files are current."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
VM_NIX = ROOT / "tests" / "nix" / "vm.nix"
RENDERED = Path(__file__).parent / "rendered"
SCENARIOS = ("gateway", "gc", "acme")
LIB_HINT = (
    "set AISTACK_NIXPKGS_LIB to a checkout of https://github.com/nix-community/nixpkgs.lib "
    "(the directory holding lib/)"
)


class RenderError(Exception):
    """The evaluation failed; the message is nix-instantiate's."""


def render(
    name: str, nixpkgs_lib: Path, nix_instantiate: str = "nix-instantiate"
) -> dict[str, Any]:
    """The rendering of one scenario, as data."""
    expression = f'(import {VM_NIX}) {{ nixpkgsLib = {nixpkgs_lib}; name = "{name}"; }}'
    result = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Nix's complaint about this machine's configuration (no nixbld group) is noise here.
    stderr = "\n".join(
        line for line in result.stderr.splitlines() if "build-users-group" not in line
    ).strip()
    if result.returncode != 0:
        if "infinite recursion" in stderr:
            stderr += (
                '\n(an `imports` that uses a module argument, e.g. "${pkgs.path}/...", recurses'
                " in NixOS as well; nixpkgs' own files are reached with `modulesPath`, e.g."
                ' "${modulesPath}/../tests/common/acme/server")'
            )
        raise RenderError(f"{name}: {stderr}")
    for line in stderr.splitlines():
        print(f"{name}: {line}", file=sys.stderr)
    return json.loads(result.stdout)


def dumps(rendering: dict[str, Any]) -> str:
    return json.dumps(rendering, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def path_of(name: str) -> Path:
    return RENDERED / f"{name}.json"


def main(argv: list[str]) -> int:
    nixpkgs_lib = os.environ.get("AISTACK_NIXPKGS_LIB", "")
    if not nixpkgs_lib or not (Path(nixpkgs_lib) / "lib" / "default.nix").is_file():
        print(LIB_HINT, file=sys.stderr)
        return 2
    nix_instantiate = shutil.which("nix-instantiate")
    if nix_instantiate is None:
        print("nix-instantiate is missing: apt-get install nix-bin", file=sys.stderr)
        return 2
    names = argv or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; they are {list(SCENARIOS)}", file=sys.stderr)
        return 2
    RENDERED.mkdir(exist_ok=True)
    failed = 0
    for name in names:
        try:
            rendering = render(name, Path(nixpkgs_lib), nix_instantiate)
        except RenderError as error:
            print(error, file=sys.stderr)
            failed += 1
            continue
        path_of(name).write_text(dumps(rendering))
        print(f"wrote {path_of(name).relative_to(ROOT)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
