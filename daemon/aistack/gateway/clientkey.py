"""The key a client is rate-limited by: its address, as far as we can trust it.

The socket peer cannot be forged, so it is the key unless the peer is one of our own
proxies (``gateway.trusted_proxies``). Only then is X-Forwarded-For read, and only the
entries our proxies appended: walking from the right, past our proxies, the first
address that is not ours is the client. Everything further left was written by the
client and could say anything.

IPv6 clients are keyed by their ``/ipv6_prefix`` network, because one host usually owns
a whole /64 and could otherwise take a fresh address (and a fresh quota) per request.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Protocol

from aistack.config import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNIX_SOCKET_KEY = "unix"


def client_key(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted: Sequence[Network],
    ipv6_prefix: int,
) -> str:
    """The rate-limit key for a request from ``peer`` carrying these X-Forwarded-For lines."""
    if not peer:
        return UNIX_SOCKET_KEY
    peer_address = parse_address(peer)
    if peer_address is None:
        # Not an IP (an unusual socket family): the kernel wrote it, so it is still honest.
        return peer
    if not is_trusted(peer_address, trusted):
        return address_key(peer_address, ipv6_prefix)
    return address_key(_forwarded_client(peer_address, forwarded_for, trusted), ipv6_prefix)


class Headers(Protocol):
    """What is read of a request's headers (aiohttp's CIMultiDictProxy is one)."""

    def getall(self, key: str, default: Sequence[str], /) -> Sequence[str]: ...


class ClientKeys:
    """`client_key` with this gateway's settings, for one request at a time."""

    def __init__(self, trusted: Sequence[Network], ipv6_prefix: int) -> None:
        self.trusted = tuple(trusted)
        self.ipv6_prefix = ipv6_prefix

    def of(self, peer: str | None, headers: Headers) -> str:
        if not self.trusted:
            # No proxy of ours: the header is never read, and the key depends on the peer
            # alone, so it is looked up rather than worked out (a few us per request).
            return peer_key(peer, self.ipv6_prefix)
        return client_key(
            peer, headers.getall("X-Forwarded-For", ()), self.trusted, self.ipv6_prefix
        )


def _forwarded_client(
    peer: Address, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address:
    entries = [entry.strip() for line in forwarded_for for entry in line.split(",")]
    last_trusted = peer
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            # Key by the hop that handed us the garbage, not by the garbage: otherwise a
            # client could mint a fresh key (and a fresh quota) per request with made-up
            # entries like "unknown-1", "unknown-2", ...
            return last_trusted
        if not is_trusted(address, trusted):
            return address
        last_trusted = address
    # Every hop is one of ours: the request started inside a trusted network.
    return last_trusted


def is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


# Parsing with `ipaddress` costs microseconds per request; peers repeat, so the last few
# thousand answers are kept (bounded: a flood of new peers only turns the cache over).
ADDRESS_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def peer_key(peer: str | None, ipv6_prefix: int) -> str:
    """The key of the socket peer itself, whatever it forwards: for counting connections."""
    return client_key(peer, (), (), ipv6_prefix)


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def parse_address(text: str) -> Address | None:
    """An address from a peer or an X-Forwarded-For entry, or None if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:443`` and zone ids; an IPv4-mapped IPv6 address comes back as IPv4,
    so a dual-stack socket and a proxy's header key the same client the same way.
    """
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _is_port(port[1:]))):
            return None
        text = host
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
        text = host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def address_key(address: Address, ipv6_prefix: int) -> str:
    """``1.2.3.4`` for IPv4; the ``/ipv6_prefix`` network, e.g. ``2001:db8:1:2::/64``, for IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    host_bits = 128 - ipv6_prefix
    network = (int(address) >> host_bits) << host_bits
    return f"{ipaddress.IPv6Address(network)}/{ipv6_prefix}"
