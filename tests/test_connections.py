"""Counting open connections per client, on the gateway's own `PeerCounts`.

The socket-level behaviour (the 503, other addresses still served) is tested on the
real process in test_cli_gateway.py over 127.0.0.1 and 127.0.0.2; loopback offers one
IPv6 address only, so the grouping of IPv6 peers by prefix is tested here directly."""

from __future__ import annotations

import ipaddress

from aistack.gateway.connections import PeerCounts


def counts(limit: int = 2, exempt: tuple[str, ...] = (), ipv6_prefix: int = 64) -> PeerCounts:
    refused: list[None] = []
    networks = [ipaddress.ip_network(network) for network in exempt]
    return PeerCounts(limit, networks, ipv6_prefix, lambda: refused.append(None))


def test_ipv6_peers_in_one_prefix_share_one_count():
    peers = counts(limit=2)
    assert peers.admit("2001:db8:1:2::1")
    assert peers.admit("2001:db8:1:2::ffff")
    # A third address of the same /64 is the same client: a host owns its whole /64.
    assert not peers.admit("2001:db8:1:2:aaaa::3")
    # Another /64 is another client.
    assert peers.admit("2001:db8:1:3::1")
    peers.release("2001:db8:1:2::1")
    assert peers.admit("2001:db8:1:2:aaaa::3")


def test_the_prefix_is_the_configured_one():
    peers = counts(limit=1, ipv6_prefix=128)
    assert peers.admit("2001:db8::1")
    assert peers.admit("2001:db8::2")
    assert not peers.admit("2001:db8::1")


def test_ipv4_peers_are_counted_one_by_one_and_mapped_addresses_with_them():
    peers = counts(limit=1)
    assert peers.admit("192.0.2.1")
    assert peers.admit("192.0.2.2")
    # A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6: the same client.
    assert not peers.admit("::ffff:192.0.2.1")


def test_exempt_peers_are_never_counted():
    peers = counts(limit=1, exempt=("127.0.0.0/8",))
    for _ in range(5):
        assert peers.admit("127.0.0.1")
    for _ in range(5):
        peers.release("127.0.0.1")
    assert peers.open == {}


def test_every_release_frees_what_its_admit_took():
    peers = counts(limit=3)
    addresses = ["2001:db8::1", "2001:db8::2", "192.0.2.7"]
    for address in addresses:
        assert peers.admit(address)
    for address in addresses:
        peers.release(address)
    assert peers.open == {}
