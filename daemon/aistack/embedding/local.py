"""fastembed (ONNX Runtime) on a local model directory.

Inference runs on one dedicated thread with one intra-op thread: the event loop stays
free to answer (and reject) other requests while a query is embedded, and the gateway
does not fight the rest of the machine for cores.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aistack.config import EmbeddingConfig
from aistack.embedding import EmbedderError, bundled
from aistack.observability.logs import EventLog

log = EventLog("embedding")


class FastembedEmbedder:
    def __init__(
        self,
        model: Any,
        dimension: int,
        executor: ThreadPoolExecutor,
        model_dir: tempfile.TemporaryDirectory[str] | None,
    ) -> None:
        self._model = model
        self.dimension = dimension
        self._executor = executor
        self._model_dir = model_dir

    @classmethod
    async def load(cls, config: EmbeddingConfig) -> FastembedEmbedder:
        executor = ThreadPoolExecutor(1, thread_name_prefix="aistack-embed")
        loop = asyncio.get_running_loop()
        try:
            model, model_dir = await loop.run_in_executor(executor, _load_model, config)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        embedder = cls(model, config.dimension, executor, model_dir)
        vector = await embedder.embed_query("dimension probe")
        if len(vector) != config.dimension:
            await embedder.close()
            raise EmbedderError(
                f"model {config.model} gives {len(vector)} dimensions, "
                f"embedding.dimension says {config.dimension}"
            )
        return embedder

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [vector.tolist() for vector in self._model.embed(list(texts), batch_size=64)]

    async def embed_query(self, text: str) -> list[float]:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self._embed, [text])
        return vectors[0]

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, texts)

    async def check(self) -> None:
        # A loaded in-process model cannot go away; a crash of ONNX Runtime takes the
        # process with it, and systemd restarts the unit.
        return None

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._model_dir is not None:
            self._model_dir.cleanup()


def _load_model(config: EmbeddingConfig) -> tuple[Any, tempfile.TemporaryDirectory[str] | None]:
    # fastembed asks the Hugging Face hub when it is not told where the model is; we always
    # tell it, and this keeps a misconfiguration from turning into a network call.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastembed import TextEmbedding

    model_dir: tempfile.TemporaryDirectory[str] | None = None
    if config.model_path:
        directory = Path(config.model_path)
        bundled.check_model_dir(directory)
    elif config.model == bundled.BUNDLED_MODEL:
        sources = bundled.bundled_sources()
        bundled.verify(sources)
        model_dir = bundled.assemble(sources)
        directory = Path(model_dir.name)
    else:
        raise EmbedderError(
            f"embedding.model {config.model!r} is not bundled: set embedding.model_path "
            "to its local directory (nothing is downloaded at run time)"
        )
    try:
        model = TextEmbedding(
            config.model,
            specific_model_path=str(directory),
            threads=1,
            enable_cpu_mem_arena=False,
        )
    except ValueError as error:
        raise EmbedderError(f"fastembed cannot load {config.model!r}: {error}") from None
    log.info("embedding.loaded", model=config.model, path=config.model_path or "bundled")
    return model, model_dir
