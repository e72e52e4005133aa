"""The roadmap's three validation tests, as written, over a real socket with the real model
and local Qdrant; plus pagination at the last page."""

from __future__ import annotations

from aiohttp import ClientSession


async def post(server, body: dict, **kwargs):
    async with ClientSession() as session:
        async with session.post(server.make_url("/vector/search"), json=body, **kwargs) as r:
            return r.status, await r.json(), r.headers


async def test_query_over_10k_is_rejected_naming_max_length(gateway):
    server = await gateway()
    status, body, _ = await post(server, {"collection": "nixos_docs", "query": "x" * 11000})
    assert status == 422
    assert "max_length" in body["detail"]
    assert body["detail"] == "query: max_length 10000 exceeded (got 11000)"
    assert body["errors"] == [
        {"loc": "query", "type": "string_too_long", "msg": "max_length 10000 exceeded (got 11000)"}
    ]


async def test_unknown_collection_is_rejected(gateway):
    server = await gateway()
    status, body, _ = await post(server, {"collection": "evil_collection", "query": "test"})
    assert status == 422
    assert "Unknown collection" in body["detail"]
    assert body["detail"] == "collection: Unknown collection"


async def test_valid_search_is_paginated(gateway):
    server = await gateway()
    status, body, _ = await post(
        server, {"collection": "nixos_docs", "query": "install", "limit": 10, "offset": 20}
    )
    assert status == 200
    assert body["offset"] == 20
    assert body["limit"] == 10
    assert len(body["results"]) <= 10
    assert isinstance(body["has_more"], bool)
    assert body["total"] == 231  # the demo corpus
    first = body["results"][0]
    assert set(first) == {"id", "score", "payload"}
    assert first["payload"]["text"]


async def test_results_are_relevant(gateway):
    server = await gateway()
    _, body, _ = await post(
        server, {"collection": "nixos_docs", "query": "how do I roll back a broken upgrade"}
    )
    texts = " ".join(r["payload"]["text"].lower() for r in body["results"][:3])
    assert "rollback" in texts or "roll back" in texts or "generation" in texts


async def test_has_more_is_exact_at_the_last_page(gateway):
    server = await gateway()
    pages = {}
    for offset in (220, 221, 226, 231, 300):
        status, body, _ = await post(
            server, {"collection": "nixos_docs", "query": "nix", "limit": 10, "offset": offset}
        )
        assert status == 200
        pages[offset] = body
    # 231 documents: the page at 221 is the last full one.
    assert pages[220]["has_more"] is True and len(pages[220]["results"]) == 10
    assert pages[221]["has_more"] is False and len(pages[221]["results"]) == 10
    assert pages[226]["has_more"] is False and len(pages[226]["results"]) == 5
    assert pages[231]["results"] == [] and pages[231]["has_more"] is False
    assert pages[300]["results"] == [] and pages[300]["total"] == 231


async def test_pages_do_not_overlap(gateway):
    server = await gateway()
    seen: list = []
    for offset in range(0, 50, 10):
        _, body, _ = await post(
            server, {"collection": "nixos_docs", "query": "nix", "limit": 10, "offset": offset}
        )
        seen.extend(r["id"] for r in body["results"])
    assert len(seen) == 50 and len(set(seen)) == 50


async def test_empty_allowed_collection_answers_empty(gateway):
    server = await gateway()
    status, body, _ = await post(server, {"collection": "solved_issues", "query": "vim"})
    assert status == 200
    assert body == {"results": [], "total": 0, "offset": 0, "limit": 10, "has_more": False}
