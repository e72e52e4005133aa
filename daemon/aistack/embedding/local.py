"""fastembed (ONNX Runtime) on a local model directory, as a BatchModel for the scheduler.

One ONNX Runtime session, one intra-op and one inter-op thread: the scheduler's worker
threads (`embedding.threads`) call it concurrently, so the cores are used by whole
batches side by side, never by an operator's pool spinning beside them.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from aistack.config import EmbeddingConfig
from aistack.embedding import EmbedderError, bundled
from aistack.observability.logs import EventLog

log = EventLog("embedding")


class FastembedModel:
    def __init__(
        self, model: Any, dimension: int, model_dir: tempfile.TemporaryDirectory[str] | None
    ) -> None:
        self._model = model
        self.dimension = dimension
        self._model_dir = model_dir
        self._max_tokens = self._count("word " * 4096)
        self._prefix_chars = 4 * self._max_tokens

    @classmethod
    async def load(cls, config: EmbeddingConfig) -> FastembedModel:
        model, model_dir = await asyncio.to_thread(_load_model, config)
        loaded = cls(model, config.dimension, model_dir)
        vector = await asyncio.to_thread(loaded.embed_batch, ["dimension probe"])
        if len(vector[0]) != config.dimension:
            await loaded.close()
            raise EmbedderError(
                f"model {config.model} gives {len(vector[0])} dimensions, "
                f"embedding.dimension says {config.dimension}"
            )
        return loaded

    def tokens(self, text: str) -> int:
        """The model's own count, truncation included (at most 256 word pieces).

        Counting is a tokenization, on the event loop: 37 us for a short query, but 5.8 ms
        for 10,000 characters, as the tokenizer reads it all before it truncates. So a
        long text is counted on a prefix of four characters a word piece of the limit,
        and scaled to its length when the prefix alone does not reach the limit."""
        if len(text) <= self._prefix_chars:
            return self._count(text)
        counted = self._count(text[: self._prefix_chars])
        return min(self._max_tokens, counted * len(text) // self._prefix_chars)

    def _count(self, text: str) -> int:
        return int(self._model.token_count(text))

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self._model.embed(texts, batch_size=len(texts))]

    async def check(self) -> None:
        # A loaded in-process model cannot go away; a crash of ONNX Runtime takes the
        # process with it, and systemd restarts the unit.
        return None

    async def close(self) -> None:
        if self._model_dir is not None:
            self._model_dir.cleanup()


def _load_model(config: EmbeddingConfig) -> tuple[Any, tempfile.TemporaryDirectory[str] | None]:
    # fastembed asks the Hugging Face hub when it is not told where the model is; we always
    # tell it, and this keeps a misconfiguration from turning into a network call.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The tokenizer would split a batch over a thread pool of its own (rayon, one thread a
    # core) beside the scheduler's workers, which already keep every core busy.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
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
            threads=1,  # intra- and inter-op: the scheduler's workers are the parallelism
            enable_cpu_mem_arena=False,
        )
    except ValueError as error:
        raise EmbedderError(f"fastembed cannot load {config.model!r}: {error}") from None
    log.info("embedding.loaded", model=config.model, path=config.model_path or "bundled")
    return model, model_dir
