"""Text embeddings, shared by the gateway, ingest and the GC.

Two backends behind one small contract: `fastembed` on a local model directory (the
default; nothing is downloaded at run time) and `openai` for any server that speaks
`POST /v1/embeddings` (llama.cpp, Ollama, TEI, vLLM). Either is driven by the scheduler
(`scheduler.py`: micro-batches, worker threads, fairness, the bounded queue) and fronted
by the cache of query embeddings (`cache.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from aistack.config import EmbeddingConfig
from aistack.errors import Failure

if TYPE_CHECKING:
    from aistack.embedding.scheduler import BatchModel


class EmbedderUnavailable(Failure):
    """The embedder cannot answer now (server down, timeout); the caller may retry later."""


class EmbedderError(Failure):
    """The embedder cannot be set up (missing or altered model files, wrong dimension)."""


class EmbedderBusy(Exception):
    """The queue of queries is full, or the query waited too long in it."""


class Embedder(Protocol):
    """Every vector it gives is unit length: the collections compare by dot product."""

    dimension: int

    async def embed_query(self, text: str, client: str = "") -> list[float]:
        """One query's vector. `client` (the rate limiter's key) is what fairness is
        between; raises EmbedderBusy past the queue's bounds."""

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def check(self) -> None:
        """Raise EmbedderUnavailable unless the embedder answers now."""

    async def close(self) -> None: ...


async def open_embedder(config: EmbeddingConfig) -> Embedder:
    """The configured backend, loaded and ready, behind the scheduler (micro-batches on
    `embedding.threads` workers, fair between clients) and an LRU cache of query
    embeddings (`embedding.query_cache_bytes`)."""
    model: BatchModel
    if config.backend == "fastembed":
        from aistack.embedding.local import FastembedModel

        model = await FastembedModel.load(config)
    else:
        from aistack.embedding.remote import OpenAIEmbedder

        model = await OpenAIEmbedder.open(config)
    return scheduled(model, config)


def scheduled(model: BatchModel, config: EmbeddingConfig) -> Embedder:
    from aistack.embedding.cache import CachedEmbedder
    from aistack.embedding.scheduler import BatchLimits, EmbeddingScheduler

    scheduler = EmbeddingScheduler(
        model,
        config.worker_threads(),
        BatchLimits(config.batch_size, config.batch_tokens, config.batch_wait_ms / 1000),
    )
    return CachedEmbedder(scheduler, config.query_cache_bytes)
