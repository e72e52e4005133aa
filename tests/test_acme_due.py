"""When a certificate is due: the pure decision, and ARI from a CA that offers it.

Pebble 2.4 (Debian) has no ARI and issues 5-year certificates, so renewal windows and
short-lived certificates are tested here: the decision directly, and ARI against a test
ACME directory of our own that serves just the directory and renewalInfo documents."""

from __future__ import annotations

import datetime
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from acme import client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from aistack.acme import ari, certfiles, keys
from aistack.acme.due import JITTER_SHARE, decide, renewal_time
from aistack.acme.renew import renew
from aistack.config import validate_config
from tests.pebble import free_port

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def issue(
    directory: Path,
    lifetime: datetime.timedelta,
    age: datetime.timedelta,
    domains: tuple[str, ...] = ("example.org",),
    key_type: str = "ec256",
    serial: int | None = None,
    authority_key_id: str = "key",
) -> certfiles.Installed:
    """A CA-signed certificate (with the Authority Key Identifier ARI needs), installed.
    `authority_key_id`: "key" (a key identifier), "issuer" (the issuer's name and serial
    only), "none" (no such extension)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    key = keys.generate(key_type)
    start = NOW - age
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
        )
    )
    if authority_key_id == "key":
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    elif authority_key_id == "issuer":
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(None, [x509.DirectoryName(ca_name)], 1), critical=False
        )
    certificate = builder.sign(ca_key, hashes.SHA256())
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    certfiles.install(directory, domains[0], pem, keys.to_pem(key))
    installed = certfiles.read_installed(directory, domains[0])
    assert installed is not None
    return installed


def test_a_six_day_certificate_renews_with_a_third_of_its_life_left(tmp_path):
    installed = issue(tmp_path, lifetime=6 * DAY, age=3 * DAY)
    due = decide(installed, ["example.org"], "ec256", 30, NOW)
    assert not due.due
    assert due.renew_at is not None
    # renew_before_days=30 is capped at 2 days (a third of 6), minus up to 10% jitter.
    left = installed.not_after - due.renew_at
    assert 2 * DAY <= left <= 2 * DAY * (1 + JITTER_SHARE)
    later = decide(installed, ["example.org"], "ec256", 30, NOW + 1.5 * DAY)
    assert later.due and later.reason == "within the renewal period"


def test_a_90_day_certificate_renews_30_days_before_expiry(tmp_path):
    installed = issue(tmp_path, lifetime=90 * DAY, age=10 * DAY)
    due = decide(installed, ["example.org"], "ec256", 30, NOW)
    assert not due.due and due.renew_at is not None
    assert 30 * DAY <= installed.not_after - due.renew_at <= 33 * DAY


def test_the_jitter_is_fixed_per_certificate_and_spread_across_them(tmp_path):
    first = issue(tmp_path / "a", lifetime=90 * DAY, age=DAY)
    again = decide(first, ["example.org"], "ec256", 30, NOW).renew_at
    assert again == decide(first, ["example.org"], "ec256", 30, NOW + DAY).renew_at
    spread = {
        decide(
            issue(tmp_path / str(n), 90 * DAY, DAY), ["example.org"], "ec256", 30, NOW
        ).renew_at.timestamp()  # type: ignore[union-attr]
        - 0
        for n in range(5)
    }
    assert len(spread) == 5


@given(
    lifetime_hours=st.integers(1, 24 * 400),
    renew_before_days=st.integers(1, 365),
    jitter=st.floats(0, 1, exclude_max=True),
)
def test_renewal_time_is_inside_the_certificate_and_before_its_last_third(
    lifetime_hours, renew_before_days, jitter
):
    start = NOW
    end = NOW + datetime.timedelta(hours=lifetime_hours)
    at = renewal_time(start, end, renew_before_days, jitter)
    lifetime = end - start
    assert start < at < end
    assert end - at >= min(datetime.timedelta(days=renew_before_days), lifetime / 3)
    assert at - start >= lifetime * (2 / 3) * (1 - JITTER_SHARE) - datetime.timedelta(seconds=1)


def test_what_makes_a_certificate_due_at_once(tmp_path):
    installed = issue(tmp_path, lifetime=90 * DAY, age=DAY)
    assert decide(None, ["example.org"], "ec256", 30, NOW).reason == "no certificate installed"
    assert decide(installed, ["example.org"], "ec256", 30, NOW, force=True).reason == "forced"
    assert decide(installed, ["example.org"], "rsa2048", 30, NOW).reason == (
        "key type changed (ec256 -> rsa2048)"
    )
    assert decide(installed, ["example.org", "www.example.org"], "ec256", 30, NOW).due
    assert decide(installed, ["example.org"], "ec256", 30, NOW + 100 * DAY).reason == "expired"
    pem, key = certfiles.make_placeholder(["example.org"], "ec256")
    certfiles.install(tmp_path / "p", "example.org", pem, key)
    placeholder = certfiles.read_installed(tmp_path / "p", "example.org")
    assert decide(placeholder, ["example.org"], "ec256", 30, NOW).reason == (
        "only the placeholder is installed"
    )


class AriDirectory:
    """Serves an ACME directory that offers renewalInfo, and one renewal window, with an
    explanationURL, which pebble 2.6 never sends (tests/test_acme_ari.py has the real CA)."""

    def __init__(self, start: datetime.datetime, end: datetime.datetime) -> None:
        self.requests: list[str] = []
        window = {
            "suggestedWindow": {"start": start.isoformat(), "end": end.isoformat()},
            "explanationURL": "https://ca.example/incident-42",
        }
        directory_of = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                directory_of.requests.append(self.path)
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                if self.path == "/dir":
                    body = {
                        "newNonce": f"{base}/nonce",
                        "newAccount": f"{base}/account",
                        "newOrder": f"{base}/order",
                        "renewalInfo": f"{base}/renewal-info",
                    }
                elif self.path.startswith("/renewal-info/"):
                    body = window
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ari_config(tmp_path: Path, url: str):
    return validate_config(
        {
            "qdrant": {"path": str(tmp_path / "q")},
            "acme": {
                "domains": ["example.org"],
                "accept_terms": True,
                "directory_url": url,
                "cert_dir": str(tmp_path / "certs"),
                "state_dir": str(tmp_path / "state"),
                "challenge": "standalone",
                "http_address": f"127.0.0.1:{free_port()}",
            },
        }
    ).acme


def test_ari_window_is_read_and_moves_the_renewal(tmp_path, caplog):
    caplog.set_level(logging.INFO, "aistack.acme")
    now = datetime.datetime.now(datetime.UTC)
    server = AriDirectory(now + 5 * DAY, now + 6 * DAY)
    try:
        config = ari_config(tmp_path, server.url)
        installed = issue(Path(config.cert_dir), lifetime=90 * DAY, age=DAY)
        window = ari.renewal_window(config, installed.renewal_id)
        assert window == (now + 5 * DAY, now + 6 * DAY)
        # The id RFC 9773 names the certificate by, as the acme package computes it.
        certificate = installed.certificate()
        assert installed.renewal_id == ari.certificate_id(certificate)
        assert server.requests[-1] == "/renewal-info/" + ari.certificate_id(certificate)
        assert ari.certificate_id(certificate) == client._renewal_info_path_component(certificate)
        outcome = renew(config)
        assert outcome.action == "not-due"
        assert outcome.due.reason == "not due"
        assert outcome.due.renew_at is not None
        assert now + 5 * DAY <= outcome.due.renew_at <= now + 6 * DAY
        assert any(path.startswith("/renewal-info/") for path in server.requests)
        # The CA's reason for its window, for the operator to read in the journal.
        explained = [r for r in caplog.records if r.getMessage() == "acme.ari_explanation"]
        assert [getattr(r, "fields", {}) for r in explained][-1] == {
            "url": "https://ca.example/incident-42",
            "renewal_id": installed.renewal_id,
        }
    finally:
        server.close()


def test_an_open_ari_window_makes_the_certificate_due(tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    # The CA asks for renewal now (as after a mass revocation), 80 days before expiry.
    server = AriDirectory(now - DAY, now - datetime.timedelta(hours=1))
    try:
        config = ari_config(tmp_path, server.url)
        issue(Path(config.cert_dir), lifetime=90 * DAY, age=10 * DAY)
        outcome = renew(config)
        assert outcome.due.due
        assert outcome.due.reason == "inside the CA's renewal window (ARI)"
        # This directory cannot issue: the attempt fails and the old certificate stays.
        assert outcome.action == "failed"
        assert certfiles.read_installed(Path(config.cert_dir), "example.org") is not None
    finally:
        server.close()


def test_staging_uses_the_lets_encrypt_staging_directory(tmp_path):
    config = validate_config({"qdrant": {"path": str(tmp_path)}, "acme": {"staging": True}}).acme
    assert config.directory == "https://acme-staging-v02.api.letsencrypt.org/directory"
    plain = validate_config({"qdrant": {"path": str(tmp_path)}}).acme
    assert plain.directory == "https://acme-v02.api.letsencrypt.org/directory"


def test_retry_after_is_read_in_both_forms_and_lengthens_the_back_off():
    from email.utils import format_datetime

    from aistack.acme.protocol import _retry_after_seconds
    from aistack.acme.renew import backoff

    assert _retry_after_seconds("120") == 120.0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
    seconds = _retry_after_seconds(format_datetime(later, usegmt=True))
    assert seconds is not None and 3 * 3600 - 5 <= seconds <= 3 * 3600
    assert _retry_after_seconds("soon") is None and _retry_after_seconds(None) is None
    assert backoff(1, None) == datetime.timedelta(hours=1)
    assert backoff(3, None) == datetime.timedelta(hours=4)
    assert backoff(30, None) == datetime.timedelta(days=1)
    # A rate-limited CA saying "come back in 3 days" wins over our own schedule.
    assert backoff(1, 3 * 86400) == datetime.timedelta(days=3)


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 2**63, 2**158 + 1, 2**159 - 1])
def test_the_ari_certificate_id_is_the_one_the_acme_package_computes(tmp_path, serial):
    installed = issue(tmp_path, lifetime=90 * DAY, age=DAY, serial=serial)
    certificate = installed.certificate()
    assert certificate.serial_number == serial
    assert ari.certificate_id(certificate) == client._renewal_info_path_component(certificate)


def facts_kept(facts_file: Path) -> dict[str, object]:
    return json.loads(facts_file.read_text())


def test_the_facts_of_a_pair_are_kept_and_taken_back_for_the_same_files(tmp_path):
    facts_file = tmp_path / "state" / "example.org.installed.json"
    parsed = issue(tmp_path / "certs", lifetime=90 * DAY, age=DAY)
    assert certfiles.read_installed(tmp_path / "certs", "example.org", facts_file) == parsed
    assert facts_file.stat().st_mode & 0o777 == 0o600
    # Taken from the file, not parsed again: a fact changed there (digest kept) is believed.
    kept = facts_kept(facts_file)
    facts_file.write_text(json.dumps({**kept, "key_type": "rsa4096"}))
    again = certfiles.read_installed(tmp_path / "certs", "example.org", facts_file)
    assert again is not None and again.key_type == "rsa4096"
    # The right digest with facts missing: parsed again, and kept whole.
    facts_file.write_text(json.dumps({"digest": kept["digest"]}))
    assert certfiles.read_installed(tmp_path / "certs", "example.org", facts_file) == parsed
    assert facts_kept(facts_file) == kept


def test_a_pair_that_is_not_the_one_the_facts_were_read_from_is_parsed_again(tmp_path):
    facts_file = tmp_path / "state" / "example.org.installed.json"
    issue(tmp_path / "certs", lifetime=90 * DAY, age=DAY)
    certfiles.read_installed(tmp_path / "certs", "example.org", facts_file)
    # Renewed by someone else (another tool, a restore from backup): other files.
    replaced = issue(tmp_path / "certs", lifetime=6 * DAY, age=DAY, key_type="ec384")
    found = certfiles.read_installed(tmp_path / "certs", "example.org", facts_file)
    assert found == replaced and found.key_type == "ec384"
    assert facts_kept(facts_file)["serial_number"] == replaced.serial_number


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[]", b'{"digest": "x"}', b"\xff\xfe"], ids=repr
)
def test_an_unreadable_facts_file_is_replaced_by_what_the_pair_says(tmp_path, content):
    facts_file = tmp_path / "state" / "example.org.installed.json"
    parsed = issue(tmp_path / "certs", lifetime=90 * DAY, age=DAY)
    facts_file.parent.mkdir()
    facts_file.write_bytes(content)
    assert certfiles.read_installed(tmp_path / "certs", "example.org", facts_file) == parsed
    assert facts_kept(facts_file)["serial_number"] == parsed.serial_number


def test_facts_that_cannot_be_kept_are_read_from_the_pair_every_time(tmp_path):
    (tmp_path / "state").write_text("a file where the state directory should be")
    facts_file = tmp_path / "state" / "example.org.installed.json"
    parsed = issue(tmp_path / "certs", lifetime=90 * DAY, age=DAY)
    for _ in range(2):
        assert certfiles.read_installed(tmp_path / "certs", "example.org", facts_file) == parsed


@pytest.mark.parametrize("authority_key_id", ["none", "issuer"])
def test_a_certificate_without_an_authority_key_id_is_judged_by_its_lifetime_alone(
    tmp_path, authority_key_id
):
    now = datetime.datetime.now(datetime.UTC)
    server = AriDirectory(now - DAY, now - datetime.timedelta(hours=1))
    try:
        config = ari_config(tmp_path, server.url)
        cert_dir = Path(config.cert_dir)
        installed = issue(cert_dir, 90 * DAY, DAY, authority_key_id=authority_key_id)
        assert installed.renewal_id is None
        assert ari.renewal_window(config, None) is None
        outcome = renew(config)
        # RFC 9773 names a certificate by its authority key id: without one, nothing to ask.
        assert outcome.action == "not-due" and outcome.due.reason == "not due"
        assert server.requests == []
    finally:
        server.close()
