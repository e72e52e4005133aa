"""Turns per key inside one gateway process: `QueryTurns.turn(key)`.

The learns of one query take turns under a PostgreSQL advisory lock (see `learn`), which
each waiter waits for on a pooled connection of its own: fifty identical learns would hold
every connection of the pool, and searches of `solved_issues` and the listing, which read
PostgreSQL through the same pool, would queue behind them. Taking turns in the process
first leaves one connection per query waiting for the lock, whatever the crowd.

asyncio has no keyed lock; this is one, kept only while someone holds or waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TurnNotReached(Exception):
    """The key's turn did not come within the wait."""


class QueryTurns:
    def __init__(self) -> None:
        # key -> (its lock, how many hold or wait for it)
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def turn(self, key: int, wait_seconds: float) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(wait_seconds):
                    await lock.acquire()
            except TimeoutError:
                raise TurnNotReached(f"waited {wait_seconds:g} s for this query's turn") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
