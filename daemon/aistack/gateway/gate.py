"""The checks every request passes, cheapest first, before a handler spends anything on it.

`gated` wraps each route's handler when the application is built: metrics around
everything; then, by the route's `Admission`, the rate limiter (429), the API key
(401/403), the media type (415) and the declared body size (413). Only then does a
handler read the body. An `Admission` also says what its checks may answer, which
`/openapi.json` documents for every route that uses it. Operational endpoints
(/healthz, /readyz, /metrics, ACME tokens) are not counted against a client's quota, so
a Prometheus scrape never eats an agent's searches, but they carry the RateLimit-Policy
field like every other answer.

Why wrappers and not an aiohttp middleware: aiohttp builds a middleware chain around the
handler on every request, and that alone, for a middleware that only awaits the handler,
cost about 12% of a bare handler's requests per second under wrk (8 us a request). That
is the budget of a refusal, which must stay cheap. A wrapper also knows its endpoint when
it is built. Paths no route serves reach a catch-all route (`operational.unmatched`), so
they are answered, counted and labelled here too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from aistack.gateway.answers import (
    ACCEPTED_CODINGS,
    error_answer,
    too_large,
    unavailable_answer,
)
from aistack.gateway.ratelimit import Decision, MemoryRateLimiter, RateLimitStorageError
from aistack.gateway.state import STATE, GatewayState
from aistack.observability.logs import EventLog

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Admit = Callable[[GatewayState, web.Request, str, Handler], Awaitable[web.StreamResponse]]
log = EventLog("gateway")

UNMATCHED = "unmatched"  # the endpoint label of every path no route serves
BODY_CODINGS = frozenset({"", "identity", "gzip", "deflate"})


@dataclass(frozen=True, slots=True)
class Admission:
    """What a route's requests pass before its handler runs."""

    admit: Admit
    keyed: bool  # with `api_keys_file`, a key decides: 401, 403
    limited: bool  # counted against the client's quota: 429, or 503 when storage is down
    takes_body: bool  # a JSON body, checked before it is read: 413, 415; then 408, 422

    def refusals(self) -> tuple[int, ...]:
        """The statuses these checks (and reading the body) may answer."""
        statuses: list[int] = []
        if self.keyed:
            statuses += (401, 403)
        if self.limited:
            statuses += (429, 503)
        if self.takes_body:
            statuses += (408, 413, 415, 422)
        return tuple(sorted(statuses))


