"""Write-time deduplication of `POST /hybrid/learn` under concurrency: identical learns
racing each other, in one gateway and across two gateway processes, store one row."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from aistack.gateway import learn
from aistack.stores.private_postgres import free_port
from aistack.stores.schema import LEARN_LOCK_CLASS
from aistack.stores.solutions import COLLECTION
from tests.learning import LearningStore
from tests.test_cli_gateway import Gateway
from tests.test_qdrant_standin import StandIn

# Room for every racer: no refusal by the limiter, the embedder queue or the per-client
# connection cap may hide a duplicate (or stand in for the one the test looks for).
RACE_LIMITS: dict[str, Any] = {
    "validation": {"rate_limits": ["100000/minute"]},
    "embedding": {"max_queue_depth": 1000},
    "gateway": {"max_connections_per_client": 1000},
}
RACERS = 50
ROUNDS = 20
# Each round's query: no two are near copies (cosine at most 0.49 with the bundled model),
# so every round stores a row of its own.
TOPICS = [
    "How do I pin nixpkgs to a release in a flake?",
    "Open TCP port 443 in the NixOS firewall",
    "Enable the OpenSSH daemon and allow key logins only",
    "Mount an NFS share at boot with fileSystems",
    "Roll back to the previous generation after a bad switch",
    "Run a PostgreSQL server with a database for my app",
    "Garbage collect old generations to free disk space",
    "Set the time zone and the keyboard layout",
    "Add a user to the wheel group with a hashed password",
    "Use nginx as a reverse proxy with Let's Encrypt certificates",
    "Build a Docker image from a Nix expression",
    "Enable Bluetooth and pair headphones",
    "Configure a static IPv6 address on an interface",
    "Write a systemd timer that runs a backup every night",
    "Install proprietary NVIDIA drivers on a laptop",
    "Cross-compile a package for aarch64 from x86_64",
    "Encrypt the root partition with LUKS at install time",
    "Override a package version with an overlay",
    "Set up WireGuard between two hosts",
    "Enable zram swap on a machine with little memory",
    "Share a printer over the network with CUPS",
    "Keep secrets out of the Nix store with sops",
]


def solution(round_number: int, racer: int) -> dict[str, Any]:
    return {"query": TOPICS[round_number], "solution": f"answer {racer}", "value_score": 0.5}


async def learn_all(urls: list[str], bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Every body posted at once, the i-th to urls[i % len(urls)]."""
    async with ClientSession() as session:

        async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post(url, json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(
            *(post(urls[i % len(urls)], body) for i, body in enumerate(bodies))
        )


async def test_fifty_identical_learns_store_one_row_every_round(gateway, learning: LearningStore):
    server = await gateway(store=learning.store, postgres={"dsn": learning.dsn}, **RACE_LIMITS)
    url = str(server.make_url("/hybrid/learn"))
    for round_number in range(ROUNDS):
        bodies = [solution(round_number, racer) for racer in range(RACERS)]
        answers = await learn_all([url], bodies)
        assert {status for status, _ in answers} == {201}, answers
        ids = {answer["id"] for _, answer in answers}
        assert len(ids) == 1, f"round {round_number}: {len(ids)} rows"
        (row_id,) = ids
        merged = [answer for _, answer in answers if "merged_into" in answer]
        assert len(merged) == RACERS - 1
        assert len(await learning.rows()) == round_number + 1
        assert len(await learning.point_ids()) == round_number + 1
        assert row_id in await learning.point_ids()


async def test_a_held_query_lock_delays_only_that_query_and_times_out_as_busy(
    gateway, learning: LearningStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(learn, "LOCK_WAIT_MS", 1500)
    server = await gateway(store=learning.store, postgres={"dsn": learning.dsn}, **RACE_LIMITS)
    url = str(server.make_url("/hybrid/learn"))
    held, other = solution(0, 0), solution(1, 0)
    key = learn.query_lock_key(held["query"])
    # The same halves as one int8 key (the jobs' form) are another lock: it blocks nothing.
    as_int8 = (LEARN_LOCK_CLASS << 32) | (key & 0xFFFFFFFF)
    await db(learning).execute("SELECT pg_advisory_lock($1)", as_int8)
    assert (await learn_all([url], [held]))[0][0] == 201
    # Another gateway's learn of the same query, stuck: this one waits, then is told so.
    await db(learning).execute("SELECT pg_advisory_lock($1, $2)", LEARN_LOCK_CLASS, key)
    waiting = asyncio.create_task(learn_all([url], [{**held, "solution": "late"}]))
    began = time.monotonic()
    # A different query is not held up behind it.
    assert (await learn_all([url], [other]))[0][0] == 201
    assert time.monotonic() - began < 1.0 and not waiting.done()
    [(status, answer)] = await waiting
    assert time.monotonic() - began >= 1.4
    assert status == 503
    assert answer["detail"] == (
        "solved_issues is busy: a lock was held past lock_timeout (1500 ms) by another learn "
        "of the same query or a GC batch; retry later"
    )
    assert answer["errors"] == [{"loc": "postgres", "type": "busy", "msg": "lock_timeout"}]
    await db(learning).execute("SELECT pg_advisory_unlock_all()")
    assert len(await learning.rows()) == 2
    # Spellings of one query share its lock; the lock is taken on the normalised text.
    assert learn.query_lock_key(" ＨＯＷ do I\tpin\u200b NIXPKGS to a release in a flake? ") == key
    async with ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            metrics = await response.text()
    assert 'aistack_dependency_unavailable_total{dependency="learn_lock"} 1.0' in metrics


async def test_learns_queued_behind_one_query_hold_one_connection_not_one_each(
    gateway, learning: LearningStore
):
    """Twenty learns of one query wait behind a lock another gateway holds: one of them
    waits in PostgreSQL, the rest take turns in the process, and the pool stays free for
    reading solutions back."""
    server = await gateway(store=learning.store, postgres={"dsn": learning.dsn}, **RACE_LIMITS)
    url = str(server.make_url("/hybrid/learn"))
    held = solution(2, 0)
    row = await learning.add("a stored question", 0.5)
    key = learn.query_lock_key(held["query"])
    await db(learning).execute("SELECT pg_advisory_lock($1, $2)", LEARN_LOCK_CLASS, key)
    waiting = asyncio.create_task(learn_all([url], [held] * 20))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiters = await db(learning).fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
            )
            if waiters:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every learn has been embedded and queued by now
        waiters = await db(learning).fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
        )
        assert waiters == 1
        # The pool has connections left for a read while the crowd waits.
        async with ClientSession() as session:
            async with session.get(server.make_url(f"/hybrid/solutions/{row}")) as response:
                assert response.status == 200
    finally:
        await db(learning).execute("SELECT pg_advisory_unlock_all()")
    answers = await waiting
    assert {status for status, _ in answers} == {201}
    assert len({answer["id"] for _, answer in answers}) == 1
    assert len(await learning.rows()) == 2


