"""Qdrant through qdrant-client: a server (`qdrant.url`) or local mode (`qdrant.path`).

The client is synchronous code (its async variant wraps the same blocking calls in local
mode), so every call runs on a small thread pool and the event loop never waits on it.
Local mode keeps its store in this process and admits one process at a time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from aistack.config import QdrantConfig, read_secret
from aistack.errors import Failure

T = TypeVar("T")
ID_NAMESPACE = uuid.UUID("5d6c7b1e-2f1a-4c59-9a53-6e3f1d2b7a10")


# Local mode sorts every id of the collection for each page of a scroll, so small pages
# multiply the work. At 100k points (qdrant-client 1.x, 384 dimensions): 256-point pages
# took 23.5 s for the whole scroll, the slowest page 208 ms; 2048-point pages 6.4 s, the
# slowest 275 ms; 8192-point pages 6.6 s, the slowest 871 ms.
LOCAL_SCROLL_BATCH = 2048


def is_loopback(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The embedder's vectors are unit length (the Embedder contract), so a dot product is their
# cosine. Cosine itself costs local mode a renormalisation of every stored vector on every
# query (3.3 of 8.9 ms of CPU at 10k points, bench/localmode.py); a Qdrant server
# normalises once at upsert either way. Collections made before keep Cosine and answer
# the same scores.
DISTANCE = models.Distance.DOT


class QdrantUnavailable(Failure):
    """Qdrant did not answer (server down, timeout); the caller may retry later."""


class StoreLocked(Failure):
    """A local-mode store that another process holds."""


class StoreUnwritable(Failure):
    """A local-mode store whose directory cannot be created or written."""


@dataclass(frozen=True, slots=True)
class StoredPoint:
    id: int | str
    payload: dict[str, Any]
    vector: list[float] | None


@dataclass(frozen=True, slots=True)
class Hit:
    id: int | str
    score: float
    payload: dict[str, Any]


def point_id(value: object) -> int | str:
    """A Qdrant point id for a document id: unsigned ints and UUIDs as they are,
    any other string mapped to a stable UUID (so re-ingesting a file replaces, not adds)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return str(uuid.uuid5(ID_NAMESPACE, value))
    raise ValueError(f"id {value!r} is neither an unsigned integer nor a string")


