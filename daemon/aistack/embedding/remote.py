"""Any server that speaks OpenAI's `POST /v1/embeddings`: llama.cpp, Ollama, TEI, vLLM.

A BatchModel for the scheduler: the queries that wait together go in one request (the
`input` list), so a busy gateway makes one round trip for many queries.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import aiohttp

from aistack.config import EmbeddingConfig, read_secret
from aistack.embedding import EmbedderError, EmbedderUnavailable


def endpoint_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return f"{url}/embeddings"
    return f"{url}/v1/embeddings"


def unit_length(vector: list[float]) -> list[float]:
    """Servers differ (llama.cpp's --embd-normalize, TEI's normalize): the collections
    compare by dot product (stores/qdrant.py), so every vector is made unit length here."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0:
        raise EmbedderUnavailable("the embedding server answered a zero vector")
    return [x / norm for x in vector]


class OpenAIEmbedder:
    def __init__(
        self,
        config: EmbeddingConfig,
        session: aiohttp.ClientSession,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._config = config
        self._session = session
        self._loop = loop
        self._url = endpoint_url(config.url)
        self.dimension = config.dimension

    @classmethod
    async def open(cls, config: EmbeddingConfig) -> OpenAIEmbedder:
        headers = {}
        if config.api_key_file:
            headers["Authorization"] = f"Bearer {read_secret(config.api_key_file)}"
        session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=30, connect=3)
        )
        # The server may be down at start: the gateway starts anyway, answers 503 and
        # recovers when the server is back, so no probe here.
        return cls(config, session, asyncio.get_running_loop())

    async def _post(self, texts: Sequence[str]) -> list[list[float]]:
        body = {"input": list(texts), "model": self._config.model, "encoding_format": "float"}
        try:
            async with self._session.post(self._url, json=body) as response:
                if response.status >= 500 or response.status == 429:
                    raise EmbedderUnavailable(f"{self._url} answered {response.status}")
                if response.status != 200:
                    text = (await response.text())[:200]
                    raise EmbedderError(f"{self._url} answered {response.status}: {text}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EmbedderUnavailable(f"{self._url}: {error.__class__.__name__}") from error
        try:
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise EmbedderUnavailable(f"{self._url} answered an unexpected document") from None
        if len(vectors) != len(texts) or any(len(v) != self.dimension for v in vectors):
            raise EmbedderError(
                f"{self._url} returned vectors that are not {len(texts)} x {self.dimension}"
            )
        return [unit_length(vector) for vector in vectors]

    def tokens(self, text: str) -> int:
        # The server's tokenizer is not ours to call: about four characters a token.
        return len(text) // 4 + 2

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        """Called on a scheduler worker thread; the request runs on the session's loop."""
        try:
            request = asyncio.run_coroutine_threadsafe(self._post(texts), self._loop)
        except RuntimeError:
            raise EmbedderUnavailable("the event loop of the embedding client is gone") from None
        return request.result()

    async def check(self) -> None:
        await self._post(["readiness probe"])

    async def close(self) -> None:
        await self._session.close()