def db(learning: LearningStore) -> Any:
    assert learning.db is not None
    return learning.db


def gateway_config(directory: Path, port: int, standin: StandIn, dsn: str) -> Path:
    key_file = directory / "qdrant-key"
    key_file.write_text(f"{standin.key}\n")
    config = {
        **RACE_LIMITS,
        "gateway": {**RACE_LIMITS["gateway"], "listen": [f"127.0.0.1:{port}"]},
        "qdrant": {"url": standin.url, "api_key_file": str(key_file)},
        "postgres": {"dsn": dsn},
    }
    path = directory / "aistack.json"
    path.write_text(json.dumps(config))
    return path


CROSS_PROCESS_ROUNDS = 8


async def test_identical_learns_split_across_two_gateway_processes_store_one_row(
    tmp_path: Path, learning: LearningStore
):
    """Two `aistack gateway` processes, one PostgreSQL, one Qdrant server (the stand-in):
    only a lock in PostgreSQL can keep their learns of one query apart."""
    (tmp_path / "standin").mkdir()
    standin = StandIn(tmp_path / "standin")
    standin.start()
    gateways: list[Gateway] = []
    try:
        ports = [free_port(), free_port()]
        for number, port in enumerate(ports):
            directory = tmp_path / f"gateway-{number}"
            directory.mkdir()
            config = gateway_config(directory, port, standin, learning.dsn)
            gateways.append(Gateway(config, directory))
        for started in gateways:
            started.wait_ready()
        store = standin.connect()
        urls = [f"http://127.0.0.1:{port}/hybrid/learn" for port in ports]
        began = time.monotonic()
        for round_number in range(CROSS_PROCESS_ROUNDS):
            bodies = [solution(round_number, racer) for racer in range(RACERS)]
            answers = await learn_all(urls, bodies)
            assert {status for status, _ in answers} == {201}, answers
            ids = {answer["id"] for _, answer in answers}
            assert len(ids) == 1, f"round {round_number}: {len(ids)} rows"
            assert len(await learning.rows()) == round_number + 1
            assert await store.count(COLLECTION) == round_number + 1
        print(f"{CROSS_PROCESS_ROUNDS} rounds in {time.monotonic() - began:.1f} s")
        await store.close()
    finally:
        codes = [started.stop() for started in gateways]
        standin.kill()
    assert codes == [0] * len(gateways), [started.output() for started in gateways]
