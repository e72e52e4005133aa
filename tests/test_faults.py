"""Faults of issue 6, each against the real parts: PostgreSQL restarted under load, a Qdrant
store that cannot be written, a full disk while a certificate is installed, clock jumps,
and SIGTERM while searches are in flight."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.acme import certfiles
from aistack.acme.due import decide, jitter_of, renewal_time
from aistack.acme.renew import CertificateState, renew, state_path
from aistack.config import AcmeConfig, validate_config
from aistack.embedding import Embedder
from aistack.gateway.ratelimit import MemoryRateLimiter, Window
from aistack.gateway.server import SHUTDOWN_GRACE_SECONDS
from aistack.ingest.jsonl import ingest, read_documents
from aistack.stores.private_postgres import PrivatePostgres, free_port
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import migrate
from tests.conftest import CORPUS
from tests.pebble import Pebble, running_pebble
from tests.pg import private_postgres_fixture
from tests.test_acme import DOMAIN, acme_settings
from tests.test_acme_due import DAY, NOW, issue
from tests.test_ratelimit import HOUR_START, FakeClock
from tests.tools import tool_missing

HOUR = 3600.0

# -- 1. PostgreSQL restarted under load ---------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PrivatePostgres]:
    """A server of this test's own: restarting the session's would cut other tests'
    connections."""
    yield from private_postgres_fixture()


@pytest.fixture
async def learning_gateway(
    tmp_path: Path, own_postgres: PrivatePostgres, embedder: Embedder, gateway: Any
) -> AsyncIterator[TestServer]:
    """A gateway over a migrated database on `own_postgres` and a Qdrant store of its own
    holding part of the demo corpus (searches need no PostgreSQL)."""
    dsn = own_postgres.create_database("faults")
    db = await asyncpg.connect(dsn)
    try:
        await migrate(db)
    finally:
        await db.close()
    store = VectorStore.connect(validate_config({"qdrant": {"path": str(tmp_path / "q")}}).qdrant)
    try:
        await ingest(read_documents(CORPUS)[:40], "nixos_docs", embedder, store, progress=None)
        # The load comes from one address: lift the per-client limit out of its way.
        yield await gateway(
            store=store, postgres={"dsn": dsn}, validation={"rate_limits": ["100000/minute"]}
        )
    finally:
        await store.close()


class Client:
    def __init__(self, server: TestServer, session: ClientSession) -> None:
        self.server = server
        self.session = session
        self.numbers = iter(range(1_000_000))

    async def learn(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        # Distinct questions, so none is merged into an earlier one.
        n = next(self.numbers)
        body = {
            "query": f"question {n}: how do I pin kernel {n} with boot.kernelPackages {n * 7919}?",
            "solution": f"boot.kernelPackages = pkgs.linuxPackages_{n};",
            "value_score": 0.5,
        }
        async with self.session.post(self.server.make_url("/hybrid/learn"), json=body) as answer:
            return answer.status, await answer.json(), dict(answer.headers)

    async def search(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        n = next(self.numbers)
        body = {"collection": "nixos_docs", "query": f"open firewall port {n}", "limit": 3}
        async with self.session.post(self.server.make_url("/vector/search"), json=body) as answer:
            return answer.status, await answer.json(), dict(answer.headers)

    async def readyz(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.session.get(self.server.make_url("/readyz")) as answer:
            return answer.status, await answer.json(), dict(answer.headers)


async def test_postgres_restart_under_load_gives_503_then_recovers_by_itself(
    learning_gateway: TestServer, own_postgres: PrivatePostgres
) -> None:
    async with ClientSession() as session:
        client = Client(learning_gateway, session)
        assert (await client.learn())[0] == 201
        assert (await client.readyz())[0] == 200

        seen: list[tuple[str, int, dict[str, str]]] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                for kind, call in (("search", client.search), ("learn", client.learn)):
                    status, _, headers = await call()
                    seen.append((kind, status, headers))
                await asyncio.sleep(0.01)

        workers = [asyncio.create_task(load()) for _ in range(8)]
        try:
            # Three outages: a connection the restart leaves broken in the pool shows up in
            # some restarts only (it depends on what each connection was doing).
            for _ in range(3):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(own_postgres.stop)

                # During the outage: learn is 503 with Retry-After, readiness names
                # postgres, search (no PostgreSQL involved) answers as before.
                status, body, headers = await client.learn()
                assert status == 503, body
                assert headers["Retry-After"] == "5"
                assert body["detail"] == "postgres is unavailable; retry later"
                status, body, headers = await client.readyz()
                assert status == 503
                assert "postgres: unavailable" in body["detail"]
                assert headers["Retry-After"] == "5"
                for _ in range(5):
                    status, body, _ = await client.search()
                    assert status == 200 and body["results"]
                await asyncio.sleep(0.5)  # the load keeps running against the outage

                await asyncio.to_thread(own_postgres.start)
                # Recovery without restarting the gateway: within seconds.
                deadline = time.monotonic() + 20
                while (await client.learn())[0] != 201:
                    assert time.monotonic() < deadline, "learn writes did not recover"
                    await asyncio.sleep(0.2)
                assert (await client.readyz())[0] == 200
        finally:
            stop.set()
            await asyncio.gather(*workers)

    statuses = Counter((kind, status) for kind, status, _ in seen)
    assert set(statuses) <= {("search", 200), ("learn", 201), ("learn", 503)}, statuses
    assert statuses[("learn", 503)] >= 1 and statuses[("learn", 201)] >= 1, statuses
    assert all(h.get("Retry-After") == "5" for _, status, h in seen if status == 503)
    async with ClientSession() as session:
        async with session.get(learning_gateway.make_url("/metrics")) as answer:
            metrics = await answer.text()
    assert 'aistack_dependency_unavailable_total{dependency="postgres"}' in metrics
    assert 'status="500"' not in metrics


# -- 2. Qdrant path that cannot be written -----------------------------------------------


def aistack(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        tool_missing("mount", "apt-get install mount")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        tool_missing(
            "permission to mount a tmpfs",
            f"run the tests as root with CAP_SYS_ADMIN ({mounted.stderr.strip()})",
        )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)]).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)])


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("how", ["read-only file system", "parent is a regular file"])
def test_an_unwritable_qdrant_path_is_one_clear_line_and_exit_1(tmp_path: Path, how: str) -> None:
    """As root, chmod 0o500 stops no write, so the directory is made unwritable for real:
    a read-only tmpfs mount (EROFS), or a path under a regular file (ENOTDIR)."""
    with contextlib.ExitStack() as stack:
        if how == "read-only file system":
            store = stack.enter_context(tmpfs(tmp_path / "ro", "ro,size=64k"))
            reason = "Read-only file system"
        else:
            (tmp_path / "a-file").write_text("not a directory\n")
            store = tmp_path / "a-file" / "qdrant"
            reason = "Not a directory"
        port = free_port()
        config = tmp_path / "aistack.json"
        config.write_text(
            json.dumps(
                {
                    "gateway": {"listen": [f"127.0.0.1:{port}"]},
                    "qdrant": {"path": str(store)},
                    "postgres": {"dsn": "postgresql://postgres@127.0.0.1:9/aistack"},
                }
            )
        )
        docs = tmp_path / "docs.jsonl"
        docs.write_text('{"id": 1, "text": "Enable OpenSSH."}\n')
        before = tree(tmp_path)

        runs = {
            "ingest": aistack(
                "ingest", "--config", str(config), "--collection", "nixos_docs", str(docs)
            ),
            "gateway": aistack("gateway", "--config", str(config), timeout=60),
        }
        for command, result in runs.items():
            assert result.returncode == 1, (command, result.stderr)
            assert "Traceback" not in result.stderr, (command, result.stderr)
            errors = [line for line in result.stderr.splitlines() if line.startswith("aistack:")]
            assert len(errors) == 1, (command, result.stderr)
            assert f"the Qdrant store at {store} cannot be created or written" in errors[0]
            assert reason in errors[0], errors[0]
            assert "PostgreSQL" not in errors[0] and "listen" not in errors[0]
        # Nothing half-created: no store, no lock file, no stray directory anywhere.
        assert tree(tmp_path) == before
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- 3. Disk full while a certificate is installed ---------------------------------------


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble"))


def pair_of(directory: Path) -> dict[str, bytes]:
    files = {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}
    assert set(files) == {"cert.pem", "chain.pem", "fullchain.pem", "key.pem"}, directory
    certificate = x509.load_pem_x509_certificate(files["cert.pem"])
    key = serialization.load_pem_private_key(files["key.pem"], None)
    assert certificate.public_key() == key.public_key()
    assert files["fullchain.pem"] == files["cert.pem"] + files["chain.pem"]
    return files


def fill(directory: Path) -> Path:
    """Write until the file system says ENOSPC; return the filler file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_disk_full_during_install_keeps_the_old_certificate_live(
    tmp_path: Path, pebble: Pebble
) -> None:
    data = {
        "qdrant": {"path": str(tmp_path / "q")},
        "acme": acme_settings(tmp_path, pebble, domains=[DOMAIN]),
    }
    path = tmp_path / "aistack.json"
    path.write_text(json.dumps(data))
    config: AcmeConfig = validate_config(data).acme
    with tmpfs(tmp_path / "certs", "size=64k") as cert_dir:
        assert renew(config).action == "renewed"
        live = cert_dir / DOMAIN
        target = os.readlink(live)
        before = pair_of(live)
        versions = cert_dir / ".versions" / DOMAIN
        versions_before = sorted(os.listdir(versions))
        filler = fill(cert_dir)

        result = aistack("acme", "renew", "--config", str(path), "--force", timeout=180)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        summary = [line for line in result.stderr.splitlines() if line.startswith(DOMAIN)]
        assert len(summary) == 1, result.stderr
        assert summary[0].startswith(f"{DOMAIN} failed expires ")
        assert summary[0].endswith(
            f"(forced) error: installing the new certificate in {cert_dir} "
            "failed: No space left on device"
        )
        assert "changed" not in result.stdout
        # The old pair stays live and whole; no half-written version is left to be kept
        # by pruning or taken for a complete one later.
        assert os.readlink(live) == target
        assert pair_of(live) == before
        assert sorted(os.listdir(versions)) == versions_before
        assert not (cert_dir / f".{DOMAIN}.link").exists()
        state = CertificateState.load(state_path(config))
        assert state.failures_total == 1 and state.consecutive_failures == 1
        assert state.last_error is not None
        assert "No space left on device" in state.last_error["message"]
        status = aistack("acme", "status", "--config", str(path))
        assert "No space left on device" in status.stdout

        # Space back: the next forced run installs a complete new pair.
        filler.unlink()
        again = aistack("acme", "renew", "--config", str(path), "--force", timeout=180)
        assert again.returncode == 0, again.stderr
        assert f"changed {DOMAIN}" in again.stdout
        assert os.readlink(live) != target
        fresh = pair_of(live)
        assert fresh["cert.pem"] != before["cert.pem"]
        for version in versions.iterdir():
            pair_of(version)


