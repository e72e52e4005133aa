"""Property tests of the search request model: it accepts exactly the documented requests."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from aistack.config import ValidationConfig
from aistack.gateway.requests import (
    SearchParser,
    has_control_characters,
)

CONFIG = ValidationConfig(max_query_chars=300, max_limit=50, max_offset=1000)
PARSER = SearchParser(CONFIG)
ALLOWED = frozenset({"nixos_docs", "solved_issues"})

collections = st.one_of(
    st.sampled_from(sorted(ALLOWED)), st.text(max_size=70), st.just("evil_collection")
)
queries = st.text(max_size=320)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=2000), st.booleans(), st.floats(), st.text(max_size=3)
)


@settings(max_examples=400, deadline=None)
@example(collection="nixos_docs", query="\ud83d\ude00", limit=None, offset=None)
@example(collection="nixos_docs", query="\ud800", limit=None, offset=None)
@example(collection="evil_collection", query="Unkn", limit=None, offset=None)
@example(collection="nixos_docs", query="Unknown collection " * 16, limit=None, offset=None)
@given(
    collection=collections,
    query=queries,
    limit=st.one_of(st.none(), numbers),
    offset=st.one_of(st.none(), numbers),
)
def test_model_accepts_exactly_the_valid_requests(collection, query, limit, offset):
    body = {"collection": collection, "query": query}
    if limit is not None:
        body["limit"] = limit
    if offset is not None:
        body["offset"] = offset

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    try:
        encoded = json.dumps(body).encode()
    except ValueError:
        return
    # Judge the query the server decodes: a high and a low surrogate written as two
    # escapes arrive as one astral character (hypothesis found "\ud83d\ude00").
    decoded = json.loads(encoded)["query"]
    expected_ok = (
        collection in ALLOWED
        and 1 <= len(decoded) <= 300
        and not has_control_characters(decoded)
        and (limit is None or (is_int(limit) and 1 <= limit <= 50))
        and (offset is None or (is_int(offset) and 0 <= offset <= 1000))
    )
    request = PARSER.parse(encoded, ALLOWED)
    if isinstance(request, list):
        assert not expected_ok, request
        assert request
        # Never echoes the query back: the answer depends on the query's length and on
        # whether it has control characters, never on its text. Looking for the query
        # inside the messages cannot tell that: a query may be part of a fixed message
        # ("Unkn" is in "Unknown collection") without having been echoed. So the query is
        # replaced by two twins, each character by a filler of its kind, which must get the
        # same problems; an echo would differ between "xxxx" and "yyyy". A lone surrogate
        # stays: the JSON parser refuses it, so it decides that the body is malformed.
        for filler, control in (("x", "\x00"), ("y", "\x01")):
            twin = "".join(
                char
                if unicodedata.category(char) == "Cs"
                else control
                if has_control_characters(char)
                else filler
                for char in decoded
            )
            assert PARSER.parse(json.dumps({**body, "query": twin}).encode(), ALLOWED) == request
        for problem in request:
            # Always names a fixed reason.
            assert problem.reason in {
                "too_long",
                "too_short",
                "out_of_range",
                "unknown_field",
                "missing_field",
                "unknown_collection",
                "control_character",
                "malformed_json",
                "wrong_type",
                "invalid",
            }
        return
    assert expected_ok, body
    assert request.limit == (limit if limit is not None else 10)
    assert request.offset == (offset if offset is not None else 0)


@given(st.dictionaries(st.text(max_size=10), st.integers(), min_size=1, max_size=3))
def test_unknown_fields_are_always_refused(extra):
    body = {"collection": "nixos_docs", "query": "q", **extra}
    unknown = set(extra) - {"collection", "query", "limit", "offset"}
    problems = PARSER.parse(json.dumps(body).encode(), ALLOWED)
    accepted = not isinstance(problems, list)
    if unknown:
        assert not accepted and any(p.reason == "unknown_field" for p in problems)
    if unknown:
        assert not accepted


@given(collection=collections)
def test_a_name_the_caller_may_not_use_gets_one_answer_whatever_it_is(collection):
    """Unknown, forbidden to this caller, malformed, or a caller with no collection at all:
    the collection's problem is the same, so answers cannot be told apart."""
    body = json.dumps({"collection": collection, "query": "q"}).encode()
    for allowed in (ALLOWED, frozenset({"solved_issues"}), frozenset()):
        if collection in allowed:
            continue
        problems = PARSER.parse(body, allowed)
        assert problems == [
            ("collection", "unknown_collection", "Unknown collection", "unknown_collection")
        ], f"{collection!r} for {sorted(allowed)}"


def test_the_documented_model_lists_no_collection_name():
    from aistack.gateway.requests import search_request_model

    schema = json.dumps(search_request_model(CONFIG).model_json_schema())
    assert "nixos_docs" not in schema and "enum" not in schema and "const" not in schema
