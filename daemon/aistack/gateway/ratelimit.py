"""Fixed-window rate limits over several windows at once (e.g. 60/minute and 1000/hour).

Windows are aligned to the epoch: a request falls in window ``floor(now / seconds)``. A
request is admitted only if every window still has quota; an admitted request counts in
every window and a denied one counts nowhere. So no aligned window ever admits more than
its quota, and a client that keeps hammering while denied does not dig itself deeper.

Why not PyPI ``limits`` (which the gateway could otherwise use):

* its in-process storage grows with every distinct client and cannot be bounded, so a
  flood of fresh source addresses grows the gateway without limit;
* it reads the wall clock itself, so tests cannot drive time and a clock step cannot be
  handled on purpose;
* it tests and counts the windows one at a time, not atomically: a request can use up
  the minute window and then be refused by the hour window (or race another request
  between the two checks).

``MemoryRateLimiter`` keeps at most ``max_clients`` clients in an LRU. Measured with
tracemalloc for 100,000 distinct IPv4 keys and the default 60/minute + 1000/hour
windows: about 240 bytes per tracked client (key string, LRU entry and counters), so the
default bound of 100,000 clients costs about 24 MB. ``tests/test_ratelimit.py`` checks
the figure stays under 1 KB.

``RedisRateLimiter`` shares the limits between several gateways: one Lua script checks
and counts all windows in a single atomic round trip. The window index comes from the
gateway's clock, so NTP-synced hosts agree on window boundaries.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aistack.config import parse_rate_limit_storage

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    quota: int
    seconds: int
    # The name as a structured-field string, quoted once here rather than per answer.
    field_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.quota < 1 or self.seconds < 1:
            raise ValueError(f"window {self.name!r}: quota and seconds must be >= 1")
        # The name goes into a structured-field string, which allows printable ASCII only.
        if not self.name or not all(" " <= char <= "~" for char in self.name):
            raise ValueError(f"window name {self.name!r} must be printable ASCII")
        object.__setattr__(self, "field_name", _sf_string(self.name))


# NamedTuples rather than frozen dataclasses: one decision is built per request, and a
# frozen dataclass pays an object.__setattr__ per field (3 us per decision, measured).
class WindowState(NamedTuple):
    window: Window
    remaining: int
    reset_after: int  # whole seconds until this window resets, >= 1


class Decision(NamedTuple):
    allowed: bool
    states: tuple[WindowState, ...]
    retry_after: int  # 0 when allowed; else seconds until every exhausted window has reset

    def header_value(self) -> str:
        """The draft-ietf-httpapi-ratelimit-headers-11 ``RateLimit`` field, or "" if unlimited.

        It names the most constraining window: the lowest remaining quota; on a tie the
        one that resets later, because its quota comes back last. So a denied answer's
        ``t`` always equals its ``Retry-After``.
        """
        if not self.states:
            return ""
        state = self.states[0]
        for other in self.states[1:]:
            if (other.remaining, -other.reset_after, other.window.seconds) < (
                state.remaining,
                -state.reset_after,
                state.window.seconds,
            ):
                state = other
        return f"{state.window.field_name};r={state.remaining};t={state.reset_after}"


def _sf_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def policy_header_value(windows: Sequence[Window]) -> str:
    """The ``RateLimit-Policy`` field, e.g. ``"minute";q=60;w=60,"hour";q=1000;w=3600``."""
    return ",".join(f"{w.field_name};q={w.quota};w={w.seconds}" for w in windows)


def windows_from_config(rate_windows: Sequence[tuple[str, int, int]]) -> tuple[Window, ...]:
    """Windows from ``ValidationConfig.rate_windows()``: (name, quota, seconds) tuples."""
    windows = tuple(Window(name, quota, seconds) for name, quota, seconds in rate_windows)
    if len({w.name for w in windows}) != len(windows):
        raise ValueError("two rate-limit windows share a name")
    return windows


class RateLimitStorageError(Exception):
    """The shared counter store cannot be reached; the gateway answers 503."""


class RateLimiter(Protocol):
    windows: tuple[Window, ...]

    async def hit(self, key: str) -> Decision: ...

    async def close(self) -> None: ...


def _decide(
    allowed: bool,
    windows: tuple[Window, ...],
    indices: Sequence[int],
    counts: Sequence[int],
    now: float,
) -> Decision:
    """The decision from each window's count: after counting if admitted, as found if not."""
    floor_now = math.floor(now)
    # max(1, boundary - floor(now)) is ceil(boundary - now) for an integer boundary, so
    # now + reset_after is never a float rounding short of the boundary. A plain loop: this
    # runs on every request, and a comprehension over zip() costs a third more.
    states = []
    retry_after = 0
    for position, window in enumerate(windows):
        count = counts[position]
        remaining = window.quota - count if count < window.quota else 0
        reset_after = (indices[position] + 1) * window.seconds - floor_now
        if reset_after < 1:
            reset_after = 1
        if remaining == 0 and reset_after > retry_after:
            retry_after = reset_after
        states.append(WindowState(window, remaining, reset_after))
    if allowed:
        return Decision(True, tuple(states), 0)
    return Decision(False, tuple(states), retry_after)