# -- 4a. Clock jumps: the rate limiter --------------------------------------------------


async def test_a_clock_jumping_back_an_hour_hands_out_no_fresh_quota() -> None:
    clock = FakeClock(HOUR_START + 2 * HOUR + 10)
    windows = (Window("minute", 5, 60), Window("hour", 8, 3600))
    limiter = MemoryRateLimiter(windows, max_clients=10, clock=clock)
    for _ in range(5):
        assert (await limiter.hit("k")).allowed
    clock.now += 62  # the minute's sub-window [6 s, 12 s) has left the span
    for _ in range(3):
        assert (await limiter.hit("k")).allowed
    assert not (await limiter.hit("k")).allowed  # the hour's 8 are used
    clock.now -= HOUR  # back into the previous hour, where "k" never asked
    denied = await limiter.hit("k")
    assert not denied.allowed
    # Until the hour's sub-window [0, 360 s) that holds all 8 leaves the span (at 3960 s),
    # counted from the stepped-back clock.
    assert denied.retry_after == 3960 - (72 - HOUR)
    assert limiter.tracked_clients == 1
    # A client first seen after the jump is counted in the windows the clock now names.
    assert (await limiter.hit("new")).allowed


async def test_a_clock_jumping_forward_a_day_resets_quotas_and_drops_stale_clients() -> None:
    clock = FakeClock(HOUR_START + 30)
    windows = (Window("minute", 2, 60), Window("hour", 3, 3600))
    limiter = MemoryRateLimiter(windows, max_clients=10, clock=clock)
    for key in ("a", "b", "c"):
        assert (await limiter.hit(key)).allowed
        assert (await limiter.hit(key)).allowed
        assert not (await limiter.hit(key)).allowed
    assert limiter.tracked_clients == 3
    clock.now += 24 * HOUR
    decision = await limiter.hit("a")
    assert decision.allowed
    assert [s.remaining for s in decision.states] == [1, 2]
    assert (await limiter.hit("d")).allowed  # a new client: the stale ones are dropped
    assert limiter.tracked_clients == 2  # "a" (seen after the jump) and "d"
    assert limiter.evicted_clients == 0
    assert (await limiter.hit("b")).allowed  # forgotten, so a full quota again


