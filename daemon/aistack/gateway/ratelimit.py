"""Sliding rate limits over several windows at once (e.g. 60/minute and 1000/hour).

Each window of W seconds is cut into ``SUB_WINDOWS`` (k = 10) sub-windows of W/k seconds,
aligned to the epoch, with a counter each. A request at time t falls in sub-window
``s = floor(t / (W/k))``; it is admitted only if, in every window, the counters of the k + 1
sub-windows ``s - k .. s`` (every one that overlaps [t - W, t]; the oldest counted whole)
sum to less than the quota N. An admitted request counts in every window, a denied one
counts nowhere, atomically. What that promises, for every window and every client (and
``tests/test_ratelimit.py`` proves with hypothesis over arbitrary request times and clock
steps, for memory and Redis storage alike):

* No span of W seconds (closed, [a, a + W]) holds more than N admitted requests. Two bursts
  either side of a boundary no longer get 2N: the fixed windows this replaces admitted 120
  requests in 1.5 s under 60/minute.
* A request is never refused while the client had fewer than N admitted in the last
  W (1 + 1/k) seconds; so a client spaced evenly at up to N k/(k + 1) per W (10/11 of N:
  54.5/minute for 60/minute, 909/hour for 1000/hour) is never refused.
* ``Retry-After`` is exact: the whole seconds, rounded up, until the clock reads the start
  of the sub-window in which enough of the oldest counts have left the span for one more
  request; the ``RateLimit`` field's ``r`` is N minus the counted sum and its ``t`` the time
  until ``r`` next grows (0 if nothing is counted).

Readings are taken in whole microseconds and computed in integers, so boundaries are
exact. A clock that steps back is taken, for each client, as standing at that client's
latest admitted reading until it catches up: the client's time never runs backwards, so
the span bound holds in real time too, and a step back never hands out fresh quota (it
refuses sooner, and Retry-After counts from the clock as read). A clock that jumps forward
cannot be told from time passing.

Why not PyPI ``limits`` (which the gateway could otherwise use):

* its in-process storage grows with every distinct client and cannot be bounded, so a
  flood of fresh source addresses grows the gateway without limit;
* it reads the wall clock itself, so tests cannot drive time and a clock step cannot be
  handled on purpose;
* it tests and counts the windows one at a time, not atomically: a request can use up
  the minute window and then be refused by the hour window (or race another request
  between the two checks); and its sliding window is approximate (a weighted previous
  window), which can admit more than N in a span.

``MemoryRateLimiter`` keeps at most ``max_clients`` clients in an LRU. Measured with
tracemalloc for 100,000 distinct IPv4 keys and the default 60/minute + 1000/hour
windows: 225 bytes per tracked client (key string, LRU entry and packed counters;
239 with the fixed windows), so the default bound of 100,000 clients costs about
23 MB. ``tests/test_ratelimit.py`` checks the figure stays at most 256 bytes. Why
k = 10: the admitted fraction k/(k + 1) grows slowly past it (16 would give 94% for 18 more
bytes per client), and 11 one- and two-byte counters fit the budget.

Speed: bench/gateway.py's refusal path, (c)/(a) (rate_limits ["1/hour"], 6 s x 5 rounds,
2026-12-08, this tree and the fixed windows served side by side in turns): 0.72 against
0.78 (a shared two-core VM; the goal >= 0.80 is not met yet). A faster refusal that reused
the latest refusal's summary was dropped: the property tests found it stale (remaining 0
with no reset time).

``RedisRateLimiter`` shares the limits between several gateways: one Lua script runs the
same algorithm on one hash per client, checking and counting all windows in a single
atomic round trip; the hash expires by itself once its counts are out of every window.
"""

from __future__ import annotations

import struct
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple, Protocol

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from aistack.config import parse_rate_limit_storage

Clock = Callable[[], float]

