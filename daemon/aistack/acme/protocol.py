"""The RFC 8555 exchange, on certbot's `acme` library: account, order, HTTP-01, finalize.

What is ours and why:
* `Network` remembers the last answer's Retry-After: the library raises problem documents
  without their headers, and a rate-limited client must know when to come back.
* Polling: the library sleeps a whole second between polls; a CA usually validates and
  issues in well under that, so we poll at 50 ms, doubling up to 2 s.
* A bad nonce is retried by the library once; `with_nonce_retries` retries a whole step
  a few more times (a CA may reject several nonces in a row, as pebble does on purpose).
* The new order: acme 5.x cannot say which certificate an order replaces (RFC 9773
  section 5), so `new_order` builds the request itself (`NewOrder` adds `replaces`).
* The account key rollover (RFC 8555 section 7.3.5): acme 5.x and josepy have no request
  for it; `roll_over` nests one JWS in another with acme's own JWS class.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, jws, messages

from aistack import __version__
from aistack.acme import keys
from aistack.acme.account import AccountStore
from aistack.acme.challenges import Responder
from aistack.config import AcmeConfig, read_secret
from aistack.errors import Failure
from aistack.observability.failpoints import failpoint
from aistack.observability.logs import EventLog

if TYPE_CHECKING:
    from cryptography import x509

log = EventLog("acme")
T = TypeVar("T")
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 2.0
ORDER_DEADLINE_SECONDS = 120.0
NONCE_RETRIES = 4
PROBLEM_TYPE = "application/problem+json"
# Problems after which an order is sent again without `replaces`: any refusal but these,
# which would refuse the order without it as well. RFC 9773 names `alreadyReplaced`;
# pebble 2.6 answers 409 `malformed` for a certificate replaced before, `unauthorized`
# for one another account ordered, `serverInternal` for one it never issued.
NOT_ABOUT_REPLACES = ("badNonce", "rateLimited", "accountDoesNotExist")


class NewOrder(messages.NewOrder):
    """acme's new-order request, plus the certificate it replaces (RFC 9773 section 5)."""

    replaces: str | None = jose.field("replaces", omitempty=True)


def order_request(
    csr_pem: bytes, *, replaces: str | None = None, profile: str | None = None
) -> NewOrder:
    """The newOrder payload for the CSR's names: the one place an order is built."""
    from cryptography import x509

    csr = x509.load_pem_x509_csr(csr_pem)
    dns_names, addresses = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
    identifiers += [
        messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(a)) for a in addresses
    ]
    return NewOrder(identifiers=identifiers, profile=profile, replaces=replaces)


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
    last_problem: messages.Error | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        # The library turns any 409 into a ConflictError without the CA's problem document
        # (RFC 9773's alreadyReplaced is one): keep it to say what the CA said.
        self.last_problem = None
        if response.headers.get("Content-Type", "").startswith(PROBLEM_TYPE):
            with contextlib.suppress(ValueError, jose.DeserializationError):
                self.last_problem = messages.Error.from_json(response.json())
        return response

    def refusal(self, error: Exception) -> messages.Error | None:
        """The CA's problem behind a failed request, if it sent one."""
        if isinstance(error, messages.Error):
            return error
        return self.last_problem if isinstance(error, errors.ConflictError) else None


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


def as_failure(error: Exception, net: Network | None = None) -> AcmeFailure:
    """A CA's refusal or a failure to talk to it, in one line; `net` the network the
    request went through, for the problem and Retry-After of its answer."""
    problem = net.refusal(error) if net is not None else error
    if isinstance(problem, messages.Error):
        return AcmeFailure(
            f"the CA answered {problem.typ}: {problem.detail}",
            problem_of(problem),
            net.last_retry_after if net is not None else None,
            retryable=problem.code in ("badNonce", "rateLimited", "serverInternal"),
        )
    return AcmeFailure(f"talking to the CA failed: {error!r}")


# What the ACME client raises when a request fails: the CA's problem, transport, protocol.
CA_ERRORS = (messages.Error, requests.RequestException, errors.Error)


