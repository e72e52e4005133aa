"""`aistack acme renew` with certbot's flags (--domain, --email, --staging, --webroot,
--agree-tos, --server), on top of a configuration file or without one, against a real
pebble; the webroot is served by Python's own http.server on pebble's HTTP-01 port."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from aistack.config import parse_listen_address
from tests.test_acme import DOMAIN, aistack, config_file, pebble

__all__ = ["pebble"]  # the module's pebble, a fixture


def names_of(certificate_dir: Path) -> list[str]:
    leaf = x509.load_pem_x509_certificate((certificate_dir / "cert.pem").read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def webroot(tmp_path, pebble) -> Iterator[Path]:
    """A directory served over HTTP where pebble validates HTTP-01."""
    directory = tmp_path / "webroot"
    directory.mkdir()
    host, port = parse_listen_address(pebble.http_address)
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield directory
    server.shutdown()
    server.server_close()


def test_flags_on_top_of_a_configuration_file(tmp_path, pebble):
    path = config_file(tmp_path, pebble)  # domains www.aistack.test, aistack.test
    result = aistack(
        "acme", "renew", "--config", str(path), "--domain", "only.aistack.test",
        "--email", "other@aistack.test",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "changed only.aistack.test\n"
    assert names_of(tmp_path / "certs" / "only.aistack.test") == ["only.aistack.test"]


def test_the_roadmaps_one_liner_without_a_configuration_file(tmp_path, pebble, webroot):
    certs, state = tmp_path / "certs", tmp_path / "state"
    result = aistack(
        "acme", "renew", "--domain", DOMAIN, "--domain", "aistack.test",
        "--email", "admin@aistack.test", "--agree-tos", "--webroot", str(webroot),
        "--server", pebble.directory_url, "--cert-dir", str(certs), "--state-dir", str(state),
        env={"REQUESTS_CA_BUNDLE": str(pebble.ca_file)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"changed {DOMAIN}\n"
    assert names_of(certs / DOMAIN) == ["aistack.test", DOMAIN]
    tokens = [path for path in webroot.rglob("*") if path.is_file()]
    assert not tokens, "the challenge tokens are left in the webroot"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--domain", "*.example.org"], "--domain: "),
        (["--domain", "example.org", "--email", "not-an-address"], "--email: "),
        (["--domain", "example.org", "--server", "ftp://ca.example"], "--server: "),
        (["--email", "admin@example.org"], "acme.certificates names none"),
    ],
)
def test_a_bad_flag_is_a_usage_error_and_creates_nothing(tmp_path, flags, message):
    certs, state = tmp_path / "certs", tmp_path / "state"
    result = aistack("acme", "renew", *flags, "--cert-dir", str(certs), "--state-dir", str(state))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not certs.exists() and not state.exists()


def test_webroot_and_deploy_hook_flags_apply_to_every_certificate(tmp_path, pebble, webroot):
    # `api` binds pebble's HTTP port itself by its own settings, where the webroot's server
    # already listens: only --webroot makes it answer from the webroot instead.
    api = {"domains": ["api.aistack.test"], "challenge": "standalone"}
    path = config_file(tmp_path, pebble, certificates={"api": api})
    hooked = tmp_path / "hooked"
    flags = ("--webroot", str(webroot), "--deploy-hook", f'echo "$AISTACK_CERTIFICATE" >> {hooked}')
    result = aistack("acme", "renew", "--config", str(path), *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"changed {DOMAIN}", "changed api"]
    assert hooked.read_text().splitlines() == [DOMAIN, "api"]


def test_a_flag_that_does_not_fit_a_certificate_is_a_usage_error(tmp_path, pebble):
    wildcard = {
        "domains": ["*.aistack.test"],
        "challenge": "dns-01",
        "dns": {"provider": "exec", "command": "/bin/true"},
    }
    path = config_file(tmp_path, pebble, certificates={"wild": wildcard})
    result = aistack("acme", "renew", "--config", str(path), "--webroot", str(tmp_path))
    assert result.returncode == 2
    assert "aistack: wild: '*.aistack.test' is a wildcard, and only DNS-01" in result.stderr
    assert not (tmp_path / "certs").exists()