SUB_WINDOWS = 10  # sub-windows per window (k): see the module docstring for the choice
_SPAN = SUB_WINDOWS + 1  # sub-windows a decision counts: the current one and the k before
_MICROSECONDS = 1_000_000


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
    reset_after: int  # whole seconds until `remaining` grows; 0 if nothing is counted


class Decision(NamedTuple):
    allowed: bool
    states: tuple[WindowState, ...]
    retry_after: int  # 0 when allowed; else whole seconds until a request would be admitted

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
    sub_us: Sequence[int],
    reading: int,
    heads: Sequence[int],
    counts: Sequence[Sequence[int]],
) -> Decision:
    """The decision from every window's counted sub-windows.

    ``counts[p]`` holds window p's sub-windows ``head - 10 .. head``, oldest first (after
    counting the request if it was admitted). ``reset_after`` is exact: the whole seconds,
    rounded up, until the clock reads the start of the sub-window in which enough of the
    oldest counts have left the span for the remaining quota to grow (denied: for one
    request to fit). One plain loop, nothing called per window but C: this runs on every
    request, refusals included (a helper function per window cost 0.8 us, measured).
    """
    states = []
    retry_after = 0
    for position, window in enumerate(windows):
        quota = window.quota
        running = list(accumulate(counts[position]))
        total = running[-1]
        if total == 0:
            states.append(WindowState(window, quota, 0))
            continue
        # The first age whose leaving brings the sum below min(total, quota); that
        # sub-window, head - 10 + age, leaves the span when head + 1 + age begins.
        age = bisect_right(running, total - quota if total >= quota else 0)
        boundary = (heads[position] + 1 + age) * sub_us[position]
        reset_after = -((reading - boundary) // _MICROSECONDS)  # ceil, in integers
        if total >= quota:
            if reset_after > retry_after:
                retry_after = reset_after
            states.append(WindowState(window, 0, reset_after))
        else:
            states.append(WindowState(window, quota - total, reset_after))
    if allowed:
        return Decision(True, tuple(states), 0)
    return Decision(False, tuple(states), retry_after)


def _microseconds(now: float) -> int:
    """A clock reading in whole microseconds: integer arithmetic from here on, so that
    sub-window boundaries and spans are exact (floats would misplace a boundary by an ulp)."""
    return round(now * _MICROSECONDS)


def _sub_window_us(window: Window) -> int:
    # An integer: SUB_WINDOWS divides 1,000,000.
    return window.seconds * _MICROSECONDS // SUB_WINDOWS


def _counter_code(quota: int) -> str:
    """The narrowest struct code for a counter of this window: no count exceeds its quota."""
    for code, limit in (("B", 0xFF), ("H", 0xFFFF), ("I", 0xFFFF_FFFF)):
        if quota <= limit:
            return code
    return "Q"


_UNLIMITED = Decision(allowed=True, states=(), retry_after=0)
_ZEROS = (0,) * _SPAN


class MemoryRateLimiter:
    """Counters in this process, for at most ``max_clients`` clients (LRU by last request).

    Each client holds one ``bytes``: its latest admitted reading (µs, 8 bytes), then per
    window a ring of 11 counters, each as narrow as the window's quota allows (one byte for
    60/minute, two for 1000/hour), slot ``sub-window index % 11``. Why packed bytes: a list
    of 23 ints would cost 240 bytes per client on its own, a bytes of 41 costs 74 (the
    budget is 256 for everything a client holds); and why immutable bytes, not bytearray:
    56 bytes less, and only an admitted request writes (a denied one counts nowhere), so
    the refusal path never allocates a state. Whenever a new client arrives, clients whose
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
        self._clients: OrderedDict[str, bytes] = OrderedDict()
        self._evicted = 0
        self._sub_us = tuple(_sub_window_us(window) for window in self.windows)
        self._quotas = tuple(window.quota for window in self.windows)
        codes = "".join(f"{_SPAN}{_counter_code(window.quota)}" for window in self.windows)
        self._layout = struct.Struct(f"<q{codes}")
        # Shared by every new client until its first admission writes its own: no admission
        # yet, as if at the earliest time there is, so no reading is behind it.
        self._empty = self._layout.pack(-(2**63), *[0] * (len(self.windows) * _SPAN))

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
        reading = _microseconds(self._clock())
        state = self._clients.get(key)
        if state is None:
            state = self._admit_new_client(key, reading)
        else:
            self._clients.move_to_end(key)
        values = self._layout.unpack(state)
        latest = values[0]
        # A clock behind this client's latest admission is taken as standing at it.
        effective = reading if reading > latest else latest
        heads: list[int] = []
        counts: list[Sequence[int]] = []
        allowed = True
        offset = 1
        for position, sub_us in enumerate(self._sub_us):
            head = effective // sub_us
            stored_head = latest // sub_us
            aged = head - stored_head
            if aged >= _SPAN:
                window_counts: Sequence[int] = _ZEROS
            else:
                ring = values[offset : offset + _SPAN]
                oldest = (stored_head + 1) % _SPAN
                window_counts = ring[oldest:] + ring[:oldest]
                if aged:
                    window_counts = window_counts[aged:] + _ZEROS[:aged]
            if sum(window_counts) >= self._quotas[position]:
                allowed = False
            heads.append(head)
            counts.append(window_counts)
            offset += _SPAN
        if allowed:
            counts = self._store(key, effective, heads, counts)
        return _decide(allowed, self.windows, self._sub_us, reading, heads, counts)

    def _store(
        self, key: str, effective: int, heads: list[int], counts: list[Sequence[int]]
    ) -> list[Sequence[int]]:
        """Count an admitted request in every window; the counts after counting it."""
        packed = [effective]
        counted: list[Sequence[int]] = []
        for head, window_counts in zip(heads, counts, strict=True):
            updated = list(window_counts)
            updated[-1] += 1
            counted.append(updated)
            # Oldest first from slot (head + 1) % 11 on: rotate into slot order.
            split = (_SPAN - (head + 1) % _SPAN) % _SPAN
            packed += updated[split:]
            packed += updated[:split]
        self._clients[key] = self._layout.pack(*packed)
        return counted

    async def close(self) -> None:
        self._clients.clear()

    def _admit_new_client(self, key: str, reading: int) -> bytes:
        self._drop_expired(reading)
        if len(self._clients) >= self._max_clients:
            self._clients.popitem(last=False)
            self._evicted += 1
        self._clients[key] = self._empty
        return self._empty

    def _expired(self, state: bytes, reading: int) -> bool:
        latest = int.from_bytes(state[:8], "little", signed=True)
        return all(reading // sub - latest // sub >= _SPAN for sub in self._sub_us)

    def _drop_expired(self, reading: int) -> None:
        """Forget clients whose every window is over, least recently seen first.

        They sit at the LRU end, so this stops at the first live one: each client is looked
        at once when dropped, which keeps the cost per new client constant on average.
        """
        clients = self._clients
        while clients:
            key, state = next(iter(clients.items()))
            if not self._expired(state, reading):
                return
            del clients[key]


# One hash per client: field "e" is its latest admitted reading (µs), and per window
# "<name>/<seconds>:<slot>" the 11 ring counters, as in MemoryRateLimiter. KEYS[1]: the
# hash. ARGV: the reading (µs), then per window its field prefix, quota and sub-window
# length (µs). Returns {admitted (1/0), then per window: the effective sub-window index and
# its 11 counted sub-windows oldest first, after counting when admitted}. Every number
# stays an integer below 2^53, exact in Lua's doubles; floor division is corrected to be
# exact, and large numbers are written with %.0f (Lua's default %.14g would round them).
_HIT_SCRIPT = """
local span = SPAN
local now = tonumber(ARGV[1])
local n = (#ARGV - 1) / 3
local function div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local fields = {'e'}
for p = 1, n do
  for slot = 0, span - 1 do fields[#fields + 1] = ARGV[3 * p - 1] .. slot end
end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))
local fresh = not stored[1]
local latest = tonumber(stored[1] or ARGV[1])
local effective = now
if latest > now then effective = latest end
local allowed = 1
local reply = {0}
for p = 1, n do
  local quota, sub = tonumber(ARGV[3 * p]), tonumber(ARGV[3 * p + 1])
  local head, stored_head = div(effective, sub), div(latest, sub)
  local aged = head - stored_head
  local total = 0
  reply[#reply + 1] = head
  for age = 0, span - 1 do
    local count = 0
    local m = head - span + 1 + age
    if m <= stored_head and aged < span and not fresh then
      count = tonumber(stored[2 + (p - 1) * span + (m % span)] or '0')
    end
    total = total + count
    reply[#reply + 1] = count
  end
  if total >= quota then allowed = 0 end
end
if allowed == 0 then return reply end
reply[1] = 1
local writes = {'e', string.format('%.0f', effective)}
local ttl = 0
for p = 1, n do
  local sub = tonumber(ARGV[3 * p + 1])
  local base = 1 + (p - 1) * (span + 1)
  local head = reply[base + 1]
  reply[base + 1 + span] = reply[base + 1 + span] + 1
  for age = 0, span - 1 do
    local m = head - span + 1 + age
    writes[#writes + 1] = ARGV[3 * p - 1] .. (m % span)
    writes[#writes + 1] = reply[base + 2 + age]
  end
  local until_us = (head + span) * sub - now
  if until_us > ttl then ttl = until_us end
end
redis.call('HSET', KEYS[1], unpack(writes))
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1000)
return reply
""".replace("SPAN", str(_SPAN))


class RedisRateLimiter:
    """Counters in Redis, shared by every gateway that points at the same server.

    One hash per client, ``prefix + client key``, checked and counted by one Lua script in
    a single atomic round trip, with the memory limiter's algorithm. Each admission sets
    the hash to expire one second after its newest count leaves the longest window's span,
    so Redis holds only live clients. Readings come from the gateway's clock, so NTP-synced
    hosts agree on sub-window boundaries.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        url: str,
        clock: Clock = time.time,
        key_prefix: str = "aistack:rl:",
        timeout: float = 1.0,
        password: str | None = None,
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
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._redis.register_script(_HIT_SCRIPT)
        self._sub_us = tuple(_sub_window_us(window) for window in self.windows)
        # The field prefix names the length too: a window whose length changed starts over.
        self._window_args: list[str | int] = []
        for window, sub_us in zip(self.windows, self._sub_us, strict=True):
            self._window_args += [f"{window.name}/{window.seconds}:", window.quota, sub_us]

    async def hit(self, key: str) -> Decision:
        if not self.windows:
            return _UNLIMITED
        reading = _microseconds(self._clock())
        try:
            reply = await self._script(
                keys=[self._prefix + key], args=[reading, *self._window_args]
            )
        except redis.exceptions.RedisError as error:
            # Connection, timeout, auth, OOM, read-only replica: all mean the limits cannot
            # be enforced right now, which the caller reports as 503.
            raise RateLimitStorageError(f"rate-limit storage unavailable: {error}") from error
        heads: list[int] = []
        counts: list[Sequence[int]] = []
        for position in range(len(self.windows)):
            base = 1 + position * (_SPAN + 1)
            heads.append(int(reply[base]))
            counts.append([int(value) for value in reply[base + 1 : base + 1 + _SPAN]])
        return _decide(bool(reply[0]), self.windows, self._sub_us, reading, heads, counts)

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
    windows: Sequence[Window],
    redis_url: str | None,
    max_clients: int,
    clock: Clock = time.time,
    redis_password: str | None = None,
) -> RateLimiter:
    """Counters in Redis at ``redis_url`` (AUTH with ``redis_password``, if given), shared
    by every gateway that names it; without one, in this process, for at most
    ``max_clients`` clients."""
    if redis_url is None:
        return MemoryRateLimiter(windows, max_clients, clock)
    return RedisRateLimiter(windows, redis_url, clock, password=redis_password)