jumps = st.lists(
    st.tuples(
        st.one_of(
            st.floats(0, 3),
            st.floats(-120, 120),
            st.sampled_from([-HOUR, HOUR, -24 * HOUR, 24 * HOUR, -61.0, 59.5]),
            st.floats(-3 * 24 * HOUR, 3 * 24 * HOUR),
        ),
        st.integers(1, 4),  # requests at this reading
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    quotas=st.tuples(st.integers(1, 5), st.integers(1, 12)),
    events=jumps,
    start=st.floats(1e6, 1e10),
)
def test_random_clock_jumps_never_let_a_window_admit_more_than_its_quota(
    quotas: tuple[int, int], events: list[tuple[float, int]], start: float
) -> None:
    """One client, its counters never forgotten: its time is the clock, or its latest
    admission when the clock reads earlier (a clock that steps back stands still for it).
    Each decision counts the sub-windows of W/10 that overlap the last W of that time.
    Per window, no span of W of the client's time admits more than its quota; and no
    refusal while the counted sub-windows still have room."""
    windows = (Window("minute", quotas[0], 60), Window("hour", quotas[1], 3600))
    us = 1_000_000

    async def scenario() -> None:
        clock = FakeClock(start)
        limiter = MemoryRateLimiter(windows, max_clients=10, clock=clock)
        admitted: list[int] = []  # the client's time of each admission, in µs
        for jump, requests in events:
            clock.now = max(0.0, clock.now + jump)
            for _ in range(requests):
                now = max([round(clock.now * us), *admitted])
                counted = [
                    sum(
                        now // (w.seconds * us // 10) - 10
                        <= t // (w.seconds * us // 10)
                        <= now // (w.seconds * us // 10)
                        for t in admitted
                    )
                    for w in windows
                ]
                room = all(c < w.quota for c, w in zip(counted, windows, strict=True))
                decision = await limiter.hit("k")
                assert decision.allowed == room, (now, admitted)
                if decision.allowed:
                    admitted.append(now)
                    counted = [c + 1 for c in counted]
                else:
                    assert decision.retry_after >= 1
                for state, c, w in zip(decision.states, counted, windows, strict=True):
                    assert state.remaining == max(0, w.quota - c)
        for w in windows:
            for position, begin in enumerate(admitted):
                inside = [t for t in admitted[position:] if t <= begin + w.seconds * us]
                assert len(inside) <= w.quota

    asyncio.run(scenario())


# -- 4b. Clock jumps: the renewal decision -----------------------------------------------


def test_a_clock_jump_past_not_after_renews_at_once_even_inside_a_later_ari_window(
    tmp_path: Path,
) -> None:
    installed = issue(tmp_path, lifetime=90 * DAY, age=DAY)
    assert not decide(installed, ["example.org"], "ec256", 30, NOW).due
    later = NOW + 200 * DAY
    # The CA's window (fetched before the jump) lies ahead of the jumped clock: expired
    # wins, there is no waiting for it.
    window = (later + DAY, later + 2 * DAY)
    due = decide(installed, ["example.org"], "ec256", 30, later, ari_window=window)
    assert due.due and due.reason == "expired"
    assert due.renew_at == installed.not_after
    exactly = decide(installed, ["example.org"], "ec256", 30, installed.not_after)
    assert exactly.due and exactly.reason == "expired"


def test_a_clock_jump_back_before_not_before_does_not_renew_a_fresh_certificate(
    tmp_path: Path,
) -> None:
    installed = issue(tmp_path, lifetime=90 * DAY, age=DAY)
    normal = decide(installed, ["example.org"], "ec256", 30, NOW)
    for back in (2 * DAY, 400 * DAY, 30 * 365 * DAY):
        jumped = decide(installed, ["example.org"], "ec256", 30, NOW - back)
        assert now_before(NOW - back, installed)
        assert not jumped.due and jumped.reason == "not due"
        assert jumped.renew_at == normal.renew_at  # the plan does not move with the clock


def now_before(now: datetime.datetime, installed: certfiles.Installed) -> bool:
    return now < installed.not_before


@pytest.fixture(scope="module")
def fresh_certificate(tmp_path_factory: pytest.TempPathFactory) -> certfiles.Installed:
    return issue(tmp_path_factory.mktemp("due"), lifetime=90 * DAY, age=DAY)


@given(offset_hours=st.integers(-24 * 365 * 50, 24 * 365 * 50))
def test_any_clock_reading_gives_a_decision_consistent_with_the_plan(
    fresh_certificate: certfiles.Installed, offset_hours: int
) -> None:
    installed = fresh_certificate
    now = NOW + datetime.timedelta(hours=offset_hours)
    planned = renewal_time(
        installed.not_before,
        installed.not_after,
        30,
        jitter_of(installed.serial_number),
    )
    due = decide(installed, ["example.org"], "ec256", 30, now)
    assert due.due == (now >= planned)
    if now >= installed.not_after:
        assert due.reason == "expired"


# -- 5. SIGTERM while searches are in flight ---------------------------------------------


def question(n: int) -> str:
    words = " ".join(f"option{n}_{i}" for i in range(120))
    return f"how do I configure services number {n} with {words}"


def test_sigterm_lets_in_flight_searches_finish_then_exits_0(
    tmp_path: Path, embedder: Embedder
) -> None:
    async def build_store() -> None:
        store = VectorStore.connect(
            validate_config({"qdrant": {"path": str(tmp_path / "qdrant")}}).qdrant
        )
        try:
            await ingest(read_documents(CORPUS), "nixos_docs", embedder, store, progress=None)
        finally:
            await store.close()

    asyncio.run(build_store())
    port = free_port()
    config = tmp_path / "aistack.json"
    config.write_text(
        json.dumps(
            {
                "gateway": {"listen": [f"127.0.0.1:{port}"]},
                "qdrant": {"path": str(tmp_path / "qdrant")},
                "postgres": {"dsn": "postgresql://postgres@127.0.0.1:9/aistack"},
                # All 48 searches queue for the embedder: this test is about draining.
                "embedding": {"max_queue_depth": 64, "max_queue_wait_seconds": 60},
            }
        )
    )
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "gateway", "--config", str(config)],
            stderr=log,
            env={**os.environ, "JOURNAL_STREAM": "8:1234"},
        )
    try:
        deadline = time.monotonic() + 90
        while "event=gateway.started" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)

        requests = 48
        sent = threading.Barrier(requests + 1)
        finished: list[float] = []

        def one_search(n: int) -> tuple[int, dict[str, Any]]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                body = json.dumps({"collection": "nixos_docs", "query": question(n), "limit": 5})
                connection.request(
                    "POST", "/vector/search", body, {"Content-Type": "application/json"}
                )
                sent.wait()
                answer = connection.getresponse()
                data = answer.read()
                finished.append(time.monotonic())
                return answer.status, json.loads(data)
            finally:
                connection.close()

        with ThreadPoolExecutor(requests) as pool:
            futures = [pool.submit(one_search, n) for n in range(requests)]
            sent.wait()
            time.sleep(0.3)  # every request is read by the gateway, most still embedding
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)

            refused_while_draining = False
            while process.poll() is None and time.monotonic() < signalled + 10:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    refused_while_draining = not all(f.done() for f in futures)
                    break
                time.sleep(0.02)
            answers = [future.result(timeout=SHUTDOWN_GRACE_SECONDS + 10) for future in futures]

        code = process.wait(SHUTDOWN_GRACE_SECONDS + 10)
        exited = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    in_flight = sum(1 for at in finished if at > signalled)
    assert in_flight >= 1, "no search was still in flight at SIGTERM: the test proved nothing"
    assert refused_while_draining, "a new connection was accepted after SIGTERM"
    for status, body in answers:
        assert status == 200
        assert set(body) >= {"results", "total"} and len(body["results"]) == 5
    assert code == 0
    assert exited - signalled < SHUTDOWN_GRACE_SECONDS
    output = log_path.read_text()
    assert "Traceback" not in output
    stopping = output.index("<6>event=gateway.stopping")
    assert output.index("<6>event=gateway.stopped") > stopping
