"""Every answer the gateway builds: JSON, and for refusals and errors a one-line
`detail` naming each failing field and rule (the shapes are in `schemas`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic_core import to_json

from aistack.gateway.requests import Problem
from aistack.gateway.schemas import ErrorAnswer, ErrorItem

RETRY_AFTER_UNAVAILABLE = 5
RETRY_AFTER_BUSY = 1
# The request body codings aiohttp decodes (the Accept-Encoding of a 415).
ACCEPTED_CODINGS = "gzip, deflate"


def json_answer(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # pydantic-core's encoder (Rust) writes the same compact UTF-8 JSON as
    # json.dumps(ensure_ascii=False, separators=(",", ":")), several times faster.
    return web.Response(
        body=to_json(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_answer(
    status: int,
    detail: str,
    errors: Sequence[ErrorItem] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    answer: ErrorAnswer = {"detail": detail, "errors": list(errors)}
    return json_answer(answer, status, headers)


def problems_answer(problems: Sequence[Problem]) -> web.Response:
    return web.Response(
        body=refusal_body(tuple(problems)), status=422, content_type="application/json"
    )


# Refusals repeat: an enumeration or a flood gets the same few answers thousands of times,
# and building one cost a refused request a tenth of its time under load (measured). The
# problems are fixed words and a few numbers, so few distinct bodies exist; at most this
# many are kept.
REFUSAL_BODIES_KEPT = 1024


@functools.lru_cache(maxsize=REFUSAL_BODIES_KEPT)
def refusal_body(problems: tuple[Problem, ...]) -> bytes:
    detail = "; ".join(f"{p.loc}: {p.msg}" for p in problems)
    answer: ErrorAnswer = {"detail": detail, "errors": [p.as_json() for p in problems]}
    return to_json(answer)


def unavailable_answer(dependency: str) -> web.Response:
    return error_answer(
        503,
        f"{dependency} is unavailable; retry later",
        [{"loc": dependency, "type": "unavailable", "msg": "dependency did not answer"}],
        {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
    )


def busy_answer(reason: str) -> web.Response:
    return error_answer(
        503,
        f"the embedder is busy ({reason}); retry later",
        [{"loc": "embedder", "type": "busy", "msg": "max_queue_depth, max_queue_wait_seconds"}],
        {"Retry-After": str(RETRY_AFTER_BUSY)},
    )


def too_large(limit: int, declared: int | None = None) -> web.Response:
    got = f" (Content-Length {declared})" if declared is not None else ""
    return error_answer(
        413,
        f"body: max_body_bytes {limit} exceeded{got}",
        [{"loc": "body", "type": "too_large", "msg": f"max_body_bytes {limit}"}],
    )
