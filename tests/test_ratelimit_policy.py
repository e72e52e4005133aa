"""What the gateway does with the limiter's answer, on a real gateway (real sockets, the
real model, Qdrant in local mode) and a real redis-server: refusals only rehearsed
(`rate_limit_action = "log"`), exempt networks, and the storage down, closed or open."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from aistack.config import ConfigError
from tests.conftest import make_config
from tests.test_gateway_attacks import SEARCH, get, post
from tests.test_ratelimit import redis_server

__all__ = ["redis_server"]  # a fixture


async def test_log_action_answers_and_counts_what_it_would_refuse(gateway, caplog):
    server = await gateway(validation={"rate_limits": ["2/minute"], "rate_limit_action": "log"})
    caplog.set_level(logging.INFO, logger="aistack.gateway")
    statuses = [(await post(server, SEARCH))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 200]
    _, metrics, _ = await get(server, "/metrics")
    assert 'aistack_rate_limit_dry_run_refusals_total{window="minute"} 2.0' in metrics
    assert 'aistack_rate_limited_requests_total{window="minute"}' not in metrics
    rehearsed = [r for r in caplog.records if r.getMessage() == "gateway.rate_limit_dry_run"]
    assert [r.fields["window"] for r in rehearsed] == ["minute", "minute"]  # type: ignore[attr-defined]
    # The header still says what enforcing would: nothing left.
    _, _, headers = await post(server, SEARCH)
    assert headers["RateLimit"].startswith('"minute";r=0;')


async def test_exempt_networks_are_never_limited_and_others_still_are(gateway):
    server = await gateway(
        gateway={"trusted_proxies": ["127.0.0.1/32"]},
        validation={
            "rate_limits": ["2/minute"],
            "rate_limit_exempt": ["10.0.0.0/8", "2001:db8::/32"],
        },
    )
    for address in ("10.1.2.3", "2001:db8:5::1"):
        for _ in range(4):
            status, _, headers = await post(server, SEARCH, {"X-Forwarded-For": address})
            assert status == 200 and "RateLimit" not in headers
    outside = {"X-Forwarded-For": "192.0.2.7"}
    assert [(await post(server, SEARCH, outside))[0] for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("value", [["10.0.0.0/33"], ["monitoring"]])
def test_a_bad_exempt_network_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"validation.rate_limit_exempt.*is not an IP address"):
        make_config(tmp_path, validation={"rate_limit_exempt": value})


async def test_storage_down_fails_closed_by_default(gateway, redis_server):
    server = await gateway(validation={"rate_limit_storage": redis_server.url})
    assert (await post(server, SEARCH))[0] == 200
    redis_server.stop()
    status, body, _ = await post(server, SEARCH)
    assert status == 503 and body["detail"] == "rate_limit_storage is unavailable; retry later"
    _, metrics, _ = await get(server, "/metrics")
    assert 'aistack_dependency_unavailable_total{dependency="rate_limit_storage"} 1.0' in metrics


def redis_on(socket: str) -> subprocess.Popen[bytes]:
    """A new redis-server on the socket of one that was stopped."""
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", socket, "--save", "", "--appendonly",
         "no", "--dir", str(Path(socket).parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not Path(socket).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


async def test_storage_down_fails_open_counted_and_logged_once(gateway, redis_server, caplog):
    server = await gateway(
        validation={"rate_limits": ["2/minute"], "rate_limit_storage": redis_server.url,
                    "rate_limit_failure": "open"}
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="aistack.gateway")
    assert [(await post(server, SEARCH))[0] for _ in range(3)] == [200, 200, 429]
    redis_server.stop()
    assert [(await post(server, SEARCH))[0] for _ in range(4)] == [200] * 4  # unlimited
    _, metrics, _ = await get(server, "/metrics")
    assert "aistack_rate_limit_failed_open_total 4.0" in metrics
    assert 'aistack_dependency_unavailable_total{dependency="rate_limit_storage"} 4.0' in metrics
    downs = [r for r in caplog.records if r.getMessage() == "gateway.rate_limit_storage_down"]
    assert len(downs) == 1 and downs[0].levelno == logging.ERROR

    # Back on the same socket (its counters lost with it): limited again, and said so.
    again = redis_on(redis_server.url.removeprefix("unix://"))
    try:
        statuses = [(await post(server, SEARCH))[0] for _ in range(3)]
        assert statuses[-1] == 429 and statuses.count(200) == 2
        backs = [r for r in caplog.records if r.getMessage() == "gateway.rate_limit_storage_back"]
        assert len(backs) == 1
    finally:
        again.terminate()
        again.wait(10)


def redis_with_password(directory: Path, password: str) -> subprocess.Popen[bytes]:
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(socket), "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


async def test_the_redis_password_comes_from_a_file(gateway, redis_server, tmp_path):
    # redis_server only makes sure redis-server is installed (it skips, saying how, if not).
    directory = tmp_path / "redis-auth"
    directory.mkdir()
    process = redis_with_password(directory, "s3cret-redis")
    url = f"unix://{directory / 'redis.sock'}"
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("s3cret-redis\n")
    wrong.write_text("guess\n")
    try:
        limits = {"rate_limits": ["2/minute"], "rate_limit_storage": url}
        server = await gateway(
            validation={**limits, "rate_limit_storage_password_file": str(right)}
        )
        assert [(await post(server, SEARCH))[0] for _ in range(3)] == [200, 200, 429]
        refused = await gateway(
            validation={**limits, "rate_limit_storage_password_file": str(wrong)}
        )
        assert (await post(refused, SEARCH))[0] == 503
        unauthenticated = await gateway(validation=limits)
        assert (await post(unauthenticated, SEARCH))[0] == 503
    finally:
        process.terminate()
        process.wait(10)
