"""Each attack of the roadmap and each status code of DESIGN.md, against a real gateway
on a loopback socket with the real model and local Qdrant."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import re

import pytest
from aiohttp import ClientSession

from aistack.config import ConfigError
from aistack.gateway.access import load_access
from aistack.gateway.answers import REFUSAL_BODIES_KEPT, refusal_body
from aistack.gateway.requests import Problem
from aistack.gateway.routes import KEYED_ENDPOINTS
from aistack.observability.logs import EventFormatter

SEARCH = {"collection": "nixos_docs", "query": "enable the ssh server"}


async def post(server, body, headers=None, data=None):
    async with ClientSession() as session:
        kwargs = {"data": data} if data is not None else {"json": body}
        async with session.post(
            server.make_url("/vector/search"), headers=headers, **kwargs
        ) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None), response.headers


async def get(server, path, headers=None):
    async with ClientSession() as session:
        async with session.get(server.make_url(path), headers=headers) as response:
            return response.status, await response.text(), response.headers


async def raw_exchange(server, head: bytes, body_chunks=(), read_timeout=5.0):
    """Send bytes on a plain socket and return everything the server says back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head)
    for chunk in body_chunks:
        writer.write(chunk)
    await writer.drain()
    data = b""
    try:
        while True:
            piece = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not piece:
                break
            data += piece
    except TimeoutError:
        pass
    writer.close()
    return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- enumeration -----------------------------------------------------------------------


async def test_unknown_and_forbidden_collections_get_identical_answers(gateway, tmp_path, embedder):
    key = "k-" + "a" * 40
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[keys.docs-only]\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'collections = ["nixos_docs"]\nendpoints = ["/vector/search"]\n'
    )
    server = await gateway(gateway={"api_keys_file": str(keys)})
    auth = {"Authorization": f"Bearer {key}"}
    misses = embedder.misses
    forbidden = await post(server, {"collection": "solved_issues", "query": "a"}, auth)
    unknown = await post(server, {"collection": "evil_collection", "query": "a"}, auth)
    odd = await post(server, {"collection": "../../etc", "query": "a"}, auth)
    assert forbidden[0] == unknown[0] == odd[0] == 422
    assert forbidden[1] == unknown[1] == odd[1]
    assert forbidden[1]["detail"] == "collection: Unknown collection"
    # Neither reached the model nor Qdrant: all three fail the same check in validation.
    assert embedder.misses == misses
    allowed = await post(server, {"collection": "nixos_docs", "query": "a"}, auth)
    assert allowed[0] == 200


async def test_refusal_bodies_kept_for_reuse_are_bounded(gateway):
    """Refusal bodies are built once per distinct set of problems; a client that makes
    every refusal different (here: a new length each time) cannot grow that store."""
    refusal_body.cache_clear()
    server = await gateway(validation={"max_query_chars": 10})
    for length in range(11, 11 + 40):
        status, body, _ = await post(server, {**SEARCH, "query": "q" * length})
        assert status == 422 and body["detail"] == f"query: max_length 10 exceeded (got {length})"
    assert refusal_body.cache_info().currsize == 40
    for length in range(REFUSAL_BODIES_KEPT + 100):
        refusal_body((Problem("query", "string_too_long", f"got {length}", "too_long"),))
    assert refusal_body.cache_info().currsize == REFUSAL_BODIES_KEPT


# -- result flooding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("limit", 1000000, "limit: maximum 100 exceeded (got 1000000)"),
        ("limit", 0, "limit: minimum 1 not met (got 0)"),
        ("offset", 10001, "offset: maximum 10000 exceeded (got 10001)"),
        ("offset", -1, "offset: minimum 0 not met (got -1)"),
        ("limit", "10", "limit: Input should be a valid integer"),
        ("limit", True, "limit: Input should be a valid integer"),
    ],
)
async def test_result_flooding_is_refused(gateway, field, value, detail):
    server = await gateway()
    status, body, _ = await post(server, {**SEARCH, field: value})
    assert status == 422
    assert body["detail"] == detail


async def test_results_never_exceed_limit(gateway):
    server = await gateway()
    for limit in (1, 7, 100):
        status, body, _ = await post(server, {**SEARCH, "limit": limit})
        assert status == 200
        assert len(body["results"]) == limit


