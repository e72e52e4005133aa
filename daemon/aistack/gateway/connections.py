"""Connections before they are requests: how long one may sit idle, how many one address
may hold, and the answer to what is not a request at all.

aiohttp closes a connection that has sent nothing for `keepalive_timeout` after its last
answer; `gateway.idle_timeout_seconds` sets it (aiohttp's default is an hour). From 3.14
aiohttp also starts that timer when a connection opens, but 3.13 (what nixpkgs packages) does not
and would hold a silent connection, or one trickling its first request's header, for as
long as the client likes; `GatewayRequestHandler` bounds the first request head itself,
on every version. aiohttp has no limit per client address, and neither has aiohttp-remotes, so a
site of ours counts open connections by peer and answers the one past
`gateway.max_connections_per_client` with a 503 before it is handed to aiohttp. A peer is
keyed as the rate limiter keys it (an IPv6 peer by its `/ipv6_prefix` network): a host
owning a /64 could otherwise hold 64 sockets from each of its addresses. Peers in
`trusted_proxies` are not limited: behind nginx every client is 127.0.0.1.

What aiohttp's parser refuses (a broken request line or header, TLS on the plain port, a
coding it cannot decode) it answers in text/plain that quotes the raw request bytes, and
logs with a traceback at ERROR. `GatewayRequestHandler` answers those in the gateway's
JSON shape with its RateLimit-Policy field, counts them (endpoint "malformed"), and logs
one line at info: a client's malformed request is not our error.

A request whose target has no path (`CONNECT host:port`, the authority form) reaches no
route at all: aiohttp's router walks the path's prefixes and an empty path has none, so
aiohttp itself answers text/plain 404. Such a request is handed to the application with
the target `*` (the other target without a path), which the catch-all answers in JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from aistack.gateway.answers import ACCEPTED_CODINGS, RETRY_AFTER_UNAVAILABLE, error_answer
from aistack.gateway.clientkey import Network, is_trusted, parse_address, peer_key
from aistack.gateway.state import GatewayState
from aistack.observability.logs import EventLog

log = EventLog("gateway")
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
BODY = (
    b'{"detail":"too many open connections from this address; close some and retry",'
    b'"errors":[{"loc":"client","type":"too_many_connections","msg":"max_connections_per_client"}]}'
)
PATHLESS_TARGET = "*"
REFUSAL = TOO_MANY_CONNECTIONS % (RETRY_AFTER_UNAVAILABLE, len(BODY), BODY)


class PeerCounts:
    """Open connections per peer address, and the refusal of one too many."""

    def __init__(
        self,
        limit: int,
        exempt: Sequence[Network],
        ipv6_prefix: int,
        on_refused: Callable[[], None],
    ) -> None:
        self.limit = limit
        self.exempt = tuple(exempt)
        self.ipv6_prefix = ipv6_prefix
        self.on_refused = on_refused
        self.open: dict[str, int] = {}

    def admit(self, peer: str) -> bool:
        if self.is_exempt(peer):
            return True
        key = peer_key(peer, self.ipv6_prefix)
        count = self.open.get(key, 0)
        if count >= self.limit:
            return False
        self.open[key] = count + 1
        return True

    def release(self, peer: str) -> None:
        if self.is_exempt(peer):
            return
        key = peer_key(peer, self.ipv6_prefix)
        count = self.open.get(key, 0)
        if count <= 1:
            self.open.pop(key, None)
        else:
            self.open[key] = count - 1

    def is_exempt(self, peer: str) -> bool:
        if not self.exempt:
            return False
        address = parse_address(peer)
        return address is not None and is_trusted(address, self.exempt)


class CountedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a count of its peer's connections."""

    def __init__(self, counts: PeerCounts, handler: asyncio.Protocol) -> None:
        self.counts = counts
        self.handler = handler
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else ""
        if not self.counts.admit(peer):
            self.counts.on_refused()
            log.info("gateway.too_many_connections", peer=peer, limit=self.counts.limit)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL)
            transport.close()
            return
        self.peer = peer
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None:
            return
        self.counts.release(self.peer)
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.peer is not None else None

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.handler.resume_writing()


