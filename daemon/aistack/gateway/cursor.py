"""Opaque keyset cursors for `GET /hybrid/solutions`.

A cursor is the position of the last row of a page (the listing's sort key) and the order
it belongs to, signed with HMAC-SHA256 under the store's own key (table gateway_secrets),
so every gateway of one store reads the cursors of every other, and a client can neither
make one up nor point one at another order. Signed, not encrypted: what it carries (a
score, a time, an id) is in the page the client already has.

Written here rather than taken from a library: the JWT and itsdangerous formats carry a
header, an algorithm choice and a timestamp a cursor has no use for, for one HMAC call.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
from typing import Any, Literal

Order = Literal["value", "recent"]
# The sort key of a page's last row: (value_score, created_at, id) or (created_at, id).
Position = tuple[Any, ...]
FORMAT = 1
MAC_BYTES = 16  # 128 bits: forging one takes 2^128 tries, against a rate-limited endpoint
MAX_CURSOR_CHARS = 256


class CursorRefused(Exception):
    """A cursor this store did not issue (forged, damaged) or not for this listing (stale)."""


def encode(key: bytes, order: Order, position: Position) -> str:
    body = json.dumps(
        {"v": FORMAT, "o": order, "p": [_plain(part) for part in position]},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(body)}.{_b64(_mac(key, body))}"


def decode(key: bytes, order: Order, cursor: str) -> Position:
    """The position `cursor` carries, or CursorRefused saying why not."""
    body_text, dot, mac_text = cursor.partition(".")
    if len(cursor) > MAX_CURSOR_CHARS or not dot:
        raise CursorRefused("not a cursor this gateway issued")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise CursorRefused("not a cursor this gateway issued") from None
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise CursorRefused("not a cursor this gateway issued")
    content = json.loads(body)  # ours: signed, so well-formed
    if content.get("v") != FORMAT:
        raise CursorRefused("issued by another version of aistack; start again without cursor")
    if content.get("o") != order:
        raise CursorRefused(
            f"issued for order={content.get('o')}, not order={order}; start again without cursor"
        )
    return position_of(order, content["p"])


def position_of(order: Order, parts: list[Any]) -> Position:
    if order == "value":
        score, created_at, row_id = parts
        return (float(score), datetime.datetime.fromisoformat(created_at), int(row_id))
    created_at, row_id = parts
    return (datetime.datetime.fromisoformat(created_at), int(row_id))


def _plain(part: Any) -> Any:
    return part.isoformat() if isinstance(part, datetime.datetime) else part


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, hashlib.sha256)[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)
