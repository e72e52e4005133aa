"""docs/options.md, generated from the NixOS module: `python3 -m tests.nix_options`
(with AISTACK_NIXPKGS_LIB set) rewrites it; tests/test_nix_module.py checks it is current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
OPTIONS_NIX = ROOT / "tests" / "nix" / "options.nix"
DOC = ROOT / "docs" / "options.md"


def options_data(nixpkgs_lib: Path, nix_instantiate: str = "nix-instantiate") -> list[dict]:
    expression = f"(import {OPTIONS_NIX}) {{ nixpkgsLib = {nixpkgs_lib}; }}"
    result = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def render(options: list[dict]) -> str:
    lines = [
        "# services.aiStack options",
        "",
        "Generated from `nix/modules` by `python3 -m tests.nix_options`; do not edit by hand",
        "(a test fails when this file and the module disagree).",
        "",
    ]
    for option in sorted(options, key=lambda o: o["name"]):
        lines += [f"## `{option['name']}`", ""]
        description = " ".join(option["description"].split())
        lines += [description, ""] if description else []
        lines.append(f"- type: {option['type']}")
        if option["default"] is not None:
            lines.append(f"- default: `{' '.join(option['default'].split())}`")
        if option["example"] is not None:
            lines.append(f"- example: `{' '.join(option['example'].split())}`")
        if option["readOnly"]:
            lines.append("- read-only")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    nixpkgs_lib = os.environ.get("AISTACK_NIXPKGS_LIB")
    if not nixpkgs_lib:
        print("set AISTACK_NIXPKGS_LIB to a checkout of nix-community/nixpkgs.lib", file=sys.stderr)
        return 2
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(options_data(Path(nixpkgs_lib))))
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
