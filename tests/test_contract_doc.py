"""docs/contract.md, the user-facing contract, against the code: the commands the CLI
parses, the configuration keys the model accepts, the routes the gateway serves and the
metrics the daemon exports, each checked in both directions."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from aiohttp import web

from aistack.cli import build_parser
from aistack.config import CertificateSettings, Config
from aistack.gateway.app import add_routes

ROOT = Path(__file__).parents[1]
CONTRACT = (ROOT / "docs" / "contract.md").read_text()
PACKAGE = ROOT / "daemon" / "aistack"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands() -> set[str]:
    """Every runnable command, e.g. "gc run", "demo"."""
    found: set[str] = set()
    for name, parser in subcommands(build_parser()).items():
        nested = subcommands(parser)
        found |= {f"{name} {sub}" for sub in nested} if nested else {name}
    return found


def documented_commands() -> set[str]:
    rows = re.findall(r"^\| `aistack ([a-z ]+?)(?: --| \[|`)", CONTRACT, re.MULTILINE)
    return {row.strip() for row in rows}


def test_the_contract_lists_exactly_the_cli_commands():
    assert documented_commands() == cli_commands()


def documented_keys(block_number: int = 1) -> dict[str, set[str]]:
    block = CONTRACT.split("```toml\n")[block_number].split("```", 1)[0]
    keys: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        if header := re.fullmatch(r"\[([\w.]+)\]", line):
            section = header[1]
            keys[section] = set()
        elif key := re.match(r"(\w+) = ", line):
            keys[section].add(key[1])
    return keys


def test_the_contract_lists_exactly_the_configuration_keys():
    sections = {
        name: set(field.annotation.model_fields)  # type: ignore[union-attr]
        for name, field in Config.model_fields.items()
        if name != "source"
    }
    assert documented_keys() == sections


def test_the_contract_lists_exactly_the_keys_of_one_certificate():
    assert documented_keys(2) == {"acme.certificates.NAME": set(CertificateSettings.model_fields)}


def test_the_contract_lists_exactly_the_endpoints():
    app = web.Application()
    add_routes(app.router)
    served = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        # Not the catch-all for what no route serves (404/405), nor aiohttp's HEAD twins.
        if route.resource is not None and route.method not in ("*", "HEAD")
    }
    documented = set(re.findall(r"^\| `((?:GET|POST) \S+)`", CONTRACT, re.MULTILINE))
    assert documented == served


def exported_metrics() -> set[str]:
    """Names given to prometheus_client's metrics and metric families (and our counters),
    as exposed: counters with their `_total`."""
    names: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            kind = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            kind = node.func.id if isinstance(node.func, ast.Name) else kind
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            if re.search(r"Counter|Gauge|Histogram", kind):
                names.add(first.value + ("_total" if "Counter" in kind else ""))
    return names


def test_the_contract_lists_exactly_the_exported_metrics():
    documented = set(re.findall(r"^\| `((?:aidb|aistack|hybrid)_\w+)`", CONTRACT, re.MULTILINE))
    assert documented == exported_metrics()