_UNLIMITED = Decision(allowed=True, states=(), retry_after=0)


class MemoryRateLimiter:
    """Counters in this process, for at most ``max_clients`` clients (LRU by last request).

    Each client holds one flat list ``[index0, count0, index1, count1, ...]``: the window
    index its count belongs to, per window. Whenever a new client arrives, clients whose
    every window is over are dropped first (they cost nothing to forget). Only at
    ``max_clients`` is a client still inside its windows evicted, least recently seen
    first; it then gets a fresh quota, and ``evicted_clients`` counts those.
    """

    def __init__(
        self, windows: Sequence[Window], max_clients: int, clock: Clock = time.time
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.windows = tuple(windows)
        self._max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, list[int]] = OrderedDict()
        self._evicted = 0
        # The current index of each window, kept as one shared int object: every client
        # stores a reference to it instead of its own 28-byte copy.
        self._current = [-1] * len(self.windows)
        self._seconds = tuple(window.seconds for window in self.windows)
        self._quotas = tuple(window.quota for window in self.windows)

    @property
    def tracked_clients(self) -> int:
        return len(self._clients)

    @property
    def evicted_clients(self) -> int:
        return self._evicted

    async def hit(self, key: str) -> Decision:
        return self.hit_now(key)

    def hit_now(self, key: str) -> Decision:
        """`hit` without a coroutine, for a caller that knows this limiter never waits."""
        if not self.windows:
            return _UNLIMITED
        now = self._clock()
        indices = self._indices(now)
        state = self._clients.get(key)
        if state is None:
            state = self._admit_new_client(key, indices)
        else:
            self._clients.move_to_end(key)
        return self._count(state, indices, now)

    async def close(self) -> None:
        self._clients.clear()

    def _indices(self, now: float) -> list[int]:
        current = self._current
        for position, seconds in enumerate(self._seconds):
            index = int(now // seconds)
            if index != current[position]:
                current[position] = index
        return current.copy()

    def _count(self, state: list[int], indices: list[int], now: float) -> Decision:
        counts = [0] * len(indices)
        exhausted = False
        for position, quota in enumerate(self._quotas):
            stored = state[2 * position]
            if stored > indices[position]:
                # The clock stepped back: stay in the later window rather than hand out a
                # fresh quota for a window the client already used.
                indices[position] = stored
            if stored == indices[position]:
                count = counts[position] = state[2 * position + 1]
                if count >= quota:
                    exhausted = True
        if exhausted:
            return _decide(False, self.windows, indices, counts, now)
        for position, index in enumerate(indices):
            counts[position] += 1
            state[2 * position] = index
            state[2 * position + 1] = counts[position]
        return _decide(True, self.windows, indices, counts, now)

    def _admit_new_client(self, key: str, indices: list[int]) -> list[int]:
        self._drop_expired(indices)
        if len(self._clients) >= self._max_clients:
            self._clients.popitem(last=False)
            self._evicted += 1
        state = [0] * (2 * len(indices))
        for position, index in enumerate(indices):
            state[2 * position] = index - 1  # an empty count in an earlier window
        self._clients[key] = state
        return state

    def _drop_expired(self, indices: list[int]) -> None:
        """Forget clients whose every window is over, least recently seen first.

        They sit at the LRU end, so this stops at the first live one: each client is looked
        at once when dropped, which keeps the cost per new client constant on average.
        """
        clients = self._clients
        while clients:
            key, state = next(iter(clients.items()))
            if any(state[2 * p] >= index for p, index in enumerate(indices)):
                return
            del clients[key]


# KEYS: one counter per window. ARGV: the quotas, then the expiry of each counter in ms.
# Returns {admitted (1/0), count per window}: the counts after counting when admitted.
_HIT_SCRIPT = """
local n = #KEYS
local counts = {}
for i = 1, n do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, n do
  if counts[i] >= tonumber(ARGV[i]) then
    table.insert(counts, 1, 0)
    return counts
  end
end
for i = 1, n do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
  end
end
table.insert(counts, 1, 1)
return counts
"""


class RedisRateLimiter:
    """Counters in Redis, shared by every gateway that points at the same server.

    A counter key is ``prefix + window name + ":" + client key + ":" + window index``; it
    expires one second after its window ends, so Redis holds only live windows.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        url: str,
        clock: Clock = time.time,
        key_prefix: str = "aistack:rl:",
        timeout: float = 1.0,
    ) -> None:
        self.windows = tuple(windows)
        self._clock = clock
        self._prefix = key_prefix
        # redis-py's defaults (5 s timeouts, 10 retries with backoff) would hold every
        # request for seconds while Redis is down; fail fast so the gateway answers 503.
        # One immediate retry still covers a pooled connection that Redis closed.
        # URL query options (e.g. ?socket_timeout=2) override these.
        self._redis = redis.asyncio.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._redis.register_script(_HIT_SCRIPT)
        self._quotas = [w.quota for w in self.windows]
        self._ttls_ms = [(w.seconds + 1) * 1000 for w in self.windows]

    async def hit(self, key: str) -> Decision:
        if not self.windows:
            return _UNLIMITED
        now = self._clock()
        indices = [int(now // w.seconds) for w in self.windows]
        keys = [
            f"{self._prefix}{w.name}:{key}:{index}"
            for w, index in zip(self.windows, indices, strict=True)
        ]
        try:
            reply = await self._script(keys=keys, args=[*self._quotas, *self._ttls_ms])
        except redis.exceptions.RedisError as error:
            # Connection, timeout, auth, OOM, read-only replica: all mean the limits cannot
            # be enforced right now, which the caller reports as 503.
            raise RateLimitStorageError(f"rate-limit storage unavailable: {error}") from error
        admitted, *counts = (int(value) for value in reply)
        return _decide(bool(admitted), self.windows, indices, counts, now)

    async def close(self) -> None:
        await self._redis.aclose()


def create_rate_limiter(
    windows: Sequence[Window], storage_url: str, max_clients: int, clock: Clock = time.time
) -> RateLimiter:
    """``memory://`` keeps counters in this process; redis://, rediss://, unix:// in Redis.

    For a URL no configuration has checked; a loaded one hands its ``rate_limit_redis_url``
    to `rate_limiter`."""
    return rate_limiter(windows, parse_rate_limit_storage(storage_url), max_clients, clock)


def rate_limiter(
    windows: Sequence[Window], redis_url: str | None, max_clients: int, clock: Clock = time.time
) -> RateLimiter:
    """Counters in Redis at ``redis_url``, shared by every gateway that names it; without
    one, in this process, for at most ``max_clients`` clients."""
    if redis_url is None:
        return MemoryRateLimiter(windows, max_clients, clock)
    return RedisRateLimiter(windows, redis_url, clock)