MALFORMED = "malformed"  # the endpoint label of what aiohttp's parser refused
# What each parser error is, in words of our own: aiohttp's messages quote the raw bytes.
PARSER_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (http_exceptions.LineTooLong, 431, "a request line or header is too long"),
    (http_exceptions.InvalidHeader, 400, "a header is malformed"),
    (http_exceptions.BadStatusLine, 400, "the request line is malformed"),
    (http_exceptions.BadHttpMethod, 400, "the method is malformed (TLS on a plain port?)"),
    (http_exceptions.ContentEncodingError, 415, "Content-Encoding must be gzip or deflate"),
    (http_exceptions.TransferEncodingError, 400, "the chunked body is malformed"),
    (http_exceptions.ContentLengthError, 400, "the body is shorter than its Content-Length"),
    (http_exceptions.BadHttpMessage, 400, "the request is malformed"),
)


def parser_error(exc: BaseException | None, status: int) -> tuple[int, str]:
    for kind, answer_status, words in PARSER_ERRORS:
        if isinstance(exc, kind):
            return answer_status, words
    return status, "the request is malformed"


class GatewayRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, with the gateway's answer to errors."""

    def __init__(self, manager: web.Server, state: GatewayState, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.state = state
        self.first_head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self.first_head_deadline = loop.call_later(self.keepalive_timeout, self.no_request_in_time)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.cancel_first_head_deadline()
        super().connection_lost(exc)

    def cancel_first_head_deadline(self) -> None:
        if self.first_head_deadline is not None:
            self.first_head_deadline.cancel()
            self.first_head_deadline = None

    def no_request_in_time(self) -> None:
        self.first_head_deadline = None
        self.force_close()

    def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # aiohttp offers no public hook between parsing a request and routing it; this is
        # the one place a pathless target can be seen. Re-check on every aiohttp upgrade
        # (test_cli_gateway's CONNECT case fails if the hook is no longer called). Not a
        # coroutine itself: aiohttp's own is handed back, so a request costs no extra frame.
        self.cancel_first_head_deadline()
        if not request.rel_url.path:
            request = request.clone(rel_url=PATHLESS_TARGET)
        return super()._handle_request(request, start_time, request_handler)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer is out already: nothing can follow it (as aiohttp does).
            raise ConnectionError("an answer was already being sent")
        if status >= 500:
            log.error("gateway.unhandled", status=status, error=repr(exc))
            words = "internal error; see the gateway's journal"
        else:
            status, words = parser_error(exc, status)
            log.info("gateway.malformed_request", status=status, error=type(exc).__name__)
        headers = {"Accept-Encoding": ACCEPTED_CODINGS} if status == 415 else None
        response = error_answer(
            status, words, [{"loc": "request", "type": "malformed", "msg": words}], headers
        )
        if self.state.policy_header:
            response.headers["RateLimit-Policy"] = self.state.policy_header
        self.state.metrics.observe_request(MALFORMED, status, 0.0)
        response.force_close()
        return response


class PeerLimitedSite(web.TCPSite):
    """aiohttp's TCPSite, each connection counted against its peer's limit and served by
    a `GatewayRequestHandler` made with the runner's options."""

    def __init__(
        self,
        runner: web.BaseRunner,
        counts: PeerCounts,
        state: GatewayState,
        handler_options: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, **kwargs)
        self.counts = counts
        self.state = state
        self.handler_options = handler_options

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would bind
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def connection() -> CountedConnection:
            handler = GatewayRequestHandler(server, self.state, loop=loop, **self.handler_options)
            return CountedConnection(self.counts, handler)

        self._server = await loop.create_server(
            connection,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port


def runner_options(idle_timeout_seconds: float) -> dict[str, Any]:
    """aiohttp runner options. aiohttp reads and discards an unread body for up to
    `lingering_time` (10 s) to keep the connection alive; for a body we refused (1 GB
    announced, or chunks past the limit) that is wasted work, so the connection is closed
    right after the answer instead. No access log: the gateway logs its own events."""
    return {
        "lingering_time": 0,
        "access_log": None,
        "keepalive_timeout": idle_timeout_seconds,
    }