def with_nonce_retries(step: Callable[[], T]) -> T:
    for attempt in range(NONCE_RETRIES):
        try:
            return step()
        except messages.Error as error:
            if error.code != "badNonce" or attempt == NONCE_RETRIES - 1:
                raise
            log.info("acme.bad_nonce_retry", attempt=attempt + 1)
    raise AssertionError("unreachable")


class AcmeClient:
    def __init__(self, config: AcmeConfig, state_dir: Path) -> None:
        self.config = config
        self.accounts = AccountStore(state_dir, config.directory)
        # The account is this client's until close(): use it in a `with` block.
        self.accounts.lock()
        self._open = True
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        self.account_key = self.accounts.load_key()
        self.jwk, algorithm = keys.account_jwk(self.account_key)
        self.net = self._network(self.jwk, algorithm)
        try:
            directory = client.ClientV2.get_directory(self.config.directory, self.net)
        except requests.RequestException as error:
            raise AcmeFailure(
                f"cannot reach the ACME directory {self.config.directory}: {error}"
            ) from None
        self.client = client.ClientV2(directory, self.net)
        pending = self.accounts.pending_key()
        if pending is not None:
            self._settle_rollover(pending)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.accounts.unlock()

    def __enter__(self) -> AcmeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _network(self, jwk: jose.JWK, algorithm: jose.JWASignature) -> Network:
        verify: bool | str = self.config.ca_bundle or True
        return Network(
            jwk,
            alg=algorithm,
            verify_ssl=verify,  # type: ignore[arg-type]  # requests takes a CA file path too
            user_agent=f"aistack/{__version__}",
            timeout=30,
        )

    def _use_key(self, key: keys.PrivateKey) -> None:
        self.account_key = key
        self.jwk, self.net.alg = keys.account_jwk(key)
        self.net.key = self.jwk

    def account_of(self, key: keys.PrivateKey) -> str | None:
        """The URI of the account the CA holds this key for, or None if it knows none
        (newAccount with onlyReturnExisting, RFC 8555 section 7.3.1)."""
        jwk, algorithm = keys.account_jwk(key)
        probe = client.ClientV2(self.client.directory, self._network(jwk, algorithm))
        only_existing = messages.NewRegistration(only_return_existing=True)
        try:
            regr = with_nonce_retries(lambda: probe.new_account(only_existing))
        except errors.ConflictError as found:
            return str(found.location)
        except messages.Error as error:
            if error.code == "accountDoesNotExist":
                return None
            raise
        return str(regr.uri)  # a CA that ignored onlyReturnExisting made a new account

    def _settle_rollover(self, pending: keys.PrivateKey) -> None:
        """A rollover was left half done (the process died between writing the new key and
        swapping it in): keep whichever key the CA holds for our account."""
        saved = self.accounts.load_registration()
        try:
            found = self.account_of(pending)
        except (messages.Error, requests.RequestException, errors.Error) as error:
            raise AcmeFailure(
                f"cannot tell which account key the CA holds (a key rollover was "
                f"interrupted; both keys are kept): {error}"
            ) from None
        if found is not None and (saved is None or found == saved["uri"]):
            self.accounts.adopt_next_key(datetime.datetime.now(datetime.UTC))
            self._use_key(pending)
            log.warning("acme.account_key_rollover_completed", account=found)
        else:
            self.accounts.discard_next_key()
            log.warning("acme.account_key_rollover_abandoned", path=str(self.accounts.path))

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
        replaces: str | None = None,
    ) -> str:
        """Order (with `profile`, if one is named), answer the challenges, finalize,
        download: the full chain PEM. `replaces`: the ARI id of the certificate this one
        renews (certfiles.Facts.renewal_id).

        The responder is opened only if some name still needs validating: when the CA
        still trusts earlier validations, no port is bound, no file or record is written.
        Every challenge is published before the CA is told to look at any: DNS-01 waits
        once for all its records (a wildcard and its base name share one)."""
        self._check_profile(profile)
        csr = crypto_util.make_csr(key_pem, domains)
        order = self.new_order(csr, replaces, profile)
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

    def new_order(
        self, csr_pem: bytes, replaces: str | None = None, profile: str = ""
    ) -> messages.OrderResource:
        """The order, saying which certificate it replaces if the CA speaks ARI. A CA
        that refuses the replacement (already replaced, not ours, unknown) is asked once
        more without it: a renewal must not fail over a hint."""
        if replaces is not None and not self.offers("renewalInfo"):
            replaces = None
        try:
            return with_nonce_retries(lambda: self._post_order(csr_pem, replaces, profile))
        except (messages.Error, errors.ConflictError) as error:
            problem = self.net.refusal(error)
            if replaces is None or (problem is not None and problem.code in NOT_ABOUT_REPLACES):
                raise
            log.warning(
                "acme.replaces_refused",
                replaces=replaces,
                problem=problem.typ if problem else "409 conflict",
                detail=(problem.detail if problem else "") or "",
            )
        return with_nonce_retries(lambda: self._post_order(csr_pem, None, profile))

    def offers(self, resource: str) -> bool:
        return isinstance(self.client.directory.to_partial_json().get(resource), str)

    def _post_order(
        self, csr_pem: bytes, replaces: str | None, profile: str
    ) -> messages.OrderResource:
        response = self._post(
            self.client.directory["newOrder"],
            order_request(csr_pem, replaces=replaces, profile=profile or None),
        )
        echoed = response.json().get("replaces")
        body = messages.Order.from_json(response.json())
        uri = response.headers.get("Location")
        log.info("acme.order_created", order=uri or "", replaces=echoed or "")
        return messages.OrderResource(
            body=body,
            uri=uri,
            authorizations=[self._authorization(url) for url in body.authorizations],
            csr_pem=csr_pem,
        )

    def _authorization(self, url: str) -> messages.AuthorizationResource:
        body = with_nonce_retries(lambda: self._post(url, None)).json()
        return messages.AuthorizationResource(body=messages.Authorization.from_json(body), uri=url)

    def _post(self, url: str, payload: jose.JSONDeSerializable | None) -> requests.Response:
        return self.net.post(url, payload, new_nonce_url=self.client.directory["newNonce"])

    def revoke(self, certificate: x509.Certificate, reason: int) -> None:
        """Revoke with the account key (RFC 8555 section 7.6), `reason` an RFC 5280 code;
        messages.Error if refused."""
        self.register()
        with_nonce_retries(lambda: self.client.revoke(certificate, reason))

    def roll_over(self) -> str:
        """Replace the account key by a new one (RFC 8555 section 7.3.5); the account URI.

        The new key is on disk (`key.next.pem`) before the CA is asked, and becomes
        `key.pem` only after it said yes; a run that dies in between is settled by the
        next (`_settle_rollover`). A refusal forgets the new key; a request whose answer
        was lost keeps both for the next run to settle."""
        uri = self.register()
        if not self.offers("keyChange"):
            raise AcmeFailure(
                "the CA offers no keyChange: it cannot roll over keys", retryable=False
            )
        url = self.client.directory["keyChange"]
        new_key = keys.generate(keys.key_type_of(self.account_key))
        self.accounts.write_next_key(new_key)
        failpoint("acme.rollover_key_written")
        new_jwk, new_algorithm = keys.account_jwk(new_key)
        payload = json.dumps({"account": uri, "oldKey": self.jwk.public_key().to_json()})
        # Signed by the new key, with its JWK and the same url as the outer request, and no
        # nonce (section 7.3.5); the outer request is an ordinary POST by the old key.
        inner = jws.JWS.sign(payload.encode(), key=new_jwk, alg=new_algorithm, nonce=None, url=url)
        try:
            with_nonce_retries(lambda: self._post(url, inner))
        except CA_ERRORS as error:
            refusal = self.net.refusal(error)
            # A "no" keeps the old key; a CA that failed inside may have made the change,
            # so both keys stay for the next run to settle.
            if refusal is not None and refusal.code != "serverInternal":
                self.accounts.discard_next_key()
            raise
        failpoint("acme.rollover_accepted")
        self.accounts.adopt_next_key(datetime.datetime.now(datetime.UTC))
        self._use_key(new_key)
        log.info("acme.account_key_rolled_over", account=uri)
        return uri

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
