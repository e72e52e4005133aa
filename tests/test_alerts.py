"""The shipped Prometheus alert rules: valid, behaving as intended (promtool test rules),
and naming only metrics that aistack really writes."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from aistack.acme.renew import CertificateState
from aistack.acme.status import CertificateStatus, StatusCollector
from aistack.gateway.metrics import GatewayMetrics
from aistack.gc.status import FiguresCollector, GcFigures
from aistack.observability.textfile import render
from tests.tools import tool_missing

ROOT = Path(__file__).parents[1]
RULES = ROOT / "daemon" / "aistack" / "observability" / "alerts.rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        tool_missing("promtool", "apt-get install prometheus")
    return found


def test_rules_are_valid():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_rules_fire_when_they_should():
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def written_metric_names() -> set[str]:
    now = datetime.datetime.now(datetime.UTC)
    acme = CertificateStatus(
        "example.org", ["example.org"], True, False, now, now, "not due",
        CertificateState(last_success=now.isoformat()),
    )  # fmt: skip
    gc = GcFigures({"expired": 1, "pruned": 0, "duplicate": 0}, 1, 10, 5, 5, 3, 1, 0, now, 1.0, [])
    gateway = GatewayMetrics(CollectorRegistry())
    gateway.dependency_down("qdrant")
    text = (
        render(StatusCollector([acme]))
        + render(FiguresCollector(gc))
        + generate_latest(gateway.registry)
    ).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_rules_name_only_metrics_aistack_writes():
    rules = RULES.read_text()
    used = set(re.findall(r"\b(aistack_[a-z_]+)", rules))
    assert used, "no metric found in the rules"
    missing = used - written_metric_names()
    assert not missing, f"rules use metrics nobody writes: {sorted(missing)}"
