"""Text embeddings, shared by the gateway, ingest and the GC.

Two backends behind one small contract: `fastembed` on a local model directory (the
default; nothing is downloaded at run time) and `openai` for any server that speaks
`POST /v1/embeddings` (llama.cpp, Ollama, TEI, vLLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aistack.config import EmbeddingConfig
from aistack.errors import Failure


class EmbedderUnavailable(Failure):
    """The embedder cannot answer now (server down, timeout); the caller may retry later."""


class EmbedderError(Failure):
    """The embedder cannot be set up (missing or altered model files, wrong dimension)."""


class Embedder(Protocol):
    dimension: int

    async def embed_query(self, text: str) -> list[float]: ...

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def check(self) -> None:
        """Raise EmbedderUnavailable unless the embedder answers now."""

    async def close(self) -> None: ...


async def open_embedder(config: EmbeddingConfig) -> Embedder:
    """The configured backend, loaded and ready, with an LRU cache of query embeddings
    (`embedding.query_cache_bytes`)."""
    from aistack.embedding.cache import CachedEmbedder

    backend: Embedder
    if config.backend == "fastembed":
        from aistack.embedding.local import FastembedEmbedder

        backend = await FastembedEmbedder.load(config)
    else:
        from aistack.embedding.remote import OpenAIEmbedder

        backend = await OpenAIEmbedder.open(config)
    return CachedEmbedder(backend, config.query_cache_bytes)
