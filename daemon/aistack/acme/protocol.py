"""The RFC 8555 exchange, on certbot's `acme` library: account, order, HTTP-01, finalize.

What is ours and why:
* `Network` remembers the last answer's Retry-After: the library raises problem documents
  without their headers, and a rate-limited client must know when to come back.
* Polling: the library sleeps a whole second between polls; a CA usually validates and
  issues in well under that, so we poll at 50 ms, doubling up to 2 s.
* A bad nonce is retried by the library once; `with_nonce_retries` retries a whole step
  a few more times (a CA may reject several nonces in a row, as pebble does on purpose).
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from acme import challenges, client, crypto_util, errors, messages

from aistack import __version__
from aistack.acme import keys
from aistack.acme.challenges import Responder
from aistack.config import AcmeConfig, read_secret
from aistack.errors import Failure
from aistack.observability.logs import EventLog

log = EventLog("acme")
T = TypeVar("T")
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 2.0
ORDER_DEADLINE_SECONDS = 120.0
NONCE_RETRIES = 4


class AcmeFailure(Failure):
    """An ACME step failed. `problem` is the CA's problem document, when it sent one."""

    def __init__(
        self,
        message: str,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.retry_after = retry_after
        self.retryable = retryable


class Network(client.ClientNetwork):
    last_retry_after: float | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        return response


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def problem_of(error: messages.Error) -> dict[str, Any]:
    return {k: v for k, v in error.to_partial_json().items() if v is not None}


def with_nonce_retries(step: Callable[[], T]) -> T:
    for attempt in range(NONCE_RETRIES):
        try:
            return step()
        except messages.Error as error:
            if error.code != "badNonce" or attempt == NONCE_RETRIES - 1:
                raise
            log.info("acme.bad_nonce_retry", attempt=attempt + 1)
    raise AssertionError("unreachable")


class AccountStore:
    """The account key (0600) and registration under `state_dir/accounts/<CA host>/`."""

    def __init__(self, state_dir: Path, directory_url: str) -> None:
        from urllib.parse import urlsplit

        host = urlsplit(directory_url).netloc.replace(":", "_") or "default"
        self.path = state_dir / "accounts" / host
        self.key_file = self.path / "key.pem"
        self.registration_file = self.path / "registration.json"

    def load_key(self) -> keys.PrivateKey:
        if self.key_file.exists():
            return keys.load_pem(self.key_file.read_bytes())
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = keys.generate("ec256")
        keys.write_private(self.key_file, keys.to_pem(key))
        log.info("acme.account_key_created", path=str(self.key_file))
        return key

    def load_registration(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.registration_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "uri" in data else None

    def save_registration(self, uri: str, email: str) -> None:
        keys.write_private(
            self.registration_file, json.dumps({"uri": uri, "email": email}).encode()
        )


class AcmeClient:
    def __init__(self, config: AcmeConfig, state_dir: Path) -> None:
        self.config = config
        self.accounts = AccountStore(state_dir, config.directory)
        self.account_key = self.accounts.load_key()
        self.jwk, algorithm = keys.account_jwk(self.account_key)
        verify: bool | str = config.ca_bundle or True
        self.net = Network(
            self.jwk,
            alg=algorithm,
            verify_ssl=verify,  # type: ignore[arg-type]  # requests takes a CA file path too
            user_agent=f"aistack/{__version__}",
            timeout=30,
        )
        try:
            directory = client.ClientV2.get_directory(config.directory, self.net)
        except requests.RequestException as error:
            raise AcmeFailure(
                f"cannot reach the ACME directory {config.directory}: {error}"
            ) from None
        self.client = client.ClientV2(directory, self.net)

    def register(self) -> str:
        """Find or create the account; keep its e-mail current. Returns the account URI."""
        email = self.config.email
        saved = self.accounts.load_registration()
        contact = (f"mailto:{email}",) if email else ()
        if saved is not None:
            regr = messages.RegistrationResource(uri=saved["uri"], body=messages.Registration())
            self.net.account = regr
            if saved.get("email", "") != email:
                with_nonce_retries(
                    lambda: self.client.update_registration(
                        regr, messages.Registration(contact=contact)
                    )
                )
                self.accounts.save_registration(saved["uri"], email)
                log.info("acme.account_updated", account=saved["uri"], email=email or "(none)")
            return saved["uri"]
        if not self.config.accept_terms:
            terms = self.client.directory.meta.terms_of_service or "(the CA's terms of service)"
            raise AcmeFailure(
                f"acme.accept_terms is false: read {terms} and set acme.accept_terms = true",
                retryable=False,
            )
        eab = None
        if self.config.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.jwk.public_key(),
                kid=self.config.eab_kid,
                hmac_key=read_secret(self.config.eab_hmac_key_file),
                directory=self.client.directory,
            )
        registration = messages.NewRegistration.from_data(
            email=email or None, terms_of_service_agreed=True, external_account_binding=eab
        )
        try:
            regr = with_nonce_retries(lambda: self.client.new_account(registration))
            uri = regr.uri
            log.info("acme.account_created", account=uri)
        except errors.ConflictError as existing:
            # The key is known to the CA already: the same account, found again.
            uri = existing.location
            found = messages.RegistrationResource(uri=uri, body=messages.Registration())
            self.net.account = found
            if email:
                with_nonce_retries(
                    lambda: self.client.update_registration(
                        found, messages.Registration(contact=contact)
                    )
                )
            log.info("acme.account_found", account=uri)
        self.accounts.save_registration(uri, email)
        return uri

    def issue(
        self,
        domains: list[str],
        key_pem: bytes,
        open_responder: Callable[[], Responder],
        profile: str = "",
    ) -> str:
        """Order (with `profile`, if one is named), answer the challenges, finalize,
        download: the full chain PEM.

        The responder is opened only if some name still needs validating: when the CA
        still trusts earlier validations, no port is bound, no file or record is written.
        Every challenge is published before the CA is told to look at any: DNS-01 waits
        once for all its records (a wildcard and its base name share one)."""
        self._check_profile(profile)
        csr = crypto_util.make_csr(key_pem, domains)
        order = with_nonce_retries(lambda: self.client.new_order(csr, profile=profile or None))
        deadline = time.monotonic() + ORDER_DEADLINE_SECONDS
        pending = [a for a in order.authorizations if a.body.status != messages.STATUS_VALID]
        if pending:
            responder = open_responder()
            try:
                answers = [self._publish(authorization, responder) for authorization in pending]
                responder.wait_ready()
                # A DNS propagation wait is not the CA's time: its deadline starts now.
                deadline = time.monotonic() + ORDER_DEADLINE_SECONDS
                for challenge, response in answers:
                    with_nonce_retries(
                        functools.partial(self.client.answer_challenge, challenge, response)
                    )
                for authorization in pending:
                    self._wait_valid(authorization, deadline)
            finally:
                responder.close()
        with_nonce_retries(lambda: self._begin_finalization(order))
        return self._wait_certificate(order, deadline)

    def _check_profile(self, profile: str) -> None:
        """A profile the directory does not advertise is refused here, not sent: a CA may
        ignore an unknown one and issue its default, which is not what was asked for."""
        if not profile:
            return
        offered = self.client.directory.meta.profiles or {}
        if profile not in offered:
            choice = f"it offers {', '.join(sorted(offered))}" if offered else "it offers none"
            raise AcmeFailure(
                f"the CA has no ACME profile {profile!r} ({choice}): set profile to one it"
                ' offers, or to "" for its default',
                retryable=False,
            )

    def _publish(
        self, authorization: messages.AuthorizationResource, responder: Responder
    ) -> tuple[messages.ChallengeBody, challenges.ChallengeResponse]:
        """The responder's kind of challenge, published; the CA is not told yet."""
        identifier = authorization.body.identifier.value
        challenge = next(
            (c for c in authorization.body.challenges if c.chall.typ == responder.kind), None
        )
        if challenge is None:
            raise AcmeFailure(
                f"the CA offers no {responder.kind} challenge for {identifier}", retryable=False
            )
        response, validation = challenge.response_and_validation(self.jwk)
        responder.add(identifier, challenge.chall.encode("token"), validation)
        return challenge, response

    def _wait_valid(self, authorization: messages.AuthorizationResource, deadline: float) -> None:
        pause = POLL_FIRST_SECONDS
        while True:
            current, _ = with_nonce_retries(lambda: self.client.poll(authorization))
            status = current.body.status
            if status == messages.STATUS_VALID:
                return
            if status != messages.STATUS_PENDING:
                problems = [c.error for c in current.body.challenges if c.error is not None]
                problem = problem_of(problems[0]) if problems else None
                detail = problem.get("detail", status.name) if problem else status.name
                raise AcmeFailure(
                    f"validation of {current.body.identifier.value} failed: {detail}",
                    problem,
                    retryable=False,
                )
            if time.monotonic() > deadline:
                raise AcmeFailure("the CA did not validate within the deadline")
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX_SECONDS)

    def _begin_finalization(self, order: messages.OrderResource) -> None:
        try:
            self.client.begin_finalization(order)
        except messages.Error as error:
            if error.code != "orderNotReady":
                raise

    def _wait_certificate(self, order: messages.OrderResource, deadline: float) -> str:
        pause = POLL_FIRST_SECONDS
        new_nonce = self.client.directory["newNonce"]
        while True:
            response = with_nonce_retries(
                lambda: self.net.post(order.uri, None, new_nonce_url=new_nonce)
            )
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_VALID and body.certificate:
                certificate = with_nonce_retries(
                    functools.partial(
                        self.net.post, body.certificate, None, new_nonce_url=new_nonce
                    )
                )
                return str(certificate.text)
            if body.status == messages.STATUS_INVALID:
                problem = problem_of(body.error) if body.error else None
                raise AcmeFailure("the CA refused to issue", problem, retryable=False)
            if body.status == messages.STATUS_READY:
                with_nonce_retries(lambda: self._begin_finalization(order))
            if time.monotonic() > deadline:
                raise AcmeFailure("the CA did not issue within the deadline")
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX_SECONDS)
