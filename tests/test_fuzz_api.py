"""Schemathesis against `/openapi.json` of a real `aistack gateway` process: every
operation, valid and invalid requests, and every answer must be no 5xx, a documented
status, the documented media type, and match the documented schema and headers.

Bounded for CI: AISTACK_FUZZ_EXAMPLES cases per operation and generation mode (default
200); `bench/fuzz.py` runs thousands. AISTACK_FUZZ_REPORT names a file that gets one JSON
line per test with its counts (the bench reads it).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aistack.config import ValidationConfig
from aistack.gateway.openapi import build_openapi
from aistack.stores.private_postgres import free_port
from tests import tools

try:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis import checks as sc
except ImportError:  # pragma: no cover - the test says how to get it
    schemathesis = None  # type: ignore[assignment]

EXAMPLES = int(os.environ.get("AISTACK_FUZZ_EXAMPLES", "200"))
REPORT = os.environ.get("AISTACK_FUZZ_REPORT", "")
CORPUS = Path(__file__).parents[1] / "daemon" / "aistack" / "demo" / "corpus.jsonl"
COLLECTION = "nixos_docs"
TOKEN = "tok_en-1"

# The operations the product documents, from the same builder the gateway serves.
DOCUMENT = build_openapi(ValidationConfig())
OPERATIONS = [
    f"{method.upper()} {path}" for path, methods in DOCUMENT["paths"].items() for method in methods
]
# Invalid requests exist only for operations that take a body (a path parameter typed
# "string" has no invalid values).
RUNS = [
    (f"{method.upper()} {path}", mode)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    for mode in ("positive", "negative")
    if mode == "positive" or "requestBody" in operation
]


def report(record: dict[str, Any]) -> None:
    print(json.dumps(record))
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def aistack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(f"the gateway did not answer /healthz:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def fuzzed_gateway(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`aistack gateway` on a loopback port, with a real PostgreSQL (migrated), Qdrant local
    mode holding part of the demo corpus, an ACME webroot with one token, and rate limits
    generous enough that the fuzz is not a stream of 429s."""
    if schemathesis is None:
        tools.tool_missing("schemathesis", "pip install schemathesis")
    tmp = tmp_path_factory.mktemp("fuzz-gateway")
    challenges = tmp / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / TOKEN).write_text(f"{TOKEN}.thumbprint")
    port = free_port()
    config = {
        "gateway": {"listen": [f"127.0.0.1:{port}"], "acme_webroot": str(tmp / "webroot")},
        "qdrant": {"path": str(tmp / "qdrant")},
        "postgres": {"dsn": postgres.create_database("fuzz")},
        "validation": {
            "rate_limits": ["100000/second", "10000000/hour"],
            "filterable": {COLLECTION: ["topic"]},
        },
    }
    path = tmp / "aistack.json"
    path.write_text(json.dumps(config))
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(CORPUS.read_text().splitlines(keepends=True)[:30]))
    for args in (
        ("db", "migrate", "--config", str(path)),
        ("ingest", "--config", str(path), "--collection", COLLECTION, str(docs)),
    ):
        result = aistack(*args)
        assert result.returncode == 0, result.stderr
    log = tmp / "gateway.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "gateway", "--config", str(path)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log)
        learn_solutions(base)
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A crash the answers did not show (an unhandled exception is logged, then answered
    # 500, which the checks would have caught) must not hide in the log either.
    assert "gateway.unhandled" not in log.read_text()


def post_json(base: str, path: str, body: object) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def learn_solutions(base: str) -> None:
    """A few rows in solved_issues, so that its range filters select from real points."""
    for number, score in enumerate((0.3, 0.6, 0.9)):
        body = {
            "query": f"fuzz question {number} about nixos option {number * 7}",
            "solution": f"set option {number}",
            "value_score": score,
        }
        status, answer = post_json(base, "/hybrid/learn", body)
        assert status == 201, answer


@pytest.fixture(scope="module")
def api_schema(fuzzed_gateway: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_gateway}/openapi.json")


def test_the_document_lists_every_route(fuzzed_gateway: str, api_schema: Any) -> None:
    """Schemathesis fuzzes what the document names: a route left out is never fuzzed."""
    served = {op.ok().label for op in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= served | {"GET /openapi.json"}
    assert {"POST /vector/search", "POST /hybrid/learn", "GET /readyz"} <= set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_fuzz_operation(api_schema: Any, fuzzed_gateway: str, label: str, mode: str) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in /openapi.json"
    generation = GenerationMode(mode)
    checks = [
        sc.not_a_server_error,
        sc.status_code_conformance,
        sc.content_type_conformance,
        sc.response_schema_conformance,
        sc.response_headers_conformance,
    ]
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    cases = 0

    @given(case=operation.as_strategy(generation_mode=generation), served=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, served: bool) -> None:
        nonlocal cases
        # Generated collection names are almost never served ones: send a served name
        # (and token) in half of the valid requests, so 200 answers are checked too.
        positive = generation is GenerationMode.POSITIVE
        if served and positive and isinstance(case.body, dict) and "collection" in case.body:
            case.body = {**case.body, "collection": COLLECTION}
        if served and "token" in (case.path_parameters or {}):
            case.path_parameters = {**case.path_parameters, "token": TOKEN}
        cases += 1
        try:
            response = case.call_and_validate(base_url=fuzzed_gateway, checks=checks)
        except Exception as error:
            failures.append(f"{error.__class__.__name__}: {str(error)[:2000]}")
            raise
        statuses[response.status_code] += 1

    started = time.monotonic()
    try:
        fuzz()
    finally:
        report(
            {
                "fuzzer": "schemathesis",
                "operation": label,
                "mode": mode,
                "cases": cases,
                "failures": len(failures),
                "statuses": dict(sorted(statuses.items())),
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    assert not failures, failures[0]


# Arbitrary filters: JSON of every kind where the grammar wants an object, a range or an
# exact value, keys the configuration declares or not, times in any zone and any year.
ZONES = [datetime.UTC, datetime.timezone(datetime.timedelta(hours=5, minutes=30))]
ZONES += [datetime.timezone(datetime.timedelta(hours=-23, minutes=-59))]
if schemathesis is not None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    )
    times = st.datetimes(timezones=st.sampled_from(ZONES)).map(lambda t: t.isoformat())
    bounds = st.integers() | st.floats() | times | json_values
    ranges = st.dictionaries(
        st.sampled_from(["gt", "gte", "lt", "lte"]) | st.text(max_size=4), bounds, max_size=5
    )
    filter_keys = st.sampled_from(["value_score", "created_at", "topic", "title", "text"])
    filters = json_values | st.dictionaries(
        filter_keys | st.text(max_size=6),
        ranges | st.sampled_from(["install", "boot", "networking"]) | json_values,
        max_size=6,
    )


def test_arbitrary_filters_never_fail_the_server(fuzzed_gateway: str) -> None:
    """Every filter is a 200 or a 422 naming its rule, never a 500 nor Qdrant's error."""
    statuses: collections.Counter[int] = collections.Counter()

    @given(
        collection=st.sampled_from([COLLECTION, "solved_issues", "evil_collection"]),
        search_filter=filters,
        offset=st.integers(min_value=0, max_value=40),
    )
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(collection: str, search_filter: Any, offset: int) -> None:
        body = {"collection": collection, "query": "nix", "limit": 5, "offset": offset}
        status, answer = post_json(
            fuzzed_gateway, "/vector/search", {**body, "filter": search_filter}
        )
        statuses[status] += 1
        assert status in (200, 422), (status, answer)
        if status == 422:
            assert answer["errors"] and all(item["msg"] for item in answer["errors"])
            return
        # The page agrees with its total: more beyond it exactly when the total says so.
        shown = offset + len(answer["results"])
        assert answer["has_more"] is (answer["total"] > shown)
        assert not answer["results"] or answer["total"] >= shown

    started = time.monotonic()
    try:
        fuzz()
    finally:
        report(
            {
                "fuzzer": "hypothesis",
                "operation": "POST /vector/search filter",
                "cases": sum(statuses.values()),
                "statuses": dict(sorted(statuses.items())),
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    assert statuses[200], statuses