async def test_extra_fields_and_bad_json_are_refused(gateway):
    server = await gateway()
    status, body, _ = await post(server, {**SEARCH, "must": []})
    assert (status, body["detail"]) == (422, "must: unknown field")
    # `filter` has its own small grammar: Qdrant's own filter language is not passed on.
    status, body, _ = await post(server, {**SEARCH, "filter": {"must": []}})
    assert (status, body["detail"]) == (
        422,
        "filter.must: an exact match takes a string, a 64-bit integer or a boolean",
    )
    status, body, _ = await post(server, None, {"Content-Type": "application/json"}, b"{nope")
    assert (status, body["detail"]) == (422, "body: body is not valid JSON")
    status, body, _ = await post(server, None, {"Content-Type": "application/json"}, b"[1]")
    assert (status, body["detail"]) == (422, "body: body must be a JSON object")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"collection":"nixos_docs","query":"q","limit":1000,"limit":5}', "limit"),
        (b'{"collection":"nixos_docs","query":"q","collection":"nixos_docs"}', "collection"),
        (b'{"collection":"nixos_docs","query":"a","query":"b"}', "query"),
    ],
)
async def test_duplicate_keys_are_refused_naming_the_key(gateway, raw, key):
    # pydantic keeps the last of a repeated key; a proxy or audit log keeping the first
    # would see another request than the one answered.
    server = await gateway()
    headers = {"Content-Type": "application/json"}
    status, body, _ = await post(server, None, headers, raw)
    assert (status, body["detail"]) == (422, f"{key}: duplicate key")
    assert body["errors"] == [{"loc": key, "type": "duplicate_key", "msg": "duplicate key"}]
    _, metrics, _ = await get(server, "/metrics")
    assert 'aidb_query_validation_failures_total{reason="duplicate_key"} 1.0' in metrics


# -- injection patterns ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "<script>alert(1)</script>",
        "'; DROP TABLE solved_issues; --",
        "DROP\tTABLE users",
        "ＤＲＯＰ ｔａｂｌｅ x",  # fullwidth, folded by NFKC
        "dr\u200bop table x",  # zero-width space inside the word
        # Default_Ignorable_Code_Points that are not format characters (Cf): the combining
        # grapheme joiner, a variation selector, two Hangul fillers, a Mongolian selector.
        "<scr\u034fipt>",
        "<scr\ufe0fipt>",
        "<scr\u3164ipt>",
        "<scr\uffa0ipt>",
        "<scr\u180bipt>",
        "cat ../../etc/passwd",
        "<SCRIPT src=x>",
    ],
)
async def test_injection_patterns_are_rejected(gateway, query):
    server = await gateway()
    status, body, _ = await post(server, {**SEARCH, "query": query})
    assert status == 422
    assert body["errors"][0]["type"] == "deny_pattern"
    assert body["detail"].startswith("query: matches deny pattern")


async def test_control_characters_are_rejected(gateway):
    server = await gateway()
    status, body, _ = await post(server, {**SEARCH, "query": "abc\u0000def"})
    assert (status, body["detail"]) == (422, "query: control characters are not allowed")
    status, _, _ = await post(server, {**SEARCH, "query": "line one\nline two\ttab"})
    assert status == 200