class VectorStore:
    def __init__(self, client: QdrantClient, local: bool, local_path: str | None = None) -> None:
        self._client = client
        self.local = local
        self.local_path = local_path
        # Local mode is one in-process store that is not safe to call from two threads.
        self._executor = ThreadPoolExecutor(1 if local else 8, thread_name_prefix="aistack-qdrant")

    @classmethod
    def connect(cls, config: QdrantConfig) -> VectorStore:
        if config.path:
            try:
                client = QdrantClient(path=config.path)
            except RuntimeError as error:
                if "already accessed" in str(error):
                    raise StoreLocked(
                        f"the Qdrant store at {config.path} is held by another process "
                        "(local mode admits one): stop it, or use a Qdrant server (qdrant.url)"
                    ) from None
                raise
            except OSError as error:
                raise StoreUnwritable(
                    f"the Qdrant store at {config.path} cannot be created or written "
                    f"({error.strerror or error.__class__.__name__}: {error.filename or ''}): "
                    "make qdrant.path a directory the service user can write"
                ) from None
            return cls(client, local=True, local_path=config.path)
        api_key = read_secret(config.api_key_file) if config.api_key_file else None
        with warnings.catch_warnings():
            if is_loopback(config.url):
                # A key sent over loopback never leaves the host; qdrant-client's warning
                # at every start would only teach admins to ignore it. Elsewhere it stays.
                warnings.filterwarnings("ignore", "Api key is used with an insecure connection")
            client = QdrantClient(
                url=config.url, api_key=api_key, timeout=10, check_compatibility=False
            )
        return cls(client, local=False)

    @property
    def client(self) -> QdrantClient:
        """The underlying client, for work this class has no method for (tests, tools)."""
        return self._client

    async def _run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except (ResponseHandlingException, ConnectionError, TimeoutError) as error:
            raise QdrantUnavailable(f"Qdrant: {error.__class__.__name__}: {error}") from error
        except UnexpectedResponse as error:
            if error.status_code in (401, 403):
                # A wrong or missing key is the operator's to fix, not the client's: the
                # gateway answers 503 (not 500) and /readyz names the reason.
                raise QdrantUnavailable(
                    f"Qdrant refused the API key ({error.status_code}): check qdrant.api_key_file"
                ) from error
            if error.status_code is not None and error.status_code >= 500:
                raise QdrantUnavailable(f"Qdrant answered {error.status_code}") from error
            raise

    async def collection_exists(self, name: str) -> bool:
        return await self._run(lambda: self._client.collection_exists(name))

    async def ensure_collection(self, name: str, dimension: int) -> None:
        def create() -> None:
            if not self._client.collection_exists(name):
                try:
                    self._client.create_collection(
                        name,
                        vectors_config=models.VectorParams(size=dimension, distance=DISTANCE),
                    )
                    return
                except UnexpectedResponse as error:
                    # 409: another process (a second gateway's first learn) created it
                    # since the check; then its dimension is checked like any other's.
                    if error.status_code != 409:
                        raise
            info = self._client.get_collection(name)
            size = _vector_size(info)
            if size is not None and size != dimension:
                raise ValueError(
                    f"collection {name} holds {size}-dimensional vectors, "
                    f"the embedder gives {dimension}"
                )

        await self._run(create)

    async def upsert(
        self,
        name: str,
        ids: Sequence[int | str],
        vectors: Sequence[Sequence[float]],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        points = models.Batch(
            ids=list(ids), vectors=[list(v) for v in vectors], payloads=list(payloads)
        )
        await self._run(lambda: self._client.upsert(name, points=points, wait=True))

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        offset: int,
        query_filter: models.Filter | None = None,
    ) -> list[Hit]:
        """The page of hits from `offset`, of the points `query_filter` selects (all: None)."""

        def query() -> list[Hit]:
            if not self._client.collection_exists(name):
                return []
            response = self._client.query_points(
                name,
                query=list(vector),
                query_filter=query_filter,
                limit=limit,
                offset=offset,
                with_payload=True,
            )
            return [Hit(_plain_id(p.id), p.score, p.payload or {}) for p in response.points]

        return await self._run(query)

    async def nearest(self, name: str, vector: Sequence[float], threshold: float) -> Hit | None:
        """The closest point at or above `threshold` (cosine), if any."""

        def query() -> Hit | None:
            if not self._client.collection_exists(name):
                return None
            response = self._client.query_points(
                name, query=list(vector), limit=1, score_threshold=threshold, with_payload=True
            )
            points = response.points
            if not points:
                return None
            return Hit(_plain_id(points[0].id), points[0].score, points[0].payload or {})

        return await self._run(query)

    async def set_payload(self, name: str, point: int | str, payload: dict[str, Any]) -> None:
        await self._run(
            lambda: self._client.set_payload(name, payload=payload, points=[point], wait=True)
        )

    async def delete(self, name: str, ids: Sequence[int | str]) -> None:
        if not ids:
            return

        def delete() -> None:
            if self._client.collection_exists(name):
                self._client.delete(
                    name, points_selector=models.PointIdsList(points=list(ids)), wait=True
                )

        await self._run(delete)

    async def scroll(
        self, name: str, *, with_vectors: bool, batch: int = 2048
    ) -> AsyncIterator[list[StoredPoint]]:
        """Every point of the collection, a batch at a time (ids ascending on a server)."""
        if not await self.collection_exists(name):
            return
        if self.local:
            # Local mode runs every call on one thread: pages no larger than this let the
            # searches of a process that also serves (`aistack demo`) in between a GC's
            # scroll, without multiplying the scroll's own cost (see LOCAL_SCROLL_BATCH).
            batch = min(batch, LOCAL_SCROLL_BATCH)
        offset: int | str | None = None
        while True:

            def page(start: int | str | None = offset) -> tuple[list[StoredPoint], Any]:
                points, next_offset = self._client.scroll(
                    name,
                    limit=batch,
                    offset=start,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
                return [
                    StoredPoint(
                        _plain_id(p.id),
                        p.payload or {},
                        p.vector if isinstance(p.vector, list) else None,  # type: ignore[arg-type]
                    )
                    for p in points
                ], next_offset

            points, offset = await self._run(page)
            if points:
                yield points
            if offset is None:
                return

    async def storage_bytes(self, name: str) -> int:
        """Disk used by one collection: measured in local mode, estimated on a server
        (Qdrant's API does not report it): vectors as float32 plus a payload allowance."""

        def measure() -> int:
            if not self._client.collection_exists(name):
                return 0
            if self.local_path is not None:
                directory = Path(self.local_path) / "collection" / name
                return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            info = self._client.get_collection(name)
            points = info.points_count or 0
            return points * ((_vector_size(info) or 0) * 4 + 128)

        return await self._run(measure)

    async def count(self, name: str, query_filter: models.Filter | None = None) -> int:
        """The points of the collection, or those `query_filter` selects: exactly then
        (a page's `total`), approximately on a server without one (cheap; see CollectionTotals)."""

        def count() -> int:
            if not self._client.collection_exists(name):
                return 0
            exact = self.local or query_filter is not None
            return self._client.count(name, count_filter=query_filter, exact=exact).count

        return await self._run(count)

    async def check(self) -> None:
        await self._run(self._client.get_collections)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._client.close()


def _plain_id(value: int | str | uuid.UUID) -> int | str:
    return str(value) if isinstance(value, uuid.UUID) else value


def _vector_size(info: models.CollectionInfo) -> int | None:
    vectors = info.config.params.vectors
    if isinstance(vectors, models.VectorParams):
        return vectors.size
    return None
