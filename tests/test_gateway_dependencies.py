"""A dependency that does not answer gets 503 with Retry-After, never a 500 or a crash,
and the gateway recovers by itself when the dependency is back."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from qdrant_client import QdrantClient

from aistack.config import validate_config
from aistack.embedding import open_embedder
from aistack.stores.private_postgres import free_port
from aistack.stores.qdrant import VectorStore

SEARCH = {"collection": "nixos_docs", "query": "configure the firewall"}


async def search(server):
    async with ClientSession() as session:
        async with session.post(server.make_url("/vector/search"), json=SEARCH) as response:
            return response.status, await response.json(), response.headers


def embeddings_server(model) -> web.Application:
    """Stands in for llama.cpp/Ollama/TEI (none installs here): the same
    POST /v1/embeddings contract, answered by the real bundled model."""

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        vectors = await model.embed_documents(body["input"])
        return web.json_response(
            {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def test_embedder_down_gives_503_then_recovers(gateway, embedder):
    port = free_port()
    config = validate_config(
        {
            "qdrant": {"path": "/unused"},
            "embedding": {
                "backend": "openai",
                "url": f"http://127.0.0.1:{port}/v1",
                "query_cache_bytes": 0,  # every search asks the server
            },
        }
    )
    remote = await open_embedder(config.embedding)
    try:
        server = await gateway(embed=remote)
        status, body, headers = await search(server)
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert body["detail"] == "embedder is unavailable; retry later"
        async with ClientSession() as session:
            async with session.get(server.make_url("/readyz")) as response:
                assert response.status == 503
                assert "embedder: unavailable" in (await response.json())["detail"]

        stand_in = TestServer(embeddings_server(embedder), host="127.0.0.1", port=port)
        await stand_in.start_server()
        try:
            status, body, _ = await search(server)
            assert status == 200
            assert body["results"]
        finally:
            await stand_in.close()
        status, _, _ = await search(server)
        assert status == 503
    finally:
        await remote.close()


def qdrant_server(local: QdrantClient) -> web.Application:
    """Stands in for a Qdrant server (none installs here: no Debian package, no PyPI wheel):
    the three REST calls a search makes, answered by a real local-mode store."""

    def result(value: object) -> web.Response:
        return web.json_response({"result": value, "status": "ok", "time": 0.0})

    async def exists(request: web.Request) -> web.Response:
        return result({"exists": local.collection_exists(request.match_info["name"])})

    async def query(request: web.Request) -> web.Response:
        body = await request.json()
        vector = body["query"]["nearest"] if isinstance(body["query"], dict) else body["query"]
        found = local.query_points(
            request.match_info["name"],
            query=vector,
            limit=body["limit"],
            offset=body.get("offset") or 0,
            with_payload=True,
        )
        return result({"points": [point.model_dump(mode="json") for point in found.points]})

    async def count(request: web.Request) -> web.Response:
        return result({"count": local.count(request.match_info["name"]).count})

    app = web.Application()
    app.router.add_get("/collections/{name}/exists", exists)
    app.router.add_post("/collections/{name}/points/query", query)
    app.router.add_post("/collections/{name}/points/count", count)
    return app


async def test_qdrant_down_gives_503_then_recovers(gateway, corpus_store):
    port = free_port()
    config = validate_config({"qdrant": {"url": f"http://127.0.0.1:{port}"}})
    store = VectorStore.connect(config.qdrant)
    try:
        server = await gateway(store=store)
        status, body, headers = await search(server)
        assert status == 503
        assert headers["Retry-After"] == "5"

        stand_in = TestServer(qdrant_server(corpus_store.client), host="127.0.0.1", port=port)
        await stand_in.start_server()
        try:
            status, body, _ = await search(server)
            assert status == 200
            assert body["results"] and body["total"] == 231
        finally:
            await stand_in.close()
        status, _, _ = await search(server)
        assert status == 503
    finally:
        await store.close()


async def test_qdrant_down_gives_503(gateway):
    # No Qdrant server installs here (only local mode, which cannot go down): a server URL
    # with nothing listening is the real failure a stopped qdrant.service produces.
    config = validate_config({"qdrant": {"url": f"http://127.0.0.1:{free_port()}"}})
    store = VectorStore.connect(config.qdrant)
    try:
        server = await gateway(store=store)
        status, body, headers = await search(server)
        assert status == 503
        assert body["detail"] == "qdrant is unavailable; retry later"
        assert headers["Retry-After"] == "5"
        async with ClientSession() as session:
            async with session.get(server.make_url("/metrics")) as response:
                text = await response.text()
        assert 'aistack_dependency_unavailable_total{dependency="qdrant"} 1.0' in text
        assert 'status="500"' not in text
    finally:
        await store.close()


def long_queries(count: int, words: int = 1500) -> list[dict[str, object]]:
    # Distinct (no query cache hit), each near max_query_chars: the costliest a client
    # may send within its quota.
    return [
        {
            **SEARCH,
            "query": f"query {n} " + " ".join(f"firewall{n}x{i}" for i in range(words))[:9000],
        }
        for n in range(count)
    ]


async def search_all(server, bodies) -> list[tuple[int, dict, dict]]:
    async with ClientSession() as session:

        async def one(body):
            async with session.post(server.make_url("/vector/search"), json=body) as response:
                return response.status, await response.json(), dict(response.headers)

        return await asyncio.gather(*(one(body) for body in bodies))


async def test_past_the_queue_depth_a_search_is_503_with_retry_after(gateway):
    server = await gateway(
        embedding={"max_queue_depth": 2}, validation={"rate_limits": ["1000/minute"]}
    )
    answers = await search_all(server, long_queries(12))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2 and statuses.count(503) >= 6, statuses
    for status, body, headers in answers:
        if status == 503:
            assert headers["Retry-After"] == "1"
            assert body["errors"][0]["type"] == "busy"
            assert body["detail"].startswith("the embedder is busy (")
    # Nothing is left stuck: the next search is served.
    assert (await search(server))[0] == 200
    async with ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            metrics = await response.text()
    assert 'aistack_dependency_unavailable_total{dependency="embedder_queue"}' in metrics


async def test_past_the_queue_wait_a_search_is_503_instead_of_waiting(gateway):
    server = await gateway(
        embedding={"max_queue_wait_seconds": 0.3}, validation={"rate_limits": ["1000/minute"]}
    )
    answers = await search_all(server, long_queries(12))
    busy = [body for status, body, _ in answers if status == 503]
    assert busy and all("no embedding within 0.3 s" in body["detail"] for body in busy)
    assert (await search(server))[0] == 200