async def test_a_deny_pattern_hit_is_logged_with_its_collection_and_field(gateway, caplog):
    server = await gateway()
    assert (await post(server, {**SEARCH, "query": "DROP TABLE x"}))[0] == 422
    journald = EventFormatter(journald=True)
    lines = [journald.format(r) for r in caplog.records if r.getMessage() == "gateway.deny_pattern"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("<4>event=gateway.deny_pattern endpoint=/vector/search"), lines[0]
    assert f"collection={SEARCH['collection']} field=query" in lines[0], lines[0]
    assert 'pattern="drop " action=reject' in lines[0], lines[0]


async def test_deny_action_log_answers_and_counts(gateway):
    server = await gateway(validation={"deny_action": "log"})
    status, body, _ = await post(server, {**SEARCH, "query": "postgres DROP TABLE howto"})
    assert status == 200 and body["results"]
    _, metrics, _ = await get(server, "/metrics")
    assert 'aidb_query_validation_failures_total{reason="deny_pattern"} 1.0' in metrics


async def test_deny_patterns_are_configurable(gateway):
    server = await gateway(validation={"deny_patterns": ["forbidden word"]})
    assert (await post(server, {**SEARCH, "query": "DROP TABLE"}))[0] == 200
    assert (await post(server, {**SEARCH, "query": "a FORBIDDEN  word"}))[0] == 422


# -- oversized bodies ------------------------------------------------------------------


def request_head(server, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"POST /vector/search HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\n{size}{extra}\r\n"
    ).encode()


async def test_oversized_content_length_is_refused_before_the_body(gateway):
    server = await gateway()
    # 1 GB announced, not one byte of it sent: the answer must come anyway.
    raw = await raw_exchange(server, request_head(server, 1 << 30))
    assert status_of(raw) == 413
    assert b"max_body_bytes 32768 exceeded (Content-Length 1073741824)" in raw
    assert b"Connection: close" in raw


async def test_a_body_that_trickles_in_past_the_deadline_gets_408_and_is_cut_off(
    gateway, monkeypatch
):
    """Slowloris on the body: the deadline (10 s in production) shortened to 0.5 s, so the
    test waits it out; a client still owing 90 bytes gets 408 and the connection closes."""
    from aistack.gateway import bodies

    monkeypatch.setattr(bodies, "BODY_DEADLINE_SECONDS", 0.5)
    server = await gateway()
    started = asyncio.get_running_loop().time()
    raw = await raw_exchange(server, request_head(server, 100), [b'{"collection": '])
    waited = asyncio.get_running_loop().time() - started
    assert status_of(raw) == 408
    assert b"body: not received within the deadline" in raw
    assert b"Connection: close" in raw
    assert 0.5 <= waited < 4.0  # the answer came at the deadline, not at the read timeout


async def test_expect_continue_gets_413_instead_of_100(gateway):
    server = await gateway()
    raw = await raw_exchange(server, request_head(server, 1 << 30, "Expect: 100-continue\r\n"))
    assert b"100 Continue" not in raw
    assert status_of(raw) == 413


async def test_expect_continue_for_a_fine_body_gets_100_then_200(gateway):
    server = await gateway()
    body = json.dumps(SEARCH).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head(server, len(body), "Expect: 100-continue\r\n"))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert final.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_expect_continue_does_not_reach_a_rate_limited_client(gateway):
    server = await gateway(validation={"rate_limits": ["1/minute"]})
    assert (await post(server, SEARCH))[0] == 200
    raw = await raw_exchange(server, request_head(server, 100, "Expect: 100-continue\r\n"))
    assert b"100 Continue" not in raw
    assert status_of(raw) == 429


async def test_chunked_body_growing_past_the_limit_is_cut_off(gateway):
    server = await gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # Read the answer as it comes: once the gateway resets the connection, asyncio's
    # reader raises instead of handing out what it had already received.
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    writer.write(request_head(server, None, "Transfer-Encoding: chunked\r\n"))
    chunk = b"x" * 65536
    sent = 0
    try:
        # Offer 256 MiB; the gateway must answer and hang up long before taking it all.
        for _ in range(4096):
            # asyncio's writer drops writes to a socket the peer closed without raising.
            if writer.transport.is_closing():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass
    head = await asyncio.wait_for(answer, 5)
    writer.close()
    assert status_of(head) == 413
    assert sent < 64 * 1024 * 1024


async def test_small_limit_is_configurable(gateway):
    server = await gateway(gateway={"max_body_bytes": 300})
    status, body, _ = await post(server, {**SEARCH, "query": "y" * 400})
    assert status == 413
    assert body["detail"].startswith("body: max_body_bytes 300 exceeded")


# -- media type ------------------------------------------------------------------------


async def test_non_json_media_type_is_415(gateway):
    server = await gateway()
    status, body, _ = await post(server, None, {"Content-Type": "text/plain"}, b"{}")
    assert status == 415
    assert "application/json" in body["detail"]
    ok = await post(
        server, None, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(SEARCH)
    )
    assert ok[0] == 200


# -- rate limiting ---------------------------------------------------------------------


