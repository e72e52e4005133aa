from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from aistack.gateway.clientkey import ClientKeys, client_key, parse_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def key(peer, *forwarded_for, trusted=PROXIES, ipv6_prefix=64):
    return client_key(peer, list(forwarded_for), trusted, ipv6_prefix)


def test_untrusted_peer_ignores_a_spoofed_forwarded_for():
    assert key("203.0.113.7", "198.51.100.1") == "203.0.113.7"
    assert key("203.0.113.7", "198.51.100.1, 10.0.0.1") == "203.0.113.7"
    assert key("203.0.113.7", "garbage") == "203.0.113.7"


def test_nothing_is_trusted_without_trusted_proxies():
    assert key("10.0.0.1", "198.51.100.1", trusted=[]) == "10.0.0.1"


def test_trusted_proxy_forwards_the_right_most_untrusted_entry():
    # The client itself wrote 192.0.2.66; the proxy appended the address it saw.
    assert key("10.0.0.1", "192.0.2.66, 198.51.100.1") == "198.51.100.1"


def test_two_clients_behind_one_proxy_get_different_keys():
    assert key("10.0.0.1", "198.51.100.1") != key("10.0.0.1", "198.51.100.2")


def test_a_chain_of_trusted_proxies_is_walked_through():
    chain = "192.0.2.66, 198.51.100.1, 10.1.1.1, 10.2.2.2"
    assert key("10.0.0.1", chain) == "198.51.100.1"


def test_only_trusted_hops_means_the_left_most_one():
    assert key("10.0.0.1", "10.9.9.9, 10.2.2.2") == "10.9.9.9"


def test_a_trusted_peer_without_the_header_is_the_client():
    assert key("10.0.0.1") == "10.0.0.1"
    assert key("10.0.0.1", "") == "10.0.0.1"


@pytest.mark.parametrize("garbage", ["unknown", "_hidden", "not an ip", "1.2.3", "", "[::1"])
def test_garbage_is_keyed_by_the_hop_that_sent_it(garbage):
    assert key("10.0.0.1", f"198.51.100.1, {garbage}") == "10.0.0.1"
    assert key("10.0.0.1", f"198.51.100.1, {garbage}, 10.2.2.2") == "10.2.2.2"
    # Fresh garbage per request must not mean a fresh key per request.
    assert key("10.0.0.1", f"{garbage}-1") == key("10.0.0.1", f"{garbage}-2")


def test_several_header_lines_are_one_list():
    assert key("10.0.0.1", "192.0.2.66", "198.51.100.1, 10.2.2.2") == "198.51.100.1"
    assert key("10.0.0.1", "198.51.100.1", "10.2.2.2") == "198.51.100.1"


def test_ports_are_stripped():
    assert key("10.0.0.1", "198.51.100.1:5678") == "198.51.100.1"
    assert key("10.0.0.1", "[2001:db8:1:2::5]:443") == "2001:db8:1:2::/64"
    assert key("10.0.0.1", "[2001:db8:1:2::5]") == "2001:db8:1:2::/64"
    assert key("10.0.0.1", "198.51.100.1:99999") == "10.0.0.1"  # not a port: garbage


def test_ipv6_clients_are_grouped_by_their_prefix():
    assert key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::5") == "2001:db8:1:3::/64"
    assert key("2001:db8:1:3::5", ipv6_prefix=48) == "2001:db8:1::/48"
    assert key("2001:db8:1:3::5", ipv6_prefix=128) == "2001:db8:1:3::5/128"
    assert key("10.0.0.1", "2001:db8:1:2::5") == "2001:db8:1:2::/64"


def test_ipv6_zone_ids_are_dropped():
    assert key("fe80::1%eth0") == "fe80::/64"


def test_ipv4_mapped_ipv6_is_ipv4():
    assert key("::ffff:203.0.113.7") == "203.0.113.7"
    # A dual-stack socket reports the proxy as mapped; it is still the trusted 10/8.
    assert key("::ffff:10.0.0.1", "198.51.100.1") == "198.51.100.1"
    assert key("10.0.0.1", "::ffff:198.51.100.1") == "198.51.100.1"


def test_trusted_ipv6_proxy():
    assert key("fd00::1", "2001:db8:1:2::5, fd00::2") == "2001:db8:1:2::/64"


def test_unix_socket_peers_share_one_key():
    assert key(None) == "unix"
    assert key("", "198.51.100.1") == "unix"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4", None),
        ("1.2.3.4:80", "1.2.3.4"),
        ("1.2.3.4:", None),
        ("1.2.3.4:http", None),
        ("[::1]:443", "::1"),
        ("[::1]x", None),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("01.2.3.4", None),
    ],
)
def test_parse_address(text, expected):
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:8080"),
    st.text(max_size=20),
)
forwarded_lines = st.lists(
    st.lists(addresses, max_size=4).map(", ".join) | st.text(max_size=40), max_size=3
)


@given(peer=st.ip_addresses(), forwarded_for=forwarded_lines)
def test_an_untrusted_peer_key_never_depends_on_the_header(peer, forwarded_for):
    if any(parse_address(str(peer)) in network for network in PROXIES):
        peer = ipaddress.ip_address("203.0.113.7")
    assert key(str(peer), *forwarded_for) == key(str(peer))


@given(peer=st.sampled_from(["10.0.0.1", "fd00::9"]), forwarded_for=forwarded_lines)
def test_a_trusted_peer_key_is_an_address_key(peer, forwarded_for):
    result = key(peer, *forwarded_for)
    network = ipaddress.ip_network(result)
    assert network.prefixlen == (32 if network.version == 4 else 64)


addresses = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.1", "fd00::1", "unknown", "", "[2001:db8::1]:443"]),
)


@given(
    peer=st.one_of(st.none(), addresses),
    forwarded=st.lists(addresses, max_size=3),
    trusted=st.sampled_from([[], PROXIES]),
    ipv6_prefix=st.sampled_from([48, 64, 128]),
)
def test_client_keys_of_a_request_agree_with_client_key(peer, forwarded, trusted, ipv6_prefix):
    """The per-request shortcut (no proxies: the peer alone, looked up) keys every request
    exactly as client_key does."""
    headers = CIMultiDictProxy(CIMultiDict([("X-Forwarded-For", entry) for entry in forwarded]))
    expected = client_key(peer, forwarded, trusted, ipv6_prefix)
    assert ClientKeys(trusted, ipv6_prefix).of(peer, headers) == expected
