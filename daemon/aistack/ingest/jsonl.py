"""Load `{"id"?, "text", "payload"?}` lines into a Qdrant collection.

The whole file is checked before anything is written: a bad line 9,000 is reported with
its number, and the collection is left as it was.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from aistack.embedding import Embedder
from aistack.errors import UsageError
from aistack.stores.qdrant import VectorStore, point_id

BATCH = 64


class IngestError(UsageError):
    """A file that cannot be ingested; the message names the line."""


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: StrictInt | StrictStr | None = None
    text: Annotated[StrictStr, Field(min_length=1, max_length=100_000)]
    payload: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    documents: int
    seconds: float


def read_documents(path: Path) -> list[Document]:
    documents = []
    try:
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    documents.append(_parse_line(path, number, line))
    except OSError as error:
        raise IngestError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise IngestError(f"{path}: not UTF-8 text ({error.reason})") from None
    seen: dict[int | str, int] = {}
    for index, document in enumerate(documents):
        if document.id is not None:
            pid = point_id(document.id)
            if pid in seen:
                raise IngestError(f"{path}: id {document.id!r} appears twice")
            seen[pid] = index
    return documents


def _parse_line(path: Path, number: int, line: str) -> Document:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise IngestError(f"{path}:{number}: not JSON: {error.msg}") from None
    try:
        document = Document.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in error.errors()
        )
        raise IngestError(f"{path}:{number}: {problems}") from None
    if isinstance(document.id, int) and document.id < 0:
        raise IngestError(f"{path}:{number}: id must be an unsigned integer or a string")
    return document


def batches(documents: list[Document]) -> Iterator[list[Document]]:
    for start in range(0, len(documents), BATCH):
        yield documents[start : start + BATCH]


async def ingest(
    documents: list[Document],
    collection: str,
    embedder: Embedder,
    store: VectorStore,
    progress: TextIO | None = sys.stderr,
) -> Loaded:
    started = time.monotonic()
    await store.ensure_collection(collection, embedder.dimension)
    done = 0
    last_report = 0.0
    # A terminal gets one line rewritten in place; a journal or a file gets one per report.
    rewrite = progress is not None and progress.isatty()
    for batch in batches(documents):
        vectors = await embedder.embed_documents([d.text for d in batch])
        ids = [point_id(d.id) if d.id is not None else point_id(d.text) for d in batch]
        payloads = [{**d.payload, "text": d.text} for d in batch]
        await store.upsert(collection, ids, vectors, payloads)
        done += len(batch)
        now = time.monotonic()
        if progress is not None and (now - last_report >= 1.0 or done == len(documents)):
            last_report = now
            rate = done / max(now - started, 1e-9)
            line = (
                f"ingest: {done}/{len(documents)} documents "
                f"({100 * done // len(documents)}%), {rate:.0f}/s"
            )
            progress.write(f"\r{line}" if rewrite else f"{line}\n")
            progress.flush()
    if progress is not None and rewrite and documents:
        progress.write("\n")
    return Loaded(done, time.monotonic() - started)