async def test_61st_request_in_a_minute_gets_429(gateway):
    server = await gateway()
    async with ClientSession() as session:
        url = server.make_url("/vector/search")
        for number in range(1, 61):
            async with session.post(url, json=SEARCH) as response:
                assert response.status == 200, number
                assert response.headers["RateLimit-Policy"] == (
                    '"minute";q=60;w=60,"hour";q=1000;w=3600'
                )
                remaining = int(re.search(r";r=(\d+)", response.headers["RateLimit"]).group(1))
                assert remaining == 60 - number
        async with session.post(url, json=SEARCH) as response:
            assert response.status == 429
            retry_after = int(response.headers["Retry-After"])
            # The first request's sub-window (6 s) leaves the span at most 66 s after it.
            assert 1 <= retry_after <= 66
            assert response.headers["RateLimit"] == f'"minute";r=0;t={retry_after}'
            body = await response.json()
            assert body["detail"].startswith("rate limit exceeded (minute window)")
        # Invalid requests are counted too: a client cannot probe for free.
        async with session.post(url, json={"collection": "x", "query": ""}) as response:
            assert response.status == 429
    _, metrics, _ = await get(server, "/metrics")
    assert 'aistack_rate_limited_requests_total{window="minute"} 2.0' in metrics


async def test_clients_behind_a_trusted_proxy_are_limited_apart(gateway):
    server = await gateway(
        gateway={"trusted_proxies": ["127.0.0.1/32"]}, validation={"rate_limits": ["3/minute"]}
    )
    alice = {"X-Forwarded-For": "203.0.113.10"}
    bob = {"X-Forwarded-For": "198.51.100.7, 203.0.113.99"}
    for _ in range(3):
        assert (await post(server, SEARCH, alice))[0] == 200
    assert (await post(server, SEARCH, alice))[0] == 429
    assert (await post(server, SEARCH, bob))[0] == 200
    # Same address, another hop in front: Alice is still Alice.
    assert (await post(server, SEARCH, {"X-Forwarded-For": "10.9.9.9, 203.0.113.10"}))[0] == 429


async def test_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(gateway):
    server = await gateway(validation={"rate_limits": ["3/minute"]})
    for number in range(3):
        assert (await post(server, SEARCH, {"X-Forwarded-For": f"192.0.2.{number}"}))[0] == 200
    assert (await post(server, SEARCH, {"X-Forwarded-For": "192.0.2.200"}))[0] == 429


async def test_ipv6_clients_are_keyed_by_prefix(gateway):
    server = await gateway(
        gateway={"trusted_proxies": ["127.0.0.1/32"]}, validation={"rate_limits": ["2/minute"]}
    )
    assert (await post(server, SEARCH, {"X-Forwarded-For": "2001:db8:1:2::1"}))[0] == 200
    assert (await post(server, SEARCH, {"X-Forwarded-For": "2001:db8:1:2::ffff"}))[0] == 200
    # A fresh address in the same /64 is the same client.
    assert (await post(server, SEARCH, {"X-Forwarded-For": "2001:db8:1:2:abcd::9"}))[0] == 429
    assert (await post(server, SEARCH, {"X-Forwarded-For": "2001:db8:1:3::1"}))[0] == 200


async def test_every_answer_carries_the_rate_limit_policy(gateway):
    server = await gateway()
    for path in ("/healthz", "/metrics", "/nope"):
        _, _, headers = await get(server, path)
        assert headers["RateLimit-Policy"] == '"minute";q=60;w=60,"hour";q=1000;w=3600'
    _, _, headers = await post(server, {"collection": "evil", "query": "x"})
    assert headers["RateLimit"].startswith('"minute";r=59;')


async def test_ops_endpoints_do_not_consume_quota(gateway):
    server = await gateway(validation={"rate_limits": ["2/minute"]})
    for _ in range(5):
        assert (await get(server, "/healthz"))[0] == 200
        assert (await get(server, "/metrics"))[0] == 200
    assert (await post(server, SEARCH))[0] == 200


# -- access ----------------------------------------------------------------------------


