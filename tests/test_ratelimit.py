from __future__ import annotations

import asyncio
import gc
import random
import shutil
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.config import ValidationConfig
from aistack.gateway.ratelimit import (
    SUB_WINDOWS,
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
US = 1_000_000


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
    # The 48 sit in the minute's sub-window [18 s, 24 s), which leaves the span at 84 s.
    assert decision.header_value() == '"minute";r=12;t=65'
    assert decision.states == (WindowState(MINUTE, 12, 65), WindowState(HOUR, 952, 3941))


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


async def test_61st_request_is_denied_until_its_sub_window_leaves_the_span():
    clock = FakeClock(HOUR_START + 15.5)  # in the minute's sub-window [12 s, 18 s)
    limiter = MemoryRateLimiter(DEFAULT, max_clients=10, clock=clock)
    for _ in range(60):
        assert (await limiter.hit("192.0.2.1")).allowed
    denied = await limiter.hit("192.0.2.1")
    assert not denied.allowed
    # [12 s, 18 s) leaves the span when the sub-window at 78 s begins: 62.5 s, rounded up.
    assert denied.retry_after == 63
    assert denied.header_value() == '"minute";r=0;t=63'
    assert denied.states[1] == WindowState(HOUR, 940, 3945)  # the denial counted nowhere
    assert (await limiter.hit("192.0.2.2")).allowed  # another client is unaffected
    clock.now += 62.499999
    assert not (await limiter.hit("192.0.2.1")).allowed
    clock.now += 0.000001
    assert (await limiter.hit("192.0.2.1")).allowed


async def test_bursts_either_side_of_a_minute_boundary_get_one_quota():
    """The fixed windows admitted 120 requests in 1.5 s here under 60/minute."""
    clock = FakeClock(HOUR_START + 59.25)
    limiter = MemoryRateLimiter(DEFAULT, max_clients=10, clock=clock)
    admitted = 0
    for _ in range(150):
        admitted += (await limiter.hit("192.0.2.1")).allowed
        clock.now += 0.01
    assert admitted == 60


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
    # All 100 sit in the hour's first sub-window [0, 360 s), which leaves at 3960 s.
    assert denied.retry_after == 3960 - 200


async def test_a_clock_stepping_back_does_not_hand_out_fresh_quota():
    clock = FakeClock(HOUR_START + 61)  # sub-window [60 s, 66 s)
    limiter = MemoryRateLimiter([Window("minute", 2, 60)], max_clients=10, clock=clock)
    assert (await limiter.hit("k")).allowed
    assert (await limiter.hit("k")).allowed
    clock.now -= 30
    denied = await limiter.hit("k")
    assert not denied.allowed
    assert denied.retry_after == 126 - 31  # from the clock as read, to [126 s, 132 s)
    clock.now += denied.retry_after - 1
    assert not (await limiter.hit("k")).allowed
    clock.now += 1
    assert (await limiter.hit("k")).allowed


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

# Times in whole microseconds, as the limiter reads them; below 1e15 µs a reading survives
# the float clock exactly.
events_strategy = st.lists(
    st.tuples(
        st.one_of(
            st.just(0),
            st.integers(0, 3 * US),
            st.integers(0, 4000 * US),
            st.integers(0, 40).map(lambda n: n * US // 10),  # on sub-window boundaries
        ),
        st.one_of(st.just(0), st.just(0), st.integers(0, 100 * US)),  # the clock steps back
        st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::/64"]),
        st.booleans(),  # when denied: wait retry_after and try again
    ),
    max_size=120,
)
start_strategy = st.integers(0, 10**15 - 10**14)


@settings(max_examples=300, deadline=None)
@given(windows=windows_strategy, events=events_strategy, start=start_strategy)
def test_memory_limiter_keeps_its_promises(windows, events, start):
    run(
        _check_promises(
            lambda clock: MemoryRateLimiter(windows, 1000, clock),
            windows,
            events,
            start,
            # It forgets a client whose every count is out of every span at some reading
            # (of any client); a clock stepping back after that finds the client new.
            forgotten=lambda limiter, key: key not in limiter._clients,
        )
    )


@dataclass
class Admission:
    effective: int  # the client's reading, never behind its latest admission (µs)
    true: int  # the time that really passed (µs), while the clock only steps back


class Model:
    """The promises, from the admitted requests' times alone (no rings, no packing)."""

    def __init__(self, windows: tuple[Window, ...]) -> None:
        self.windows = windows
        self.admitted: dict[str, list[Admission]] = {}  # what the limiter remembers
        self.history: list[list[Admission]] = []  # per client, per time it was remembered
        self.every: dict[str, list[Admission]] = {}  # per client, all of its admissions

    def effective(self, key: str, reading: int) -> int:
        return max([reading] + [a.effective for a in self.admitted.get(key, [])])

    def counted(self, key: str, window: Window, effective: int) -> int:
        sub = window.seconds * US // SUB_WINDOWS
        head = effective // sub
        return sum(
            head - SUB_WINDOWS <= a.effective // sub <= head for a in self.admitted.get(key, [])
        )

    def admits_at(self, key: str, reading: int) -> bool:
        effective = self.effective(key, reading)
        return all(self.counted(key, w, effective) < w.quota for w in self.windows)

    def boundaries(self, key: str, reading: int, windows: tuple[Window, ...]) -> list[int]:
        """Every later reading at which a window's count can fall: the sub-window starts
        after the client's time, until all its counts are out of the longest span."""
        candidates = set()
        for window in windows:
            sub = window.seconds * US // SUB_WINDOWS
            first = self.effective(key, reading) // sub
            candidates.update((first + step) * sub for step in range(1, SUB_WINDOWS + 2))
        return sorted(candidates)


def ceil_seconds(microseconds: int) -> int:
    return -(-microseconds // US)


async def _check_promises(make_limiter, windows, events, start, forgotten=None):
    true_now = start
    offset = 0
    clock = FakeClock(start / US)
    limiter = make_limiter(clock)
    model = Model(windows)

    async def hit_and_check(key: str) -> Decision:
        reading = true_now + offset
        clock.now = reading / US
        effective = model.effective(key, reading)
        expected = model.admits_at(key, reading)
        # The second promise, in a user's terms: fewer than N in the last W (1 + 1/k).
        recent = model.admitted.get(key, [])
        if all(
            sum(
                a.effective > effective - w.seconds * US * (SUB_WINDOWS + 1) // SUB_WINDOWS
                for a in recent
            )
            < w.quota
            for w in windows
        ):
            assert expected
        decision = await limiter.hit(key)
        assert decision.allowed == expected
        if decision.allowed:
            if key not in model.admitted:
                model.admitted[key] = []
                model.history.append(model.admitted[key])
            model.admitted[key].append(Admission(effective, true_now))
            model.every.setdefault(key, []).append(model.admitted[key][-1])
            assert decision.retry_after == 0
        else:
            # Exact: the first reading at which the model admits, rounded up to seconds.
            first = next(
                b for b in model.boundaries(key, reading, windows) if model.admits_at(key, b)
            )
            assert decision.retry_after == ceil_seconds(first - reading)
            assert decision.header_value().endswith(f";r=0;t={decision.retry_after}")
        for state, window in zip(decision.states, windows, strict=True):
            counted = model.counted(key, window, effective)
            assert state.remaining == max(0, window.quota - counted)
            # Exact: the first reading at which this window's remaining would grow.
            target = min(counted, window.quota)
            grows = [
                b
                for b in model.boundaries(key, reading, (window,))
                if model.counted(key, window, max(b, effective)) < target
            ]
            assert state.reset_after == (ceil_seconds(grows[0] - reading) if target else 0)
        return decision

    for advance, step_back, key, wait in events:
        true_now += advance
        offset -= step_back
        decision = await hit_and_check(key)
        for known in list(model.admitted):
            if forgotten is not None and forgotten(limiter, known):
                del model.admitted[known]
        if not decision.allowed and wait:
            true_now += decision.retry_after * US
            assert (await hit_and_check(key)).allowed
    # The first promise: no closed span of W seconds holds more than N admitted requests,
    # in real time (the clock only stepped back), over all of a client's admissions, even
    # across its being forgotten; and in the client's time while it is remembered.
    for admissions in model.history:
        assert_spans_hold(windows, [a.effective for a in admissions])
    for admissions in model.every.values():
        assert_spans_hold(windows, [a.true for a in admissions])
    await limiter.close()


def assert_spans_hold(windows: tuple[Window, ...], times: list[int]) -> None:
    times = sorted(times)
    for window in windows:
        for position, begin in enumerate(times):
            inside = sum(1 for t in times[position:] if t <= begin + window.seconds * US)
            assert inside <= window.quota


@settings(max_examples=200, deadline=None)
@given(
    window=st.builds(
        Window,
        name=st.just("w"),
        quota=st.integers(1, 100),
        seconds=st.sampled_from([1, 2, 7, 60, 3600, 86400]),
    ),
    start=start_strategy,
    requests=st.integers(1, 400),
)
def test_a_client_spaced_at_10_11_of_the_quota_is_never_refused(window, start, requests):
    run(_steady(window, start, requests, window.seconds * US * 11 // (10 * window.quota) + 1))


async def _steady(window: Window, start: int, requests: int, spacing: int) -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter([window], max_clients=1, clock=clock)
    for number in range(requests):
        clock.now = (start + number * spacing) / US
        assert (await limiter.hit("k")).allowed


@settings(max_examples=100, deadline=None)
@given(
    window=st.builds(
        Window, name=st.just("w"), quota=st.integers(1, 100), seconds=st.sampled_from([1, 60])
    ),
    start=start_strategy,
)
def test_a_client_faster_than_the_quota_is_refused(window, start):
    async def scenario():
        spacing = window.seconds * US // window.quota - 1  # N + 1 requests within W
        clock = FakeClock()
        limiter = MemoryRateLimiter([window], max_clients=1, clock=clock)
        admitted = 0
        for number in range(window.quota + 1):
            clock.now = (start + number * spacing) / US
            admitted += (await limiter.hit("k")).allowed
        assert admitted == window.quota

    run(scenario())


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
    clock.now += 3600  # still counted: their sub-window [0, 360 s) is in the span
    await limiter.hit("live-1")
    assert (limiter.tracked_clients, limiter.evicted_clients) == (3, 0)
    clock.now += 360  # now out of every window's span
    await limiter.hit("live-2")
    await limiter.hit("live-3")
    assert (limiter.tracked_clients, limiter.evicted_clients) == (3, 0)
    for _ in range(59):
        await limiter.hit("live-2")
    assert not (await limiter.hit("live-2")).allowed  # still counted, not evicted


async def test_memory_per_client_stays_within_256_bytes():
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
    assert per_client <= 256


# --- Redis limiter against a real redis-server -----------------------------------------


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(tmp_path_factory) -> Iterator[RedisServer]:
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


@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    yield from start_redis(tmp_path_factory)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """One server for every hypothesis example (a function-scoped one would be reused
    across examples anyway); each example counts under its own key prefix."""
    yield from start_redis(tmp_path_factory)


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
            assert denied.retry_after == 61  # until [0, 6 s) leaves the span, at 66 s
            assert denied.header_value() == '"minute";r=0;t=61'
        assert (await first.hit("192.0.2.2")).allowed
        clock.now += 61
        allowed = await second.hit("192.0.2.1")
        assert allowed.allowed
        assert allowed.states == (WindowState(MINUTE, 59, 66), WindowState(HOUR, 939, 3894))
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
        for _ in range(600):
            clock.now += chance.choice([0, 0, 0.03, 0.3, 1, 7, 50, -20])  # -20: a step back
            key = chance.choice(["a", "b", "2001:db8::/64"])
            assert await shared.hit(key) == await local.hit(key)
    finally:
        await shared.close()


# Redis expires a client's hash in real time, by the fake clock's distance to its last
# count: with windows of 10 s or more that is at least 11 s, more than an example of a
# loaded CI machine takes, so no counter expires under a running example.
redis_windows_strategy = st.lists(
    st.builds(
        Window, name=st.just("w"), quota=st.integers(1, 6), seconds=st.sampled_from([10, 60, 3600])
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda window: window.seconds,
).map(lambda ws: tuple(Window(f"w{w.seconds}", w.quota, w.seconds) for w in ws))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(windows=redis_windows_strategy, events=events_strategy, start=start_strategy)
def test_redis_limiter_keeps_its_promises(shared_redis, windows, events, start):
    prefix = f"p{uuid.uuid4().hex}:"  # hypothesis seeds `random` alike for every example
    run(
        _check_promises(
            lambda clock: RedisRateLimiter(windows, shared_redis.url, clock, key_prefix=prefix),
            windows,
            events,
            start,
        )
    )


async def test_a_client_expires_after_its_counts_leave_every_window(redis_server):
    import redis.asyncio

    clock = FakeClock(HOUR_START + 30)
    limiter = RedisRateLimiter(DEFAULT, redis_server.url, clock=clock, key_prefix="ttl:")
    client = redis.asyncio.from_url(redis_server.url)
    try:
        await limiter.hit("k")
        assert [key.decode() for key in await client.keys("ttl:*")] == ["ttl:k"]
        # The hour's sub-window [0, 360 s) leaves the span at 3960 s; one second more.
        assert 3_930_000 < await client.pttl("ttl:k") <= 3_931_000
        clock.now += 1  # a denied request writes nothing, not even the expiry
        short = RedisRateLimiter([Window("s", 1, 1)], redis_server.url, clock, key_prefix="ttl:")
        clock.now = HOUR_START + 0.05  # sub-window [0, 0.1 s) leaves at 1.1 s: +1 s = 2.05 s
        assert (await short.hit("short")).allowed
        assert not (await short.hit("short")).allowed
        assert 2_000 < await client.pttl("ttl:short") <= 2_050
        await asyncio.sleep(2.2)
        assert await client.exists("ttl:short") == 0  # gone by itself
        await short.close()
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
