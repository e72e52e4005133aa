"""Collections compare by dot product over unit-length vectors: the same scores as cosine,
without local mode renormalising every stored vector on every query. Collections made
before with Cosine answer as they did. Real local mode and the real model throughout; the
embedding server is the stand-in of test_gateway_dependencies (none installs here)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from qdrant_client import models

from aistack.config import validate_config
from aistack.embedding import Embedder, EmbedderUnavailable, open_embedder
from aistack.stores.private_postgres import free_port
from aistack.stores.qdrant import VectorStore

TEXTS = [
    "open port 443 in the firewall",
    "enable the ssh daemon",
    "rotate the journal logs",
    "mount an NFS share at boot",
    "pin a package version in an overlay",
]
QUESTION = "how do I let https through the firewall"


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_a_new_collection_scores_by_dot_product_exactly_as_cosine(tmp_path, embedder):
    store = VectorStore.connect(validate_config({"qdrant": {"path": str(tmp_path)}}).qdrant)
    try:
        vectors = await embedder.embed_documents(TEXTS)
        assert all(math.isclose(np.linalg.norm(v), 1.0, abs_tol=1e-5) for v in vectors)
        await store.ensure_collection("dot", embedder.dimension)
        info = store.client.get_collection("dot")
        assert info.config.params.vectors.distance == models.Distance.DOT
        # As a collection of an earlier release: Cosine, created by qdrant-client itself.
        store.client.create_collection(
            "cosine",
            vectors_config=models.VectorParams(
                size=embedder.dimension, distance=models.Distance.COSINE
            ),
        )
        await store.ensure_collection("cosine", embedder.dimension)  # left as it is
        assert (
            store.client.get_collection("cosine").config.params.vectors.distance
            == models.Distance.COSINE
        )
        ids = list(range(1, len(TEXTS) + 1))
        payloads = [{"text": text} for text in TEXTS]
        for name in ("dot", "cosine"):
            await store.upsert(name, ids, vectors, payloads)
        question = await embedder.embed_query(QUESTION)
        expected = sorted(
            ((cosine(question, v), i) for i, v in zip(ids, vectors, strict=True)), reverse=True
        )
        for name in ("dot", "cosine"):
            hits = await store.search(name, question, limit=5, offset=0)
            assert [hit.id for hit in hits] == [i for _, i in expected], name
            for hit, (score, _) in zip(hits, expected, strict=True):
                assert math.isclose(hit.score, score, abs_tol=1e-5), (name, hit)
    finally:
        await store.close()


def scaled_server(model, scale: float) -> web.Application:
    """An embedding server that does not normalise: the real model's vectors times `scale`."""

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        vectors = await model.embed_documents(body["input"])
        data = [{"index": i, "embedding": [x * scale for x in v]} for i, v in enumerate(vectors)]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    return app


@contextlib.asynccontextmanager
async def remote_behind(model, scale: float) -> AsyncIterator[Embedder]:
    """The openai backend, opened against `scaled_server` on a loopback port."""
    port = free_port()
    server = TestServer(scaled_server(model, scale), host="127.0.0.1", port=port)
    await server.start_server()
    config = validate_config(
        {
            "qdrant": {"path": "/unused"},
            "embedding": {"backend": "openai", "url": f"http://127.0.0.1:{port}/v1"},
        }
    )
    remote = await open_embedder(config.embedding)
    try:
        yield remote
    finally:
        await remote.close()
        await server.close()


async def test_a_servers_vectors_are_made_unit_length(embedder):
    async with remote_behind(embedder, 3.0) as remote:
        vector = await remote.embed_query(QUESTION)
        assert math.isclose(np.linalg.norm(vector), 1.0, abs_tol=1e-6)
        assert cosine(vector, await embedder.embed_query(QUESTION)) > 0.9999
        documents = await remote.embed_documents(TEXTS)
        assert all(math.isclose(np.linalg.norm(v), 1.0, abs_tol=1e-6) for v in documents)


async def test_a_zero_vector_from_the_server_is_an_unavailable_embedder(embedder):
    async with remote_behind(embedder, 0.0) as remote:
        with pytest.raises(EmbedderUnavailable, match="zero vector"):
            await remote.embed_query(QUESTION)