async def test_api_keys(gateway, tmp_path):
    key, ops_key = "search-key-0123456789abcdef", "ops-key-0123456789abcdef"
    digest = hashlib.sha256
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": {
                    "agent": {
                        "sha256": digest(key.encode()).hexdigest(),
                        "collections": ["*"],
                        "endpoints": ["/vector/search"],
                    },
                    "prometheus": {
                        "sha256": digest(ops_key.encode()).hexdigest(),
                        "endpoints": ["/metrics", "/readyz"],
                    },
                }
            }
        )
    )
    server = await gateway(gateway={"api_keys_file": str(keys)})
    status, _, headers = await post(server, SEARCH)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert (await post(server, SEARCH, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await post(server, SEARCH, {"Authorization": f"Basic {key}"}))[0] == 401
    assert (await post(server, SEARCH, {"Authorization": f"Bearer {key}"}))[0] == 200
    assert (await get(server, "/healthz"))[0] == 200
    assert (await get(server, "/metrics"))[0] == 401
    assert (await get(server, "/openapi.json"))[0] == 401
    assert (await get(server, "/metrics", {"Authorization": f"Bearer {key}"}))[0] == 403
    assert (await get(server, "/metrics", {"Authorization": f"Bearer {ops_key}"}))[0] == 200
    assert (await post(server, SEARCH, {"Authorization": f"Bearer {ops_key}"}))[0] == 403


# -- metrics ---------------------------------------------------------------------------


async def test_metrics_names_buckets_and_no_client_chosen_labels(gateway):
    server = await gateway()
    await post(server, {"collection": "evil_collection_name", "query": "x"})
    await post(server, {**SEARCH, "query": "q" * 11000})
    await post(server, {**SEARCH, "query": "a" * 700})
    await get(server, "/some/probe/path/evil")
    status, text, headers = await get(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'aidb_query_validation_failures_total{reason="unknown_collection"} 1.0' in text
    assert 'aidb_query_validation_failures_total{reason="too_long"} 1.0' in text
    for bucket in ("100.0", "500.0", "1000.0", "5000.0", "10000.0", "+Inf"):
        assert f'aidb_query_size_bytes_bucket{{le="{bucket}"}}' in text
    assert 'aidb_query_size_bytes_bucket{le="500.0"} 0.0' in text
    assert 'aidb_query_size_bytes_bucket{le="1000.0"} 1.0' in text
    assert 'aistack_http_requests_total{endpoint="/vector/search",status="422"} 2.0' in text
    assert 'aistack_http_requests_total{endpoint="unmatched",status="404"} 1.0' in text
    assert "aistack_http_request_duration_seconds_bucket" in text
    assert "evil" not in text and "probe" not in text and "127.0.0.1" not in text


async def test_unserved_paths_and_methods_are_answered_counted_and_labelled(gateway):
    """No route for the path: 404; a route for another method: 405 naming the methods.
    Both are JSON answers with the RateLimit-Policy field, counted under "unmatched"."""
    server = await gateway()
    status, text, headers = await get(server, "/vector/search")
    assert status == 405 and headers["Allow"] == "POST"
    assert json.loads(text)["detail"] == "Method Not Allowed"
    assert "RateLimit-Policy" in headers
    async with ClientSession() as session:
        async with session.delete(server.make_url("/healthz")) as response:
            assert response.status == 405
            assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
    status, text, headers = await get(server, "/no/such/route")
    assert status == 404 and json.loads(text)["detail"] == "Not Found"
    assert "RateLimit-Policy" in headers
    _, metrics, _ = await get(server, "/metrics")
    assert 'aistack_http_requests_total{endpoint="unmatched",status="405"} 2.0' in metrics
    assert 'aistack_http_requests_total{endpoint="unmatched",status="404"} 1.0' in metrics


# -- health, readiness, OpenAPI, ACME --------------------------------------------------


async def test_healthz(gateway):
    server = await gateway()
    status, text, _ = await get(server, "/healthz")
    assert status == 200 and json.loads(text) == {"status": "ok"}


async def test_readyz_names_what_is_down(gateway, learning):
    up = await gateway(postgres={"dsn": learning.dsn})
    status, text, _ = await get(up, "/readyz")
    assert status == 200, text
    assert json.loads(text)["checks"] == {"postgres": "ok", "qdrant": "ok", "embedder": "ok"}
    down = await gateway(postgres={"dsn": "postgresql://postgres@127.0.0.1:9/aistack"})
    status, text, headers = await get(down, "/readyz")
    assert status == 503 and headers["Retry-After"] == "5"
    body = json.loads(text)
    assert body["detail"].startswith("not ready: postgres: unavailable")
    assert [e["loc"] for e in body["errors"]] == ["postgres"]


async def test_openapi_matches_the_real_validation(gateway):
    server = await gateway(validation={"max_query_chars": 500, "max_limit": 20})
    status, text, _ = await get(server, "/openapi.json")
    document = json.loads(text)
    assert status == 200 and document["openapi"].startswith("3.")
    schema = document["components"]["schemas"]["SearchRequest"]
    assert schema["properties"]["query"]["maxLength"] == 500
    assert schema["properties"]["limit"]["maximum"] == 20
    assert schema["additionalProperties"] is False
    assert "nixos_docs" not in text  # collection names are not disclosed
    at_bound = {**SEARCH, "query": "z" * 500, "limit": 20}
    assert (await post(server, at_bound))[0] == 200
    assert (await post(server, {**at_bound, "query": "z" * 501}))[0] == 422
    assert (await post(server, {**at_bound, "limit": 21}))[0] == 422


async def test_acme_challenge_tokens_are_served_from_the_webroot(gateway, tmp_path):
    challenges = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "tok_en-1").write_text("tok_en-1.thumbprint")
    (tmp_path / "secret").write_text("do not serve")
    server = await gateway(gateway={"acme_webroot": str(tmp_path / "webroot")})
    status, text, _ = await get(server, "/.well-known/acme-challenge/tok_en-1")
    assert (status, text) == (200, "tok_en-1.thumbprint")
    for probe in ("missing", "..%2F..%2Fsecret", "%2e%2e", "a.b"):
        assert (await get(server, f"/.well-known/acme-challenge/{probe}"))[0] == 404


# -- content codings and clients that hang up ------------------------------------------


def search_head(coding: str, length: int) -> bytes:
    return (
        b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (coding.encode(), length)
    )


def no_error_logged(caplog) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decode_is_a_400_naming_the_coding(gateway, caplog, coding):
    server = await gateway()
    garbage = b"this is not compressed"
    answer = await raw_exchange(server, search_head(coding, len(garbage)) + garbage)
    assert status_of(answer) == 400, answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["detail"] == f"body: does not decode as its Content-Encoding '{coding}'"
    no_error_logged(caplog)
    _, metrics, _ = await get(server, "/metrics")
    assert 'aidb_query_validation_failures_total{reason="undecodable_body"} 1.0' in metrics
    assert 'endpoint="/vector/search",status="500"' not in metrics


async def test_a_gzip_body_that_decodes_is_served(gateway):
    server = await gateway()
    packed = gzip.compress(json.dumps(SEARCH).encode())
    answer = await raw_exchange(server, search_head("gzip", len(packed)) + packed)
    assert status_of(answer) == 200, answer[:300]


@pytest.mark.parametrize("coding", ["x-foo", "gzip, gzip", "compress"])
async def test_an_unsupported_coding_is_415_with_accept_encoding(gateway, coding):
    server = await gateway()
    raw = json.dumps(SEARCH).encode()
    answer = await raw_exchange(server, search_head(coding, len(raw)) + raw)
    assert status_of(answer) == 415, answer[:300]
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in head
    assert f"Content-Encoding {coding!r} is not supported" in json.loads(body)["detail"]


@pytest.mark.parametrize("digest", ["ab" * 32 + "\n", "ab" * 31, "xy" * 32])
def test_an_api_key_digest_must_be_64_hex_digits_and_nothing_else(tmp_path, digest):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"ci": {"sha256": digest, "collections": ["*"]}}}))
    with pytest.raises(ConfigError, match=r"keys\.ci\.sha256: must be 64 hex digits"):
        load_access(str(keys), frozenset({"nixos_docs"}), KEYED_ENDPOINTS)


async def test_an_acme_token_ending_in_a_newline_is_not_looked_up(gateway, tmp_path):
    challenges = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "token\n").write_text("served only if the check let a newline through")
    server = await gateway(gateway={"acme_webroot": str(tmp_path / "webroot")})
    assert (await get(server, "/.well-known/acme-challenge/token%0A"))[0] == 404
