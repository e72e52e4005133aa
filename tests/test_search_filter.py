"""`/vector/search`'s `filter`: its grammar and every refusal (the request model), exact
`total` and `has_more` across pages (a real gateway, the real model, Qdrant local mode with
the demo corpus, ingested documents and learned rows in a real PostgreSQL), no probing of
collections or keys, the configuration that declares the keys, and the OpenAPI document."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.config import ValidationConfig, validate_config
from aistack.gateway.filters import MAX_CONDITIONS
from aistack.gateway.openapi import build_openapi
from aistack.gateway.requests import SearchParser
from aistack.ingest.jsonl import ingest, read_documents
from aistack.stores.qdrant import VectorStore
from tests.learning import LearningStore, days_ago

CORPUS = Path(__file__).parents[1] / "daemon" / "aistack" / "demo" / "corpus.jsonl"
TOPICS: dict[str, set[int]] = {}
for line in CORPUS.read_text().splitlines():
    document = json.loads(line)
    TOPICS.setdefault(document["payload"]["topic"], set()).add(document["id"])

FILTERABLE = {"nixos_docs": ["topic", "title"], "telemetry_patterns": ["host"]}
CONFIG = ValidationConfig(filterable=FILTERABLE)
PARSER = SearchParser(CONFIG)
EVERY = frozenset(CONFIG.collections)
RANGE_RULE = "a range is an object with at least one of gt, gte, lt, lte"
TIME_RULE = (
    "a created_at bound is an RFC 3339 date-time with a time zone, e.g. 2026-11-01T00:00:00Z"
)
EXACT_RULE = "an exact match takes a string, a 64-bit integer or a boolean"


def parse(collection: str, search_filter: Any, allowed: frozenset[str] = EVERY) -> Any:
    body = {"collection": collection, "query": "q", "filter": search_filter}
    return PARSER.parse(json.dumps(body).encode(), allowed)


def problems(collection: str, search_filter: Any, allowed: frozenset[str] = EVERY) -> list:
    parsed = parse(collection, search_filter, allowed)
    assert isinstance(parsed, list), f"accepted: {search_filter!r}"
    return [tuple(problem) for problem in parsed]


# -- the grammar -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("collection", "search_filter", "expected"),
    [
        (
            "nixos_docs",
            [],
            [("filter", "model_type", "must be a JSON object of conditions", "invalid_filter")],
        ),
        (
            "nixos_docs",
            "topic=install",
            [("filter", "model_type", "must be a JSON object of conditions", "invalid_filter")],
        ),
        (
            "solved_issues",
            {"value_score": {}},
            [("filter.value_score", "too_short", RANGE_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"value_score": 0.8},
            [("filter.value_score", "dict_type", RANGE_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"created_at": [{"gte": "2026-11-01T00:00:00Z"}]},
            [("filter.created_at", "dict_type", RANGE_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"value_score": {"eq": 0.8}},
            [
                (
                    "filter.value_score.eq",
                    "unknown_operator",
                    "unknown operator: a range takes gt, gte, lt, lte",
                    "invalid_filter",
                )
            ],
        ),
        (
            "solved_issues",
            {"value_score": {"gte": "0.8"}},
            [
                (
                    "filter.value_score.gte",
                    "float_type",
                    "a value_score bound is a finite number",
                    "invalid_filter",
                )
            ],
        ),
        (
            "solved_issues",
            {"value_score": {"gte": True}},
            [
                (
                    "filter.value_score.gte",
                    "float_type",
                    "a value_score bound is a finite number",
                    "invalid_filter",
                )
            ],
        ),
        (
            "solved_issues",
            {"value_score": {"gte": {"lt": 1}}},
            [
                (
                    "filter.value_score.gte",
                    "float_type",
                    "a value_score bound is a finite number",
                    "invalid_filter",
                )
            ],
        ),
        (
            "solved_issues",
            {"created_at": {"gte": "2026-11-01T00:00:00"}},  # naive
            [("filter.created_at.gte", "string_pattern_mismatch", TIME_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"created_at": {"gte": "1700000000"}},  # a Unix time pydantic alone would take
            [("filter.created_at.gte", "string_pattern_mismatch", TIME_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"created_at": {"gte": "2026-11-01"}},
            [("filter.created_at.gte", "string_pattern_mismatch", TIME_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"created_at": {"lt": "2026-13-01T00:00:00Z"}},
            [("filter.created_at.lt", "datetime_from_date_parsing", TIME_RULE, "invalid_filter")],
        ),
        (
            "solved_issues",
            {"created_at": {"lt": 1700000000}},
            [("filter.created_at.lt", "string_type", TIME_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"[key]": [1]},  # pydantic's own name for a dict's key in its error locations
            [("filter.[key]", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"topic": ["install", "boot"]},
            [("filter.topic", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"topic": {"eq": "install"}},
            [("filter.topic", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"topic": None},
            [("filter.topic", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"topic": 1.5},
            [("filter.topic", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"topic": 2**63},  # Qdrant's integers are 64-bit
            [("filter.topic", "exact_value_type", EXACT_RULE, "invalid_filter")],
        ),
        (
            "nixos_docs",
            {"text": "install"},  # in every payload, but not declared
            [
                (
                    "filter.text",
                    "unfilterable_key",
                    "not filterable in this collection (filterable: title, topic)",
                    "unfilterable_key",
                )
            ],
        ),
        (
            "solved_issues",
            {"topic": "install"},
            [
                (
                    "filter.topic",
                    "unfilterable_key",
                    "not filterable in this collection (filterable: none)",
                    "unfilterable_key",
                )
            ],
        ),
        (
            "nixos_docs",
            {"value_score": {"gte": 0.5}},
            [
                (
                    "filter.value_score",
                    "unfilterable_key",
                    "a range filter of solved_issues only",
                    "unfilterable_key",
                )
            ],
        ),
        (
            "telemetry_patterns",
            {"created_at": {"gte": "2026-11-01T00:00:00Z"}, "host": "a"},
            [
                (
                    "filter.created_at",
                    "unfilterable_key",
                    "a range filter of solved_issues only",
                    "unfilterable_key",
                )
            ],
        ),
        (
            "telemetry_patterns",
            {"host": "a", "b": 1, "c": 2, "d": 3, "e": 4},
            [
                (
                    "filter",
                    "too_many_conditions",
                    "at most 4 conditions (got 5)",
                    "too_many_conditions",
                )
            ]
            + [
                (
                    f"filter.{key}",
                    "unfilterable_key",
                    "not filterable in this collection (filterable: host)",
                    "unfilterable_key",
                )
                for key in "bcde"
            ],
        ),
    ],
)
def test_each_refusal_names_its_rule(collection, search_filter, expected):
    assert problems(collection, search_filter) == expected


def test_non_finite_bounds_are_refused():
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        body = b'{"collection": "solved_issues", "query": "q", "filter": {"value_score": {"lt": '
        found = PARSER.parse(body + number + b"}}}", EVERY)
        assert isinstance(found, list)
        assert [tuple(p) for p in found] == [
            (
                "filter.value_score.lt",
                "finite_number",
                "a value_score bound is a finite number",
                "invalid_filter",
            )
        ], number


@pytest.mark.parametrize("operator", ["gt", "gte", "lt", "lte"])
def test_every_operator_is_accepted_on_both_ranges(operator):
    when = "2026-11-01T12:30:00.5+01:00"
    request = parse("solved_issues", {"value_score": {operator: 1}, "created_at": {operator: when}})
    assert not isinstance(request, list), request
    assert request.filter.value_score == {operator: 1.0}
    assert request.filter.created_at == {
        operator: datetime.datetime(2026, 11, 1, 11, 30, 0, 500000, tzinfo=datetime.UTC)
    }


def test_exact_matches_take_strings_integers_and_booleans_and_null_is_no_filter():
    request = parse("nixos_docs", {"topic": "install", "title": 7})
    assert not isinstance(request, list) and request.filter.exact() == {
        "topic": "install",
        "title": 7,
    }
    request = parse("telemetry_patterns", {"host": True})
    assert not isinstance(request, list) and request.filter.exact() == {"host": True}
    for absent in ({}, {"filter": None}):
        body = json.dumps({"collection": "nixos_docs", "query": "q", **absent}).encode()
        request = PARSER.parse(body, EVERY)
        assert not isinstance(request, list) and request.filter is None
    full = {"value_score": {"gte": 0.1, "lte": 0.9}, "created_at": {"lt": "2027-01-01T00:00:00Z"}}
    assert not isinstance(parse("solved_issues", full), list)
    assert MAX_CONDITIONS == 4


def test_a_repeated_key_inside_the_filter_is_refused():
    body = b'{"collection": "nixos_docs", "query": "q", "filter": {"topic": "a", "topic": "b"}}'
    found = PARSER.parse(body, EVERY)
    assert isinstance(found, list) and found[0].reason == "duplicate_key"


# -- no probing ----------------------------------------------------------------------------

filters = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["value_score", "created_at", "topic", "host", "text", "gte", "lt"])
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=10,
)


FILTER_REASONS = {"invalid_filter", "unfilterable_key", "too_many_conditions"}


@settings(max_examples=300, deadline=None)
@given(collection=st.sampled_from(sorted(EVERY)), search_filter=filters)
def test_any_filter_is_accepted_within_the_grammar_or_refused_for_a_fixed_reason(
    collection, search_filter
):
    parsed = parse(collection, search_filter)
    if isinstance(parsed, list):
        for problem in parsed:
            assert problem.reason in FILTER_REASONS, problem
            assert problem.loc.startswith("filter") and len(problem.loc) <= 64
            assert problem.loc.isprintable() and problem.msg
        return
    if search_filter is None:
        assert parsed.filter is None
        return
    # A null range is no condition, in any collection.
    ranges = {"value_score", "created_at"}
    conditions = {key for key, value in search_filter.items() if key not in ranges or value}
    offered = set(FILTERABLE.get(collection, [])) | (
        ranges if collection == "solved_issues" else set()
    )
    assert conditions <= offered
    assert parsed.filter.conditions() == len(conditions) <= MAX_CONDITIONS


@settings(max_examples=300, deadline=None)
@given(search_filter=filters)
def test_a_collection_the_caller_may_not_use_answers_the_same_whatever_the_filter(search_filter):
    """Forbidden (solved_issues, telemetry_patterns to a docs-only caller) or unknown: the
    same problems, led by the one unknown_collection, for any filter; the filter's own
    problems are those of its grammar alone, never of what a collection declares."""
    docs_only = frozenset({"nixos_docs"})
    answers = [
        problems(name, search_filter, docs_only)
        for name in ("solved_issues", "telemetry_patterns", "evil_collection", "../etc")
    ]
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0][0] == (
        "collection",
        "unknown_collection",
        "Unknown collection",
        "unknown_collection",
    )
    assert all(problem[3] != "unfilterable_key" for problem in answers[0])


def test_a_key_not_declared_answers_the_same_whether_payloads_have_it_or_not():
    """A key the collection does not declare: one answer, whether every document has it
    (text), another collection the caller may not use declares it (host), or nothing has it."""
    docs_only = frozenset({"nixos_docs"})
    answers = {
        key: problems("nixos_docs", {key: "x"}, docs_only)[0][1:]
        for key in ("text", "host", "no_such_key")
    }
    assert len(set(answers.values())) == 1, answers
    assert "host" not in answers["host"][1]


# -- the document --------------------------------------------------------------------------


def test_the_document_shows_the_grammar_and_no_collection_or_key():
    config = ValidationConfig(
        collections=["secret_collection", "solved_issues"],
        filterable={"secret_collection": ["secret_key"]},
    )
    document = build_openapi(config)
    text = json.dumps(document)
    assert "secret_collection" not in text and "secret_key" not in text
    grammar = document["components"]["schemas"]["SearchFilter"]
    assert grammar["maxProperties"] == MAX_CONDITIONS
    score = grammar["properties"]["value_score"]["anyOf"][0]
    assert sorted(score["properties"]) == ["gt", "gte", "lt", "lte"]
    assert score["additionalProperties"] is False and score["minProperties"] == 1
    bound = grammar["properties"]["created_at"]["anyOf"][0]["properties"]["gte"]
    assert bound["format"] == "date-time" and bound["pattern"].endswith(
        "([Zz]|[+-][0-9]{2}:[0-9]{2})$"
    )
    exact = {item["type"] for item in grammar["additionalProperties"]["anyOf"]}
    assert exact == {"string", "integer", "boolean"}
    # One document for every configuration of keys: nothing of it comes from `filterable`.
    assert document == build_openapi(
        ValidationConfig(collections=["secret_collection", "solved_issues"])
    )


# -- a real gateway ------------------------------------------------------------------------


async def post(server: Any, body: dict, headers: dict | None = None) -> tuple[int, Any]:
    async with ClientSession() as session:
        async with session.post(server.make_url("/vector/search"), json=body, headers=headers) as r:
            return r.status, await r.json()


async def pages(server: Any, body: dict, limit: int, offsets: range) -> list[dict]:
    found = []
    for offset in offsets:
        status, page = await post(server, {**body, "limit": limit, "offset": offset})
        assert status == 200, page
        found.append(page)
    return found


async def test_a_filtered_search_pages_exactly_through_its_subset(gateway):
    server = await gateway(validation={"filterable": {"nixos_docs": ["topic"]}})
    # The unfiltered count is cached first: the filtered total must not come from it.
    status, plain = await post(server, {"collection": "nixos_docs", "query": "install"})
    assert status == 200 and plain["total"] == 231
    install = TOPICS["install"]
    assert len(install) == 19
    body = {"collection": "nixos_docs", "query": "install", "filter": {"topic": "install"}}
    found = await pages(server, body, 5, range(0, 25, 5))
    assert [page["total"] for page in found] == [19] * 5
    assert [page["has_more"] for page in found] == [True, True, True, False, False]
    assert [len(page["results"]) for page in found] == [5, 5, 5, 4, 0]
    ids = [hit["id"] for page in found for hit in page["results"]]
    assert len(ids) == len(set(ids)) and set(ids) == install
    assert all(hit["payload"]["topic"] == "install" for page in found for hit in page["results"])
    # The last full page, exactly: 15 + 4.
    (last,) = await pages(server, body, 4, range(15, 16))
    assert last["has_more"] is False and len(last["results"]) == 4 and last["total"] == 19
    status, nothing = await post(server, {**body, "filter": {"topic": "no such topic"}})
    assert status == 200 and nothing["results"] == [] and nothing["total"] == 0


async def test_in_local_mode_only_a_page_that_proves_nothing_is_counted(
    gateway, corpus_store, monkeypatch
):
    # A spy, not a fake: every count still goes to the real store; the test only sees which
    # pages asked for one (in local mode a filtered count is a pass over every point).
    filters: list[Any] = []
    count = corpus_store.count

    async def counted(name: str, query_filter: Any = None) -> int:
        filters.append(query_filter)
        return await count(name, query_filter)

    monkeypatch.setattr(corpus_store, "count", counted)
    server = await gateway(validation={"filterable": {"nixos_docs": ["topic"]}})
    body = {"collection": "nixos_docs", "query": "install", "filter": {"topic": "install"}}
    asked = []
    for limit, offset in [(5, 0), (5, 15), (4, 15), (5, 20), (20, 0), (18, 0), (5, 40)]:
        before = len(filters)
        (page,) = await pages(server, body, limit, range(offset, offset + 1))
        assert page["total"] == 19, (limit, offset, page)
        asked.append(len(filters) - before)
    # More hits follow (at 0 by 5, and by 18): counted; the subset ends within the page
    # (4 left at 15, 19 of 20 at 0): proven; nothing past an offset (20, 40): counted.
    assert asked == [1, 0, 0, 1, 0, 1, 1]
    status, nothing = await post(server, {**body, "filter": {"topic": "no such topic"}})
    assert status == 200 and nothing["total"] == 0
    assert all(selected is not None for selected in filters) and len(filters) == sum(asked)


async def test_exact_matches_keep_integers_booleans_and_strings_apart(gateway, tmp_path, embedder):
    lines = [
        {"id": 1, "text": "release notes 25.11", "payload": {"year": 2025, "stable": True}},
        {"id": 2, "text": "release notes 26.05", "payload": {"year": 2026, "stable": True}},
        {"id": 3, "text": "unstable channel notes", "payload": {"year": 2026, "stable": False}},
        {"id": 4, "text": "a year written as text", "payload": {"year": "2026", "stable": 1}},
    ]
    source = tmp_path / "releases.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = VectorStore.connect(validate_config({"qdrant": {"path": str(tmp_path / "q")}}).qdrant)
    try:
        await ingest(read_documents(source), "nixos_docs", embedder, store, progress=None)
        server = await gateway(
            store=store, validation={"filterable": {"nixos_docs": ["year", "stable"]}}
        )

        async def ids(search_filter: dict) -> tuple[list[int], int]:
            body = {"collection": "nixos_docs", "query": "notes", "filter": search_filter}
            status, page = await post(server, body)
            assert status == 200, page
            return sorted(hit["id"] for hit in page["results"]), page["total"]

        assert await ids({"year": 2026}) == ([2, 3], 2)
        assert await ids({"year": "2026"}) == ([4], 1)
        assert await ids({"stable": True}) == ([1, 2], 2)
        assert await ids({"stable": 1}) == ([4], 1)
        assert await ids({"year": 2026, "stable": False}) == ([3], 1)
    finally:
        await store.close()


async def test_ranges_on_the_learning_store_select_exactly(gateway, learning: LearningStore):
    rows = {}
    for number, (score, age) in enumerate([(0.2, 1), (0.5, 3), (0.8, 5), (0.9, 20), (0.95, 40)]):
        query = f"how do I fix problem number {number} in my nixos configuration"
        rows[(score, age)] = await learning.add(query, score, age_days=age)
    server = await gateway(store=learning.store, postgres={"dsn": learning.dsn})

    async def selected(search_filter: dict, limit: int = 10) -> tuple[set[int], int]:
        body = {"collection": "solved_issues", "query": "fix nixos", "filter": search_filter}
        found: set[int] = set()
        offset, total = 0, None
        while True:
            status, page = await post(server, {**body, "limit": limit, "offset": offset})
            assert status == 200, page
            assert total in (None, page["total"])
            total = page["total"]
            found |= {hit["id"] for hit in page["results"]}
            if not page["has_more"]:
                return found, total
            offset += limit

    def ids(*keys: tuple[float, int]) -> set[int]:
        return {rows[key] for key in keys}

    good = ids((0.8, 5), (0.9, 20), (0.95, 40))
    assert await selected({"value_score": {"gte": 0.8}}) == (good, 3)
    assert await selected({"value_score": {"gte": 0.8}}, limit=1) == (good, 3)
    assert await selected({"value_score": {"gt": 0.8}}) == (ids((0.9, 20), (0.95, 40)), 2)
    assert await selected({"value_score": {"lt": 0.5}}) == (ids((0.2, 1)), 1)
    assert await selected({"value_score": {"lte": 0.5}}) == (ids((0.2, 1), (0.5, 3)), 2)
    since = days_ago(10).isoformat()
    recent = ids((0.2, 1), (0.5, 3), (0.8, 5))
    assert await selected({"created_at": {"gte": since}}, limit=2) == (recent, 3)
    assert await selected({"created_at": {"gt": since}}) == (recent, 3)
    assert await selected({"created_at": {"lt": since}}) == (ids((0.9, 20), (0.95, 40)), 2)
    assert await selected({"created_at": {"lte": since}}) == (ids((0.9, 20), (0.95, 40)), 2)
    # Another zone, the same instant.
    zoned = days_ago(10).astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
    assert await selected({"created_at": {"gte": zoned.isoformat()}}) == (recent, 3)
    both = {"value_score": {"gte": 0.8}, "created_at": {"gte": since}}
    assert await selected(both) == (ids((0.8, 5)), 1)


async def test_refusals_over_http_are_counted_and_never_reach_the_model(gateway, embedder):
    server = await gateway(validation={"filterable": {"nixos_docs": ["topic"]}})
    misses = embedder.misses
    bad = {
        "invalid_filter": {"topic": ["install"]},
        "unfilterable_key": {"text": "install"},
        "too_many_conditions": {"topic": "a", "b": 1, "c": 1, "d": 1, "e": 1},
    }
    for search_filter in bad.values():
        body = {"collection": "nixos_docs", "query": "an unseen query", "filter": search_filter}
        status, answer = await post(server, body)
        assert status == 422, answer
    status, answer = await post(
        server, {"collection": "nixos_docs", "query": "q", "filter": {"text": "install"}}
    )
    assert answer["detail"] == (
        "filter.text: not filterable in this collection (filterable: topic)"
    )
    assert answer["errors"] == [
        {
            "loc": "filter.text",
            "type": "unfilterable_key",
            "msg": "not filterable in this collection (filterable: topic)",
        }
    ]
    assert embedder.misses == misses
    async with ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            metrics = await response.text()
    for reason in bad:
        assert f'aidb_query_validation_failures_total{{reason="{reason}"}}' in metrics, reason


async def test_filters_probe_no_collection_and_no_key_through_api_keys(gateway, tmp_path):
    key = "k-" + "b" * 40
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[keys.docs-only]\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'collections = ["nixos_docs"]\nendpoints = ["/vector/search"]\n'
    )
    server = await gateway(
        gateway={"api_keys_file": str(keys)},
        validation={"filterable": {"nixos_docs": ["topic"], "telemetry_patterns": ["host"]}},
    )
    auth = {"Authorization": f"Bearer {key}"}
    ranges = {"value_score": {"gte": 0.8}, "created_at": {"gte": "2026-11-01T00:00:00Z"}}
    for search_filter in (ranges, {"host": "db1"}, {"topic": "install"}, {"zzz": [1]}):
        answers = [
            await post(server, {"collection": name, "query": "a", "filter": search_filter}, auth)
            for name in ("solved_issues", "telemetry_patterns", "evil_collection")
        ]
        assert answers[0] == answers[1] == answers[2], answers
        assert answers[0][0] == 422
        assert answers[0][1]["errors"][0]["type"] == "unknown_collection"
    # The caller's own collection: a key another collection declares is simply not
    # declared here, and the message lists only this collection's keys.
    status, host = await post(
        server, {"collection": "nixos_docs", "query": "a", "filter": {"host": "db1"}}, auth
    )
    status_text, text = await post(
        server, {"collection": "nixos_docs", "query": "a", "filter": {"text": "db1"}}, auth
    )
    assert status == status_text == 422
    assert host["errors"][0]["msg"] == text["errors"][0]["msg"]
    assert "host" not in host["errors"][0]["msg"]
    status, allowed = await post(
        server, {"collection": "nixos_docs", "query": "a", "filter": {"topic": "boot"}}, auth
    )
    assert status == 200 and allowed["total"] == len(TOPICS["boot"])


async def test_the_served_document_names_no_filterable_key(gateway):
    server = await gateway(
        validation={"filterable": {"nixos_docs": ["topic"], "telemetry_patterns": ["host"]}}
    )
    async with ClientSession() as session:
        async with session.get(server.make_url("/openapi.json")) as response:
            document = await response.json()
    text = json.dumps(document)
    assert '"topic"' not in text and '"host"' not in text and "telemetry_patterns" not in text
    assert "SearchFilter" in document["components"]["schemas"]
