from __future__ import annotations

import asyncio
import gc
import random
import shutil
import subprocess
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.config import ValidationConfig
from aistack.gateway.ratelimit import (
    Decision,
    MemoryRateLimiter,
    RateLimitStorageError,
    RedisRateLimiter,
    Window,
    WindowState,
    create_rate_limiter,
    policy_header_value,
    windows_from_config,
)
from tests.tools import tool_missing

MINUTE = Window("minute", 60, 60)
HOUR = Window("hour", 1000, 3600)
DEFAULT = (MINUTE, HOUR)
# An hour boundary (hence also a minute boundary): tests add offsets to it.
HOUR_START = 1_700_002_800.0


class FakeClock:
    def __init__(self, now: float = HOUR_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


# --- headers and configuration ---------------------------------------------------------


def test_policy_header_lists_every_window():
    assert policy_header_value(DEFAULT) == '"minute";q=60;w=60,"hour";q=1000;w=3600'
    assert policy_header_value(()) == ""


def test_header_names_the_window_with_the_least_remaining():
    decision = Decision(
        allowed=True,
        states=(WindowState(MINUTE, 12, 41), WindowState(HOUR, 900, 2000)),
        retry_after=0,
    )
    assert decision.header_value() == '"minute";r=12;t=41'
    decision = Decision(
        allowed=True,
        states=(WindowState(MINUTE, 12, 41), WindowState(HOUR, 3, 2000)),
        retry_after=0,
    )
    assert decision.header_value() == '"hour";r=3;t=2000'


def test_header_on_a_tie_names_the_window_that_resets_later():
    decision = Decision(
        allowed=False,
        states=(WindowState(MINUTE, 0, 41), WindowState(HOUR, 0, 2000)),
        retry_after=2000,
    )
    assert decision.header_value() == '"hour";r=0;t=2000'


async def test_header_from_the_limiter_matches_the_documented_example():
    clock = FakeClock(HOUR_START + 19)
    limiter = MemoryRateLimiter(DEFAULT, max_clients=10, clock=clock)
    for _ in range(48):
        decision = await limiter.hit("192.0.2.1")
    assert decision.header_value() == '"minute";r=12;t=41'
    assert decision.states == (WindowState(MINUTE, 12, 41), WindowState(HOUR, 952, 3581))


def test_windows_from_the_default_configuration():
    assert windows_from_config(ValidationConfig().rate_windows()) == DEFAULT


def test_windows_reject_bad_values():
    with pytest.raises(ValueError, match="quota"):
        Window("minute", 0, 60)
    with pytest.raises(ValueError, match="printable"):
        Window("mi\nnute", 1, 60)
    with pytest.raises(ValueError, match="share a name"):
        windows_from_config([("minute", 1, 60), ("minute", 2, 3600)])


def test_header_escapes_quotes_in_window_names():
    assert policy_header_value([Window('a"b\\', 1, 1)]) == '"a\\"b\\\\";q=1;w=1'


async def test_no_windows_always_allows_and_sends_no_header():
    limiter = MemoryRateLimiter((), max_clients=1)
    for _ in range(1000):
        decision = await limiter.hit("192.0.2.1")
        assert decision.allowed
    assert decision.states == ()
    assert decision.header_value() == ""
    assert limiter.tracked_clients == 0


# --- memory limiter: exact behaviour ---------------------------------------------------


async def test_61st_request_in_a_minute_is_denied_until_the_minute_ends():
    clock = FakeClock(HOUR_START + 15.5)
    limiter = MemoryRateLimiter(DEFAULT, max_clients=10, clock=clock)
    for _ in range(60):
        assert (await limiter.hit("192.0.2.1")).allowed
    denied = await limiter.hit("192.0.2.1")
    assert not denied.allowed
    assert denied.retry_after == 45  # ceil(60 - 15.5)
    assert denied.header_value() == '"minute";r=0;t=45'
    assert denied.states[1] == WindowState(HOUR, 940, 3585)  # the denial counted nowhere
    assert (await limiter.hit("192.0.2.2")).allowed  # another client is unaffected
    clock.now += 44
    assert not (await limiter.hit("192.0.2.1")).allowed
    clock.now += 1
    assert (await limiter.hit("192.0.2.1")).allowed


async def test_the_hour_limit_holds_across_minutes():
    clock = FakeClock(HOUR_START)
    limiter = MemoryRateLimiter((Window("minute", 60, 60), Window("hour", 100, 3600)), 10, clock)
    admitted = 0
    for _ in range(200):
        admitted += (await limiter.hit("k")).allowed
        clock.now += 1
    assert admitted == 100
    denied = await limiter.hit("k")
    assert denied.header_value() == f'"hour";r=0;t={denied.retry_after}'
    assert denied.retry_after == 3600 - 200


async def test_a_clock_stepping_back_does_not_hand_out_a_fresh_window():
    clock = FakeClock(HOUR_START + 61)
    limiter = MemoryRateLimiter([Window("minute", 2, 60)], max_clients=10, clock=clock)
    assert (await limiter.hit("k")).allowed
    assert (await limiter.hit("k")).allowed
    clock.now -= 30  # back into the previous minute
    denied = await limiter.hit("k")
    assert not denied.allowed
    assert denied.retry_after == 89  # until the end of the minute the quota was used in


windows_strategy = st.lists(
    st.builds(
        Window,
        name=st.sampled_from(["w"]),
        quota=st.integers(1, 6),
        seconds=st.sampled_from([1, 2, 5, 7, 10, 60, 3600]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda window: window.seconds,
).map(lambda ws: tuple(Window(f"w{w.seconds}", w.quota, w.seconds) for w in ws))

events_strategy = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0, 3, allow_nan=False), st.floats(0, 4000)),
        st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::/64"]),
        st.booleans(),  # when denied: wait retry_after and try again
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(windows=windows_strategy, events=events_strategy, start=st.floats(0, 1e10))
def test_memory_limiter_never_admits_more_than_the_quota_of_any_window(windows, events, start):
    run(_check_against_model(windows, events, start))


async def _check_against_model(windows, events, start):
    clock = FakeClock(start)
    limiter = MemoryRateLimiter(windows, max_clients=1000, clock=clock)
    admitted: Counter[tuple[str, int, int]] = Counter()

    async def hit_and_check(key: str) -> Decision:
        slots = [(key, w.seconds, int(clock.now // w.seconds)) for w in windows]
        expected = all(admitted[slot] < w.quota for slot, w in zip(slots, windows, strict=True))
        decision = await limiter.hit(key)
        assert decision.allowed == expected
        if decision.allowed:
            admitted.update(slots)
            assert decision.retry_after == 0
        else:
            assert decision.retry_after >= 1
            assert decision.header_value().endswith(f";r=0;t={decision.retry_after}")
        for state, slot in zip(decision.states, slots, strict=True):
            assert 0 <= state.remaining == state.window.quota - admitted[slot]
            assert 1 <= state.reset_after <= state.window.seconds
        return decision

    for advance, key, wait in events:
        clock.now += advance
        decision = await hit_and_check(key)
        if not decision.allowed and wait:
            clock.now += decision.retry_after
            assert (await hit_and_check(key)).allowed
    # The promise itself: no key ever got more than a window's quota in one aligned window.
    assert all(count <= quota_of(windows, seconds) for (_, seconds, _), count in admitted.items())


def quota_of(windows, seconds):
    return next(w.quota for w in windows if w.seconds == seconds)


@settings(max_examples=200, deadline=None)
@given(
    max_clients=st.integers(1, 5),
    events=st.lists(st.tuples(st.floats(0, 4000), st.integers(0, 12)), max_size=80),
)
def test_tracked_clients_never_exceed_the_bound(max_clients, events):
    async def scenario():
        clock = FakeClock()
        limiter = MemoryRateLimiter(DEFAULT, max_clients=max_clients, clock=clock)
        for advance, key in events:
            clock.now += advance
            await limiter.hit(f"198.51.100.{key}")
            assert limiter.tracked_clients <= max_clients

    run(scenario())


async def test_the_least_recently_seen_client_is_evicted():
    clock = FakeClock()
    limiter = MemoryRateLimiter([Window("minute", 2, 60)], max_clients=3, clock=clock)
    for key in "abc":
        await limiter.hit(key)
        await limiter.hit(key)
    assert not (await limiter.hit("a")).allowed  # a denied request still counts as seen
    await limiter.hit("d")  # evicts b, the least recently seen
    assert (limiter.tracked_clients, limiter.evicted_clients) == (3, 1)
    assert not (await limiter.hit("a")).allowed
    assert (await limiter.hit("b")).allowed  # forgotten: a fresh quota (evicts c)
    assert limiter.evicted_clients == 2


async def test_expired_clients_are_dropped_before_live_ones_are_evicted():
    clock = FakeClock()
    limiter = MemoryRateLimiter(DEFAULT, max_clients=3, clock=clock)
    await limiter.hit("old-1")
    await limiter.hit("old-2")
    clock.now += 3600  # both their windows are over
    await limiter.hit("live-1")
    await limiter.hit("live-2")
    await limiter.hit("live-3")
    assert (limiter.tracked_clients, limiter.evicted_clients) == (3, 0)
    for _ in range(59):
        await limiter.hit("live-1")
    assert not (await limiter.hit("live-1")).allowed  # still counted, not evicted


async def test_memory_per_client_stays_under_one_kilobyte():
    clients = 20_000
    limiter = MemoryRateLimiter(DEFAULT, max_clients=clients, clock=FakeClock(HOUR_START + 7))
    await limiter.hit("warm-up")  # the limiter's own fixed cost is not per client
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(clients - 1):
            # Key strings made here, one per request, as client_key does: the limiter keeps them.
            await limiter.hit(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}")
        gc.collect()
        per_client = (tracemalloc.get_traced_memory()[0] - before) / (clients - 1)
    finally:
        tracemalloc.stop()
    print(f"memory limiter: {per_client:.0f} bytes per tracked client")
    assert limiter.tracked_clients == clients
    assert per_client < 1024


# --- Redis limiter against a real redis-server -----------------------------------------


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        tool_missing("redis-server", "apt-get install redis-server")
    directory: Path = tmp_path_factory.mktemp("redis")
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(f"unix://{socket}", process)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.01)
        yield server
    finally:
        server.stop()


async def test_two_gateways_share_one_limit(redis_server):
    clock = FakeClock(HOUR_START + 5)
    first = RedisRateLimiter(DEFAULT, redis_server.url, clock=clock)
    second = RedisRateLimiter(DEFAULT, redis_server.url, clock=clock)
    try:
        for number in range(60):
            gateway = first if number % 2 else second
            assert (await gateway.hit("192.0.2.1")).allowed
        for gateway in (first, second):
            denied = await gateway.hit("192.0.2.1")
            assert not denied.allowed
            assert denied.retry_after == 55
            assert denied.header_value() == '"minute";r=0;t=55'
        assert (await first.hit("192.0.2.2")).allowed
        clock.now += 55  # the next minute
        allowed = await second.hit("192.0.2.1")
        assert allowed.allowed
        assert allowed.states == (WindowState(MINUTE, 59, 60), WindowState(HOUR, 939, 3540))
    finally:
        await first.close()
        await second.close()


async def test_redis_and_memory_limiters_decide_alike(redis_server):
    windows = (Window("second", 3, 1), Window("minute", 10, 60), Window("hour", 25, 3600))
    clock = FakeClock(HOUR_START)
    shared = RedisRateLimiter(windows, redis_server.url, clock=clock, key_prefix="same:")
    local = MemoryRateLimiter(windows, max_clients=100, clock=clock)
    chance = random.Random(7)
    try:
        for _ in range(400):
            clock.now += chance.choice([0, 0, 0.3, 1, 7, 50])
            key = chance.choice(["a", "b", "2001:db8::/64"])
            assert await shared.hit(key) == await local.hit(key)
    finally:
        await shared.close()


async def test_counters_expire_after_their_window(redis_server):
    import redis.asyncio

    clock = FakeClock(HOUR_START + 30)
    limiter = RedisRateLimiter(DEFAULT, redis_server.url, clock=clock, key_prefix="ttl:")
    client = redis.asyncio.from_url(redis_server.url)
    try:
        await limiter.hit("k")
        keys = sorted(key.decode() for key in await client.keys("ttl:*"))
        minute, hour = int(clock.now // 60), int(clock.now // 3600)
        assert keys == [f"ttl:hour:k:{hour}", f"ttl:minute:k:{minute}"]
        assert 60_000 < await client.pttl(f"ttl:minute:k:{minute}") <= 61_000
        assert 3_600_000 < await client.pttl(f"ttl:hour:k:{hour}") <= 3_601_000
    finally:
        await client.aclose()
        await limiter.close()


async def test_redis_down_raises_a_storage_error(redis_server):
    limiter = RedisRateLimiter(DEFAULT, redis_server.url, clock=FakeClock())
    try:
        assert (await limiter.hit("k")).allowed
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(RateLimitStorageError, match="unavailable"):
            await limiter.hit("k")
        assert time.monotonic() - started < 5  # fails fast: the gateway answers 503 promptly
    finally:
        await limiter.close()


async def test_create_rate_limiter_picks_the_storage(tmp_path):
    memory = create_rate_limiter(DEFAULT, "memory://", max_clients=5)
    assert isinstance(memory, MemoryRateLimiter)
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1", f"unix://{tmp_path}/none.sock"):
        limiter = create_rate_limiter(DEFAULT, url, max_clients=5)
        assert isinstance(limiter, RedisRateLimiter)
        assert limiter.windows == DEFAULT
        await limiter.close()
    unreachable = create_rate_limiter(DEFAULT, f"unix://{tmp_path}/none.sock", max_clients=5)
    try:
        with pytest.raises(RateLimitStorageError):
            await unreachable.hit("k")
    finally:
        await unreachable.close()
    with pytest.raises(ValueError, match="memory://"):
        create_rate_limiter(DEFAULT, "memcached://x", max_clients=5)
