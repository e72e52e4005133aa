"""Request bodies, read only when everything that can be decided without them has been.

aiohttp answers `Expect: 100-continue` before handlers run and buffers up to
`client_max_size` before refusing; both are too late for a public endpoint. Here the
route's expect handler defers the interim answer, `gate` refuses on
Content-Length alone, and the body is read in chunks with the limit checked as it grows
(chunked bodies have no Content-Length), under a deadline (slow bodies tie up nothing).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http import HttpVersion11

BODY_DEADLINE_SECONDS = 10.0


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodyUndecodable(Exception):
    """The body does not decode as its Content-Encoding says (aiohttp decodes as it reads)."""


class ClientGone(Exception):
    """The client hung up before its whole body arrived: its doing, not a server error."""


def read_buffered(request: web.Request) -> bytes:
    try:
        return request.content.read_nowait()
    except web.RequestPayloadError as error:
        raise BodyUndecodable(str(error.args[0] if error.args else error)) from None


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """Route expect handler: say nothing yet; `read_body` sends 100 Continue when the
    request has passed every check that does not need its body. Any other expectation
    is answered 417 by `gate.gated`, counted like every answer."""
    return None


def buffered_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body when it has all arrived already, as small bodies do with their
    headers; None when more is to come (then `read_body`). No coroutine: this is every
    search's path, refused or not."""
    if not request.content.is_eof():
        return None
    body = read_buffered(request)
    if len(body) > limit:
        raise BodyTooLarge
    return body


async def read_body(request: web.Request, limit: int) -> bytes:
    if (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    # Small bodies usually arrive with the headers: take what is buffered, and only
    # start a deadline (which costs a timer per request) when more is still to come.
    first = read_buffered(request)
    if len(first) > limit:
        raise BodyTooLarge
    if request.content.is_eof():
        return first
    chunks: list[bytes] = [first] if first else []
    size = len(first)
    try:
        async with asyncio.timeout(BODY_DEADLINE_SECONDS):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow from None
    except web.RequestPayloadError as error:
        raise BodyUndecodable(str(error.args[0] if error.args else error)) from None
    except ConnectionResetError:
        raise ClientGone from None
    return b"".join(chunks)