def gated(endpoint: str, admission: Admission, handler: Handler) -> Handler:
    """`handler`, answered only if `admit` lets the request through; timed and counted
    under `endpoint` (a route template, never the raw path a client sent)."""
    admit = admission.admit

    async def answer(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            expectation = request.headers.get("Expect")
            if expectation is not None and expectation.lower() != "100-continue":
                response = error_answer(
                    417,
                    f"Expect {expectation[:32]!r} is not understood (only 100-continue)",
                    [{"loc": "expect", "type": "unsupported", "msg": "100-continue"}],
                )
            else:
                response = await admit(state, request, endpoint, handler)
        except web.HTTPException as error:
            response = error_answer(error.status, error.reason)
            for name in ("Allow", "WWW-Authenticate"):
                if name in error.headers:
                    response.headers[name] = error.headers[name]
        except Exception as error:
            log.exception("gateway.unhandled", endpoint=endpoint, error=repr(error))
            response = error_answer(500, "internal error; see the gateway's journal")
        state.metrics.observe_request(endpoint, response.status, time.perf_counter() - started)
        if state.policy_header:
            response.headers["RateLimit-Policy"] = state.policy_header
        if request.body_exists and not request.content.is_eof():
            # No keep-alive after a body we refused (see connections.runner_options).
            response.force_close()
        return response

    return answer


async def admit_open(
    state: GatewayState, request: web.Request, endpoint: str, handler: Handler
) -> web.StreamResponse:
    """Health and ACME tokens: no key, no quota."""
    return await handler(request)


async def admit_operational(
    state: GatewayState, request: web.Request, endpoint: str, handler: Handler
) -> web.StreamResponse:
    """Readiness, metrics and unmatched paths: the API key if keys are configured, no quota."""
    denied = authorized(state, request, endpoint)
    return denied if denied is not None else await handler(request)


# These two hand back `admit_within_quota`'s coroutine instead of awaiting it: a refusal
# then costs no extra frame.
def admit_api_call(
    state: GatewayState, request: web.Request, endpoint: str, handler: Handler
) -> Awaitable[web.StreamResponse]:
    """The API without a body: the quota first (a refused client costs least), then the key."""
    return admit_within_quota(state, request, endpoint, handler, authorized)


def admit_api_body(
    state: GatewayState, request: web.Request, endpoint: str, handler: Handler
) -> Awaitable[web.StreamResponse]:
    """The API with a JSON body: the quota, the key, then what can be told of the body
    before it is read."""
    return admit_within_quota(state, request, endpoint, handler, acceptable_body)


Precheck = Callable[[GatewayState, web.Request, str], web.Response | None]


async def admit_within_quota(
    state: GatewayState,
    request: web.Request,
    endpoint: str,
    handler: Handler,
    precheck: Precheck,
) -> web.StreamResponse:
    key = state.client_keys.of(request.remote, request.headers)
    quota = state.quota
    if quota.exempt_networks and quota.exempt(key):
        return precheck(state, request, endpoint) or await handler(request)
    limiter = state.limiter
    if isinstance(limiter, MemoryRateLimiter):
        decision = limiter.hit_now(key)  # in this process: no coroutine to create and await
    else:
        try:
            decision = await limiter.hit(key)
        except RateLimitStorageError as error:
            state.metrics.dependency_down("rate_limit_storage")
            if not quota.fail_open:
                return unavailable_answer("rate_limit_storage")
            quota.storage_failed(str(error))
            return precheck(state, request, endpoint) or await handler(request)
        quota.storage_answered()
    response: web.StreamResponse
    if not decision.allowed and not quota.rehearse:
        response = refuse_over_limit(state, decision)
    else:
        if not decision.allowed:
            quota.rehearsed(exhausted_window(decision), key)
        response = precheck(state, request, endpoint) or await handler(request)
    if decision.states:
        response.headers["RateLimit"] = decision.header_value()
    return response


def exhausted_window(decision: Decision) -> str:
    return next(s.window.name for s in decision.states if s.remaining == 0)


def refuse_over_limit(state: GatewayState, decision: Decision) -> web.Response:
    exhausted = exhausted_window(decision)
    state.metrics.limited(exhausted)
    return error_answer(
        429,
        f"rate limit exceeded ({exhausted} window); retry after {decision.retry_after} s",
        [{"loc": "client", "type": "rate_limited", "msg": exhausted}],
        {"Retry-After": str(decision.retry_after)},
    )


def authorized(state: GatewayState, request: web.Request, endpoint: str) -> web.Response | None:
    """The key's refusal, or None when keys are not configured or this one may go on."""
    return authorize(state, request, endpoint) if state.access is not None else None


def acceptable_body(
    state: GatewayState, request: web.Request, endpoint: str
) -> web.Response | None:
    """The first refusal that needs no body, or None when the handler may go on."""
    denied = authorized(state, request, endpoint)
    if denied is not None:
        return denied
    media_type = media_type_of(request)
    if media_type != "application/json":
        state.metrics.rejected("unsupported_media_type")
        return error_answer(
            415,
            f"body must be application/json (got {media_type[:64]!r})",
            [{"loc": "content-type", "type": "media_type", "msg": "application/json"}],
        )
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in BODY_CODINGS:
        # aiohttp decodes gzip and deflate and passes any other coding on as if none
        # were named: the body would be read as JSON it is not.
        state.metrics.rejected("unsupported_content_encoding")
        return error_answer(
            415,
            f"Content-Encoding {coding[:32]!r} is not supported (gzip, deflate or none)",
            [{"loc": "content-encoding", "type": "unsupported", "msg": ACCEPTED_CODINGS}],
            {"Accept-Encoding": ACCEPTED_CODINGS},
        )
    limit = state.config.gateway.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        state.metrics.rejected("body_too_large")
        return too_large(limit, declared)
    return None


def media_type_of(request: web.Request) -> str:
    """The media type without parameters, lowercased. aiohttp's `request.content_type`
    parses the parameters too, at 7 us a request (measured), on a path that must stay cheap."""
    raw = request.headers.get("Content-Type")
    if raw is None:
        return "application/octet-stream"  # RFC 9110's default, as aiohttp reports it
    return raw.partition(";")[0].strip().lower()


def authorize(state: GatewayState, request: web.Request, endpoint: str) -> web.Response | None:
    assert state.access is not None
    grant = state.access.grant_for(request.headers.get("Authorization"))
    if grant is None:
        return error_answer(
            401,
            "a valid API key is required: Authorization: Bearer <key>",
            [{"loc": "authorization", "type": "unauthorized", "msg": "missing or unknown"}],
            {"WWW-Authenticate": 'Bearer realm="aistack"'},
        )
    if not grant.allows_endpoint(endpoint):
        return error_answer(
            403,
            f"this API key may not use {endpoint}",
            [{"loc": "authorization", "type": "forbidden", "msg": endpoint}],
        )
    return None


OPEN = Admission(admit_open, keyed=False, limited=False, takes_body=False)
OPERATIONAL = Admission(admit_operational, keyed=True, limited=False, takes_body=False)
API = Admission(admit_api_call, keyed=True, limited=True, takes_body=False)
API_WITH_BODY = Admission(admit_api_body, keyed=True, limited=True, takes_body=True)
