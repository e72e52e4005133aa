"""Concurrent texts embedded together, on every core, fairly between clients.

Queries that arrive while the model is busy wait here and go to the model together, in
micro-batches, on `embedding.threads` worker threads (one ONNX Runtime session shared by
all: its `run` is thread-safe, and each call uses one intra-op thread). A batch is bounded
by `embedding.batch_size` texts and by `embedding.batch_tokens` padded tokens: the model
pads every text of a batch to the longest, so a batch holds texts of one length class
(within a factor of two), and a short query never waits on the padding of a long one.

Fairness is start-time fair queuing over clients (Goyal, Vin and Cheng, 1996), with a
text's cost in tokens: each text gets a finish tag, its client's previous tag (or the
clock, if the client was idle) plus its cost, and the smallest tag goes first. A client
that floods long queries moves its own tags far ahead; another client's short query gets
a tag just past the clock and is taken into the next batch a worker starts, so it waits
at most about one batch, however many clients flood (tests/test_embedding_scheduler.py).

Admission (the bounded queue, its 503, which client loses when it is full) is the
gateway's (`gateway/embedqueue.py`); a caller that gives up (timeout, cancelled) takes its
text out of the queue here.

Worker threads, not asyncio tasks: the state is guarded by one lock and each caller's
future is resolved on its own event loop, so one scheduler serves any loop (the tests
share one model across many). Written here because no library batches and fair-queues
in-process callers of a blocking function; `asyncio.Queue` is FIFO and loop-bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aistack.embedding import EmbedderUnavailable
from aistack.observability.logs import EventLog

log = EventLog("embedding")

DOCUMENTS = "documents"


class BatchModel(Protocol):
    """What the scheduler drives: a blocking, thread-safe batch call and a cost per text."""

    dimension: int

    def tokens(self, text: str) -> int:
        """The padded length this text takes in a batch (the model's own count, or an estimate)."""

    def embed_batch(self, texts: list[str]) -> list[list[float]]: ...

    async def check(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class Pending:
    finish: int
    sequence: int
    start: int
    text: str
    tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[float]]

    def order(self) -> tuple[int, int]:
        return self.finish, self.sequence


@dataclass(frozen=True)
class BatchLimits:
    size: int
    tokens: int
    wait_seconds: float


def length_class(tokens: int) -> int:
    """Texts within a factor of two of each other share a class: padding wastes at most half."""
    return max(tokens - 1, 1).bit_length()


class EmbeddingScheduler:
    """An Embedder over a BatchModel: micro-batches, fair between clients, bounded."""

    def __init__(self, model: BatchModel, threads: int, limits: BatchLimits) -> None:
        self.model = model
        self.dimension = model.dimension
        self.limits = limits
        self._lock = threading.Condition()
        self._pending: list[Pending] = []  # sorted by finish tag
        self._sequence = itertools.count()
        self._clock = 0  # the start tag of the text last taken into a batch
        # Each client's last finish tag, while it is ahead of the clock: one at or behind
        # it counts as none (`_enqueue` takes the later of the two), so it is dropped.
        self._finish: dict[str, int] = {}
        self._closed = False
        self._running = 0  # batches in the model now
        self._workers = [
            threading.Thread(target=self._work, name=f"aistack-embed-{n}", daemon=True)
            for n in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def embed_query(self, text: str, client: str = "") -> list[float]:
        tokens = self.model.tokens(text)
        with self._lock:
            self._check_open()
            pending = self._enqueue(text, tokens, client)
            self._lock.notify()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._withdraw(pending)
            raise

    async def embed_documents(
        self, texts: Sequence[str], client: str = DOCUMENTS
    ) -> list[list[float]]:
        # Shortest first: neighbours share a length class, so batches are full and unpadded.
        tokens = [self.model.tokens(text) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: tokens[i])
        with self._lock:
            self._check_open()
            pendings = [self._enqueue(texts[i], tokens[i], client) for i in order]
            self._lock.notify_all()
        try:
            vectors = await asyncio.gather(*(p.future for p in pendings))
        except BaseException:
            for pending in pendings:
                self._withdraw(pending)
            raise
        in_order: list[list[float]] = [[] for _ in texts]
        for i, vector in zip(order, vectors, strict=True):
            in_order[i] = vector
        return in_order

    async def check(self) -> None:
        await self.model.check()

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            abandoned, self._pending = self._pending, []
            self._lock.notify_all()
        for pending in abandoned:
            _resolve(pending, error=EmbedderUnavailable("the embedder is shutting down"))
        await asyncio.to_thread(self._join)
        await self.model.close()

    def _join(self) -> None:
        for worker in self._workers:
            worker.join()

    def _check_open(self) -> None:
        if self._closed:
            raise EmbedderUnavailable("the embedder is shutting down")

    def _enqueue(self, text: str, tokens: int, client: str) -> Pending:
        start = max(self._clock, self._finish.get(client, 0))
        finish = start + tokens
        self._finish[client] = finish
        loop = asyncio.get_running_loop()
        pending = Pending(
            finish, next(self._sequence), start, text, tokens, loop, loop.create_future()
        )
        bisect.insort(self._pending, pending, key=Pending.order)
        return pending

    def _remove(self, pending: Pending) -> None:
        index = bisect.bisect_left(self._pending, pending.order(), key=Pending.order)
        if index < len(self._pending) and self._pending[index] is pending:
            del self._pending[index]

    def _withdraw(self, pending: Pending) -> None:
        with self._lock:
            self._remove(pending)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                vectors = self.model.embed_batch([p.text for p in batch])
            except Exception as error:  # the batch's callers get the error, the worker lives
                log.warning("embedding.batch_failed", texts=len(batch), error=str(error)[:300])
                for pending in batch:
                    _resolve(pending, error=error)
                continue
            finally:
                with self._lock:
                    self._running -= 1
            for pending, vector in zip(batch, vectors, strict=True):
                _resolve(pending, vector=vector)

    def _next_batch(self) -> list[Pending] | None:
        with self._lock:
            while True:
                while not self._pending:
                    if self._closed:
                        return None
                    self._lock.wait()
                self._wait_for_company()
                if self._pending:  # else another worker took what this one waited with
                    break
            batch = self._take_batch()
            self._running += 1
            return batch

    def _wait_for_company(self) -> None:
        """While another worker is busy, a short queue waits up to `batch.wait_seconds` to
        fill: a batch of several costs less a text than single calls, and at a moderate
        rate two workers taking one text each would spend the cores on the difference.
        An idle embedder starts at once."""
        if self.limits.wait_seconds <= 0 or self._running == 0:
            return
        deadline = time.monotonic() + self.limits.wait_seconds
        while 0 < len(self._pending) < self.limits.size and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._lock.wait(left)

    def _take_batch(self) -> list[Pending]:
        """The smallest finish tag, then the next tags of its length class, within bounds."""
        head = self._pending[0]
        width_class = length_class(head.tokens)
        width = head.tokens
        chosen = [0]
        for index in range(1, len(self._pending)):
            if len(chosen) == self.limits.size:
                break
            candidate = self._pending[index]
            if length_class(candidate.tokens) != width_class:
                continue
            padded = max(width, candidate.tokens) * (len(chosen) + 1)
            if padded > self.limits.tokens:
                break
            width = max(width, candidate.tokens)
            chosen.append(index)
        batch = [self._pending[index] for index in chosen]
        for pending in batch:
            self._remove(pending)
        self._clock = max(self._clock, max(p.start for p in batch))
        if len(self._finish) > 2 * len(self._pending) + 64:
            # Amortised: a public gateway sees many clients once; none is kept for ever.
            self._finish = {key: tag for key, tag in self._finish.items() if tag > self._clock}
        return batch


def _resolve(
    pending: Pending, vector: list[float] | None = None, error: BaseException | None = None
) -> None:
    def settle() -> None:
        if pending.future.done():
            return  # the caller gave up (timeout, cancelled)
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(vector if vector is not None else [])

    with contextlib.suppress(RuntimeError):  # that caller's event loop is gone
        pending.loop.call_soon_threadsafe(settle)
