"""`aistack acme` against a real pebble with pebble-challtestsrv, started by the tests."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from aistack.acme import certfiles
from aistack.acme.renew import CertificateState, renew, state_path
from aistack.config import AcmeConfig, validate_config
from tests.pebble import Pebble, ari_pebble, free_port, running_pebble

DOMAIN = "www.aistack.test"


@pytest.fixture(scope="module", params=["2.4", "2.6"])
def pebble(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Pebble]:
    """Debian bookworm's pebble 2.4 and trixie's 2.6 (which serves ARI): every test that
    takes this fixture runs against both."""
    binary = ari_pebble() if request.param == "2.6" else "pebble"
    yield from running_pebble(tmp_path_factory.mktemp(f"pebble-{request.param}"), binary=binary)


def acme_settings(tmp_path: Path, pebble: Pebble, **overrides: object) -> dict[str, object]:
    return {
        "domains": [DOMAIN, "aistack.test"],
        "email": "admin@aistack.test",
        **pebble.acme_settings(tmp_path),
        "webroot": str(tmp_path / "webroot"),
        **overrides,
    }


def acme_config(tmp_path: Path, pebble: Pebble, **overrides: object) -> AcmeConfig:
    data = {
        "qdrant": {"path": str(tmp_path / "q")},
        "acme": acme_settings(tmp_path, pebble, **overrides),
    }
    return validate_config(data).acme


def config_file(tmp_path: Path, pebble: Pebble, gateway: dict | None = None, **overrides) -> Path:
    path = tmp_path / f"aistack-{len(list(tmp_path.glob('aistack-*.json')))}.json"
    data = {
        "qdrant": {"path": str(tmp_path / f"qdrant-{path.stem}")},
        "postgres": {"dsn": "postgresql://postgres@127.0.0.1:9/aistack"},
        "acme": acme_settings(tmp_path, pebble, **overrides),
    }
    if gateway:
        data["gateway"] = gateway
    path.write_text(json.dumps(data))
    return path


def aistack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def live(config: AcmeConfig) -> Path:
    return Path(config.cert_dir) / config.certificate_name


def leaf(config: AcmeConfig) -> x509.Certificate:
    return x509.load_pem_x509_certificate((live(config) / "cert.pem").read_bytes())


def assert_verifies(config: AcmeConfig, pebble: Pebble, domain: str = DOMAIN) -> None:
    chain = x509.load_pem_x509_certificates((live(config) / "fullchain.pem").read_bytes())
    store = verification.Store(pebble.issuing_roots())
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(domain))
    verifier.verify(chain[0], chain[1:])


def assert_pair_matches(directory: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    assert certificate.public_key() == key.public_key()
    full = (directory / "fullchain.pem").read_text()
    assert full == (directory / "cert.pem").read_text() + (directory / "chain.pem").read_text()


# -- issuance -------------------------------------------------------------------------


def test_standalone_issues_a_verifying_certificate_then_does_nothing(tmp_path, pebble):
    config = acme_config(tmp_path, pebble)
    outcome = renew(config)
    assert outcome.action == "renewed" and outcome.changed
    assert_verifies(config, pebble)
    assert_verifies(config, pebble, "aistack.test")
    assert_pair_matches(live(config))
    modes = {f.name: f.stat().st_mode & 0o777 for f in live(config).iterdir()}
    assert modes == {
        "fullchain.pem": 0o644,
        "chain.pem": 0o644,
        "cert.pem": 0o644,
        # Group-readable, for the web server in the certificate's group; no one else.
        "key.pem": 0o640,
    }
    assert isinstance(leaf(config).public_key(), ec.EllipticCurvePublicKey)
    serial = leaf(config).serial_number

    again = renew(config)
    assert again.action == "not-due" and not again.changed
    assert leaf(config).serial_number == serial
    assert again.due.renew_at is not None


def test_cli_renew_force_and_status(tmp_path, pebble):
    config_path = config_file(tmp_path, pebble)
    metrics = tmp_path / "textfile" / "aistack-acme.prom"
    first = aistack("acme", "renew", "--config", str(config_path), "--metrics-file", str(metrics))
    assert first.returncode == 0, first.stderr
    assert first.stdout == "changed www.aistack.test\n"
    assert "event=acme.renewed" in first.stderr
    config = acme_config(tmp_path, pebble)
    serial = leaf(config).serial_number
    text = metrics.read_text()
    expiry = leaf(config).not_valid_after_utc.timestamp()
    assert metric_value(text, "aistack_acme_certificate_expiry_timestamp_seconds") == expiry
    assert 'aistack_acme_renewal_failures_total{certificate="www.aistack.test"} 0.0' in text

    nothing = aistack("acme", "renew", "--config", str(config_path))
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert "not-due" in nothing.stderr

    forced = aistack("acme", "renew", "--config", str(config_path), "--force")
    assert forced.returncode == 0 and forced.stdout == "changed www.aistack.test\n"
    assert leaf(config).serial_number != serial

    status = aistack("acme", "status", "--config", str(config_path), "--json")
    assert status.returncode == 0
    [data] = json.loads(status.stdout)
    assert data["certificate"] == "www.aistack.test"
    assert data["renewals_total"] == 2 and data["failures_total"] == 0
    assert data["placeholder"] is False and data["last_error"] is None


def test_webroot_served_by_the_gateway_and_sighup_serves_the_new_certificate(tmp_path, pebble):
    from tests.test_cli_gateway import Gateway

    config = acme_config(tmp_path, pebble, challenge="webroot")
    acme_path = config_file(tmp_path, pebble, challenge="webroot")
    # Before the first issuance: a placeholder, so a TLS server can start at all.
    made = aistack("acme", "placeholder", "--config", str(acme_path))
    assert made.returncode == 0, made.stderr
    installed = certfiles.read_installed(Path(config.cert_dir), config.certificate_name)
    assert installed is not None and installed.placeholder

    http = config_file(
        tmp_path, pebble, gateway={"listen": [pebble.http_address], "acme_webroot": config.webroot}
    )
    tls_port = free_port()
    tls = config_file(
        tmp_path,
        pebble,
        gateway={
            "listen": [f"127.0.0.1:{tls_port}"],
            "tls_cert_file": str(live(config) / "fullchain.pem"),
            "tls_key_file": str(live(config) / "key.pem"),
        },
    )
    (tmp_path / "http").mkdir()
    (tmp_path / "tls").mkdir()
    challenge_server = Gateway(http, tmp_path / "http")
    tls_server = Gateway(tls, tmp_path / "tls")
    try:
        challenge_server.wait_ready()
        tls_server.wait_ready()
        assert "aistack placeholder" in served_subject(tls_port)

        assert renew(config).action == "renewed"
        assert list((Path(config.webroot) / ".well-known" / "acme-challenge").iterdir()) == []
        tls_server.process.send_signal(signal.SIGHUP)
        first = wait_for_serial(tls_port, leaf(config).serial_number)

        assert renew(config, force=True).action == "renewed"
        assert leaf(config).serial_number != first
        tls_server.process.send_signal(signal.SIGHUP)
        wait_for_serial(tls_port, leaf(config).serial_number)
    finally:
        challenge_server.stop()
        tls_server.stop()
    assert "event=gateway.tls_reloaded" in tls_server.output()


def served_certificate(port: int) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=DOMAIN) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_subject(port: int) -> str:
    return served_certificate(port).subject.rfc4514_string()


def wait_for_serial(port: int, serial: int) -> int:
    import time

    deadline = time.monotonic() + 10
    while served_certificate(port).serial_number != serial:
        assert time.monotonic() < deadline, "the gateway did not pick up the new certificate"
        time.sleep(0.1)
    return serial


# -- account and keys -----------------------------------------------------------------


def test_the_account_is_reused_and_found_again(tmp_path, pebble):
    config = acme_config(tmp_path, pebble)
    renew(config)
    accounts = list((Path(config.state_dir) / "accounts").iterdir())
    assert len(accounts) == 1
    key_file = accounts[0] / "key.pem"
    registration = json.loads((accounts[0] / "registration.json").read_text())
    assert key_file.stat().st_mode & 0o777 == 0o600
    renew(config, force=True)
    assert json.loads((accounts[0] / "registration.json").read_text()) == registration
    # Registration lost, key kept: the CA knows the key, and the same account comes back.
    (accounts[0] / "registration.json").unlink()
    renew(config, force=True)
    again = json.loads((accounts[0] / "registration.json").read_text())
    assert again["uri"] == registration["uri"]
    # A new e-mail updates the account instead of making another.
    changed = acme_config(tmp_path, pebble, email="ops@aistack.test")
    assert renew(changed, force=True).action == "renewed"
    final = json.loads((accounts[0] / "registration.json").read_text())
    assert final == {"uri": registration["uri"], "email": "ops@aistack.test"}


def test_terms_must_be_accepted(tmp_path, pebble):
    config = acme_config(tmp_path, pebble, accept_terms=False)
    outcome = renew(config)
    assert outcome.action == "failed"
    assert "acme.accept_terms is false" in (outcome.error or "")
    installed = certfiles.read_installed(Path(config.cert_dir), config.certificate_name)
    assert installed is not None and installed.placeholder


def test_a_changed_key_type_brings_a_new_certificate(tmp_path, pebble):
    renew(acme_config(tmp_path, pebble))
    config = acme_config(tmp_path, pebble, key_type="rsa2048")
    outcome = renew(config)
    assert outcome.action == "renewed"
    assert outcome.due.reason == "key type changed (ec256 -> rsa2048)"
    assert isinstance(leaf(config).public_key(), rsa.RSAPublicKey)
    assert_pair_matches(live(config))
    assert renew(config).action == "not-due"


# -- faults ---------------------------------------------------------------------------


def test_rejected_nonces_are_survived(tmp_path_factory, tmp_path):
    # A third of all nonces refused: the library retries once, we retry each step more.
    for server in running_pebble(tmp_path_factory.mktemp("nonces"), nonce_reject_percent=30):
        config = acme_config(tmp_path, server)
        assert renew(config).action == "renewed"
        assert renew(config, force=True).action == "renewed"
        assert_verifies(config, server)


@pytest.fixture
def pebble_without_reuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """Pebble validating every order afresh (by default it reuses half of the valid
    authorizations, which would let a renewal pass without any validation)."""
    yield from running_pebble(tmp_path_factory.mktemp("no-reuse"), authz_reuse_percent=0)


def test_failed_validation_keeps_the_old_certificate_and_counts(tmp_path, pebble_without_reuse):
    pebble = pebble_without_reuse
    config = acme_config(tmp_path, pebble)
    renew(config)
    before = {f.name: f.read_bytes() for f in live(config).iterdir()}
    # Answer on a port pebble does not look at: the validation fails.
    unreachable = acme_config(tmp_path, pebble, http_address=f"127.0.0.1:{free_port()}")
    path = config_file(tmp_path, pebble, http_address=unreachable.http_address)
    result = aistack("acme", "renew", "--config", str(path), "--force")
    assert result.returncode == 1
    assert "failed" in result.stderr and "validation of" in result.stderr
    assert "<3>event=acme.renewal_failed" in result.stderr or "ERROR" in result.stderr
    assert {f.name: f.read_bytes() for f in live(config).iterdir()} == before
    state = CertificateState.load(state_path(config))
    assert state.failures_total == 1 and state.consecutive_failures == 1
    assert state.last_error is not None
    assert state.last_error["problem"]["type"].startswith("urn:ietf:params:acme:error:")
    status = aistack("acme", "status", "--config", str(path))
    assert "last error" in status.stdout and "validation of" in status.stdout
    # Not forced, the next run waits out the back-off instead of hammering the CA.
    waiting = renew(unreachable)
    assert waiting.action in ("waiting", "not-due")


def test_ca_down_keeps_the_old_certificate(tmp_path, pebble):
    config = acme_config(tmp_path, pebble)
    renew(config)
    serial = leaf(config).serial_number
    down = acme_config(tmp_path, pebble, directory_url=f"https://127.0.0.1:{free_port()}/dir")
    metrics = tmp_path / "acme.prom"
    path = config_file(tmp_path, pebble, directory_url=down.directory_url)
    result = aistack(
        "acme", "renew", "--config", str(path), "--force", "--metrics-file", str(metrics)
    )
    assert result.returncode == 1
    assert "cannot reach the ACME directory" in result.stderr
    assert leaf(config).serial_number == serial
    assert (
        'aistack_acme_renewal_failures_total{certificate="www.aistack.test"} 1.0'
        in metrics.read_text()
    )
    # Nothing due and the CA away: not a failure.
    quiet = aistack("acme", "renew", "--config", str(path))
    assert quiet.returncode == 0 and "not-due" in quiet.stderr


def test_killed_mid_install_leaves_the_old_pair(tmp_path, pebble):
    config = acme_config(tmp_path, pebble)
    renew(config)
    before = {f.name: f.read_bytes() for f in live(config).iterdir()}
    path = config_file(tmp_path, pebble)
    killed = aistack(
        "acme", "renew", "--config", str(path), "--force",
        env={"AISTACK_FAILPOINTS": "acme.install_half_written"},
    )  # fmt: skip
    assert killed.returncode == -9
    assert {f.name: f.read_bytes() for f in live(config).iterdir()} == before
    assert_pair_matches(live(config))
    # The next run installs a complete new pair over the debris.
    assert aistack("acme", "renew", "--config", str(path), "--force").returncode == 0
    assert_pair_matches(live(config))
    assert {f.name: f.read_bytes() for f in live(config).iterdir()} != before


def test_standalone_port_taken_is_a_clear_failure(tmp_path, pebble):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = acme_config(tmp_path, pebble, http_address=f"127.0.0.1:{taken.getsockname()[1]}")
        outcome = renew(config)
    assert outcome.action == "failed"
    assert "cannot listen on acme.http_address" in (outcome.error or "")


def test_no_domains_is_a_usage_error(tmp_path, pebble):
    path = config_file(tmp_path, pebble, domains=[])
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 2 and "acme.domains is empty" in result.stderr


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("example.org\n", r"acme.domains.0: 'example.org\n' is not a DNS name"),
        ("\u212aexample.org", r"acme.domains.0: '\u212aexample.org' holds non-ASCII characters"),
        ("127.0.0.1", "acme.domains.0: '127.0.0.1' is an IP address, not a DNS name"),
        ("*.example.org", "acme.domains.0: '*.example.org' is a wildcard, and only DNS-01"),
    ],
)
def test_placeholder_refuses_a_bad_domain_and_creates_nothing(tmp_path, domain, message):
    path = tmp_path / "aistack.json"
    acme = {
        "domains": [domain],
        "cert_dir": str(tmp_path / "certs"),
        "state_dir": str(tmp_path / "state"),
        "webroot": str(tmp_path / "webroot"),
    }
    path.write_text(json.dumps({"qdrant": {"path": str(tmp_path / "q")}, "acme": acme}))
    result = aistack("acme", "placeholder", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(tmp_path.iterdir()) == [path]


def test_expiry_metric_is_zero_for_the_placeholder(tmp_path, pebble):
    path = config_file(tmp_path, pebble)
    metrics = tmp_path / "acme.prom"
    aistack("acme", "placeholder", "--config", str(path))
    status = aistack("acme", "status", "--config", str(path), "--metrics-file", str(metrics))
    assert status.returncode == 0 and "installed: placeholder" in status.stdout
    text = metrics.read_text()
    assert (
        'aistack_acme_certificate_expiry_timestamp_seconds{certificate="www.aistack.test"} 0.0'
        in text
    )
    assert 'aistack_acme_placeholder{certificate="www.aistack.test"} 1.0' in text


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {text}")


def test_external_account_binding(tmp_path_factory, tmp_path):
    hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    for server in running_pebble(tmp_path_factory.mktemp("eab"), eab_keys={"kid-1": hmac_key}):
        refused = renew(acme_config(tmp_path / "without", server))
        assert refused.action == "failed"
        assert "externalAccountBinding" in (refused.error or "")
        secret = tmp_path / "eab-hmac"
        secret.write_text(hmac_key + "\n")
        config = acme_config(
            tmp_path / "with", server, eab_kid="kid-1", eab_hmac_key_file=str(secret)
        )
        assert renew(config).action == "renewed"
        assert_verifies(config, server)


def test_a_short_lived_certificate_from_pebble_is_not_renewed_too_early(tmp_path_factory, tmp_path):
    # Six-day certificates, as Let's Encrypt now offers: renewal at a third of the
    # lifetime left, not "30 days before", which would renew on every run.
    for server in running_pebble(tmp_path_factory.mktemp("short"), validity_seconds=6 * 86400):
        config = acme_config(tmp_path, server)
        assert renew(config).action == "renewed"
        lifetime = leaf(config).not_valid_after_utc - leaf(config).not_valid_before_utc
        assert lifetime.days in (5, 6)
        again = renew(config)
        assert again.action == "not-due"
        assert again.due.renew_at is not None
        left = leaf(config).not_valid_after_utc - again.due.renew_at
        assert lifetime / 3 <= left <= lifetime / 3 * 1.1 + datetime.timedelta(seconds=1)


def test_reload_runs_only_after_a_change(tmp_path, pebble):
    # No systemd here: a stand-in systemctl on PATH records what it was asked to do.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl-calls"
    stand_in = bin_dir / "systemctl"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit "${{SYSTEMCTL_EXIT:-0}}"\n')
    stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    path = config_file(tmp_path, pebble)
    reload = ("acme", "reload", "--config", str(path), "nginx.service")

    assert aistack(*reload, env=env).returncode == 0
    assert not calls.exists()  # nothing issued yet, nothing changed
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    failing = aistack(*reload, env={**env, "SYSTEMCTL_EXIT": "1"})
    assert failing.returncode == 1 and "try-reload-or-restart failed" in failing.stderr
    done = aistack(*reload, env=env)
    assert done.returncode == 0 and "reloaded nginx.service" in done.stderr
    assert calls.read_text().splitlines() == ["try-reload-or-restart nginx.service"] * 2
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0  # not due
    assert aistack(*reload, env=env).returncode == 0
    assert len(calls.read_text().splitlines()) == 2
