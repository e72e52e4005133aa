"""Several certificates (`acme.certificates.<name>`) against a real pebble: each with its
own files, state, status, metrics, due time and back-off, one account for all."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.test_acme import DOMAIN, aistack, config_file, pebble

__all__ = ["pebble"]  # the module's pebble, a fixture

CERTIFICATES = {
    "api": {"domains": ["api.aistack.test"], "key_type": "rsa2048"},
    "grafana": {"domains": ["grafana.aistack.test", "metrics.aistack.test"]},
}


def leaf_of(tmp_path: Path, name: str) -> x509.Certificate:
    path = tmp_path / "certs" / name / "cert.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def names_on(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


def test_every_certificate_is_issued_with_its_own_settings_then_none_is_due(tmp_path, pebble):
    path = config_file(tmp_path, pebble, certificates=CERTIFICATES)
    metrics = tmp_path / "acme.prom"
    first = aistack("acme", "renew", "--config", str(path), "--metrics-file", str(metrics))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"changed {DOMAIN}", "changed api", "changed grafana"]
    assert names_on(leaf_of(tmp_path, DOMAIN)) == ["aistack.test", DOMAIN]
    assert names_on(leaf_of(tmp_path, "api")) == ["api.aistack.test"]
    assert isinstance(leaf_of(tmp_path, "api").public_key(), rsa.RSAPublicKey)
    assert names_on(leaf_of(tmp_path, "grafana")) == [
        "grafana.aistack.test",
        "metrics.aistack.test",
    ]
    # One account for all of them.
    assert len(list((tmp_path / "state" / "accounts").iterdir())) == 1
    text = metrics.read_text()
    for name in (DOMAIN, "api", "grafana"):
        assert f'aistack_acme_renewals_total{{certificate="{name}"}} 1.0' in text

    again = aistack("acme", "renew", "--config", str(path))
    assert again.returncode == 0 and again.stdout == ""
    assert [line.split()[:2] for line in again.stderr.splitlines() if "not-due" in line] == [
        [DOMAIN, "not-due"],
        ["api", "not-due"],
        ["grafana", "not-due"],
    ]
    status = aistack("acme", "status", "--config", str(path), "--json")
    listed = {entry["certificate"]: entry for entry in json.loads(status.stdout)}
    assert sorted(listed) == sorted([DOMAIN, "api", "grafana"])
    assert listed["grafana"]["domains"] == ["grafana.aistack.test", "metrics.aistack.test"]
    assert all(entry["renewals_total"] == 1 for entry in listed.values())


def test_one_failing_certificate_leaves_the_others_renewed_and_backs_off_alone(tmp_path, pebble):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    broken = {"domains": ["broken.aistack.test"], "http_address": f"127.0.0.1:{port}"}
    path = config_file(tmp_path, pebble, certificates={**CERTIFICATES, "broken": broken})
    try:
        result = aistack("acme", "renew", "--config", str(path))
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"changed {DOMAIN}", "changed api", "changed grafana"]
    assert f"cannot listen on acme.http_address 127.0.0.1:{port}" in result.stderr
    assert (tmp_path / "certs" / "broken").is_symlink()  # the placeholder still stands
    status = aistack("acme", "status", "--config", str(path), "--json")
    listed = {entry["certificate"]: entry for entry in json.loads(status.stdout)}
    assert listed["broken"]["failures_total"] == 1 and listed["broken"]["placeholder"]
    assert listed["broken"]["next_attempt"] is not None
    assert all(listed[name]["failures_total"] == 0 for name in (DOMAIN, "api", "grafana"))

    again = aistack("acme", "renew", "--config", str(path))
    assert again.returncode == 1 and again.stdout == ""
    assert "broken waiting" in again.stderr and "api not-due" in again.stderr


def test_cert_name_picks_certificates_and_an_unknown_one_changes_nothing(tmp_path, pebble):
    path = config_file(tmp_path, pebble, certificates=CERTIFICATES)
    unknown = aistack("acme", "renew", "--config", str(path), "--cert-name", "apii")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"aistack: no certificate is named 'apii'; the configuration names {DOMAIN}, api, grafana"
    )
    assert not (tmp_path / "certs").exists() and not (tmp_path / "state").exists()

    only = aistack("acme", "renew", "--config", str(path), "--cert-name", "api")
    assert only.returncode == 0 and only.stdout == "changed api\n"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [".versions", "api"]
    status = aistack("acme", "status", "--config", str(path), "--cert-name", "grafana")
    assert status.stdout.startswith("grafana (grafana.aistack.test, metrics.aistack.test)")
    assert "installed: no" in status.stdout


@pytest.mark.parametrize(
    ("certificates", "message"),
    [
        ({"API": {"domains": ["a.aistack.test"]}}, "'API' cannot name a certificate"),
        ({"x.installed": {"domains": ["a.aistack.test"]}}, "it ends in '.installed'"),
        ({"api": {"domains": []}}, "acme.certificates.api.domains: List should have at least 1"),
        ({"api": {"domains": ["a.aistack.test"], "email": "a@b.c"}}, "certificates.api.email"),
        ({DOMAIN: {"domains": ["a.aistack.test"]}}, f"certificates.{DOMAIN} has the name of"),
        ({"api": {"domains": ["A.aistack.test"]}}, "acme.certificates.api.domains.0"),
    ],
)
def test_a_bad_certificate_table_is_a_config_error(tmp_path, pebble, certificates, message):
    path = config_file(tmp_path, pebble, certificates=certificates)
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "certs").exists() and not (tmp_path / "state").exists()


def test_only_certificates_without_acme_domains(tmp_path, pebble):
    path = config_file(tmp_path, pebble, domains=[], certificates=CERTIFICATES)
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["changed api", "changed grafana"]


def test_an_unexpected_error_in_one_certificate_leaves_the_others_renewed(tmp_path, pebble):
    # A file where the certificate's versions go: installing even its placeholder fails.
    (tmp_path / "certs" / ".versions").mkdir(parents=True)
    (tmp_path / "certs" / ".versions" / "api").write_text("in the way\n")
    path = config_file(tmp_path, pebble, certificates=CERTIFICATES)
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"changed {DOMAIN}", "changed grafana"]
    assert "api failed (unexpected: FileExistsError" in result.stderr
    crashed = next(line for line in result.stderr.splitlines() if "acme.renewal_crashed" in line)
    assert "certificate=api" in crashed and 'exception="FileExistsError' in crashed
    assert "where=" in crashed  # an error nobody expected keeps its place in the log
