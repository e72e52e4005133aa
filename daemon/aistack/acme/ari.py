"""The CA's suggested renewal window (ARI, RFC 9773), read with the standard library.

A renewal that is not due, which is every run but a few a year, asks the CA one thing:
whether it wants the certificate renewed early. That is two unauthenticated GETs (the
directory, then `renewalInfo/<certificate id>`), written here with urllib: the `acme`
package and `requests` that an order needs cost a not-due run 0.15 s of imports, most of
its time (measured with `python -X importtime`). Trust is the same as for an order: the
configured `ca_bundle`, else certifi's bundle, which is what requests verifies with.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import urllib.request
from typing import TYPE_CHECKING, Any

from aistack import __version__
from aistack.errors import Failure
from aistack.observability.logs import EventLog

if TYPE_CHECKING:
    from cryptography import x509

    from aistack.config import AcmeConfig

log = EventLog("acme")
TIMEOUT_SECONDS = 30
Window = tuple[datetime.datetime, datetime.datetime]


class DirectoryUnreachable(Failure):
    """The ACME directory did not answer with a directory."""


def renewal_window(config: AcmeConfig, renewal_id: str | None) -> Window | None:
    """The window the CA suggests for the certificate `renewal_id` names (`certificate_id`),
    or None when it has no id, the directory offers no `renewalInfo` or the renewal info
    cannot be read (then the certificate's own lifetime decides). DirectoryUnreachable when
    the directory itself cannot be read."""
    if renewal_id is None:
        return None
    context = tls_context(config)
    try:
        directory = get_json(config.directory, context)
    except (OSError, ValueError) as error:
        raise DirectoryUnreachable(
            f"cannot reach the ACME directory {config.directory}: {error}"
        ) from None
    base = directory.get("renewalInfo") if isinstance(directory, dict) else None
    if not isinstance(base, str):
        return None
    url = base.rstrip("/") + "/" + renewal_id
    try:
        info = get_json(url, context)
        window = info["suggestedWindow"]
        start, end = parse_time(window["start"]), parse_time(window["end"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("acme.ari_unavailable", url=url)
        return None
    if isinstance(info.get("explanationURL"), str):
        log.info("acme.ari_explanation", url=info["explanationURL"], renewal_id=renewal_id)
    return start, end


def certificate_id(certificate: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(authority key identifier) "." base64url(serial),
    the serial as the bytes of its DER INTEGER (a leading zero byte when the top bit is set).
    x509.ExtensionNotFound or ValueError when it has no authority key identifier."""
    from cryptography import x509

    identifier = certificate.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier
    if identifier is None:
        raise ValueError("the certificate's authority key identifier has no key identifier")
    serial = certificate.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{_b64(identifier)}.{_b64(serial_bytes)}"


def tls_context(config: AcmeConfig) -> ssl.SSLContext:
    if config.ca_bundle:
        return ssl.create_default_context(cafile=config.ca_bundle)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def get_json(url: str, context: ssl.SSLContext) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": f"aistack/{__version__}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as answer:
        return json.loads(answer.read(1 << 20))


def parse_time(text: str) -> datetime.datetime:
    stamp = datetime.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return stamp


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
