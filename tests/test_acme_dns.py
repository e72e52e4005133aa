"""DNS-01 and wildcards against real parts: BIND 9 (tests/bind.py) takes RFC 2136 updates
and serves the zone, pebble resolves through it and validates the TXT records there."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification

from aistack.acme.challenges import ChallengeSetupError
from aistack.acme.dns01 import Rfc2136Publisher, Server, tsig_secret
from aistack.acme.renew import CertificateState, renew, state_path
from aistack.config import AcmeConfig, ConfigError, Rfc2136Dns, validate_config
from tests.bind import KEY_NAME, MD5_KEY_NAME, Bind, running_bind
from tests.pebble import Pebble, free_port, running_pebble
from tests.test_acme import aistack
from tests.tools import tool_missing

BASE = "dns.aistack.test"
DOMAINS = [f"*.{BASE}", BASE]
RECORD = f"_acme-challenge.{BASE}"


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    yield from running_bind(tmp_path_factory.mktemp("bind"))


@pytest.fixture(scope="module")
def static_bind(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Bind]:
    """The same zone and key, served as written: it never gets the challenge's record."""
    directory = tmp_path_factory.mktemp("bind-static")
    yield from running_bind(directory, allow_update=False, secret=bind.secret)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Pebble]:
    # No authorization reuse: every renewal validates (reuse would let a broken DNS pass).
    yield from running_pebble(
        tmp_path_factory.mktemp("pebble"), dns_server=bind.address, authz_reuse_percent=0
    )


def dns_config(tmp_path: Path, pebble: Pebble, dns: dict[str, Any], **overrides: Any) -> AcmeConfig:
    acme = {
        **pebble.acme_settings(tmp_path),
        "domains": DOMAINS,
        "challenge": "dns-01",
        "dns": dns,
        **overrides,
    }
    return validate_config({"qdrant": {"path": str(tmp_path / "q")}, "acme": acme}).acme


def leaf(config: AcmeConfig) -> x509.Certificate:
    path = Path(config.cert_dir) / config.certificate_name / "cert.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def installed_files(config: AcmeConfig) -> dict[str, bytes]:
    live = Path(config.cert_dir) / config.certificate_name
    return {f.name: f.read_bytes() for f in live.iterdir()}


def assert_issued_for_the_wildcard(config: AcmeConfig, pebble: Pebble) -> None:
    certificate = leaf(config)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(DOMAINS)
    chain = x509.load_pem_x509_certificates(
        (Path(config.cert_dir) / config.certificate_name / "fullchain.pem").read_bytes()
    )
    store = verification.Store(pebble.issuing_roots())
    for host in (f"anything.{BASE}", BASE):
        verifier = (
            verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
        )
        verifier.verify(chain[0], chain[1:])


# -- issuance -------------------------------------------------------------------------


def test_rfc2136_issues_a_wildcard_and_removes_its_records(tmp_path, pebble, bind):
    config = dns_config(tmp_path, pebble, bind.dns_settings())
    assert config.certificate_name == BASE
    outcome = renew(config)
    assert outcome.action == "renewed", outcome.line()
    assert_issued_for_the_wildcard(config, pebble)
    # Both authorizations (*.x and x) put a value at one name; both are gone.
    assert bind.txt(RECORD) == set()
    # They were there: bind logged both additions and both deletions.
    log = bind.log_file.read_text()
    assert log.count(f"adding an RR at '{RECORD}' TXT") == 2
    assert log.count(f"deleting an RR at {RECORD} TXT") == 2


def test_rfc2136_takes_the_key_file_tsig_keygen_writes(tmp_path, pebble, bind):
    key_file = tmp_path / "acme.key"
    key_file.write_text(
        f'key "{KEY_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{bind.secret}";\n}};\n'
    )
    config = dns_config(tmp_path, pebble, bind.dns_settings(tsig_key_file=str(key_file)))
    assert renew(config).action == "renewed"
    assert bind.txt(RECORD) == set()


def test_a_key_file_from_tsig_keygen_itself_is_read(tmp_path):
    if shutil.which("tsig-keygen") is None:
        tool_missing("tsig-keygen", "apt-get install bind9")
    written = subprocess.run(
        ["tsig-keygen", "-a", "hmac-sha256", KEY_NAME], capture_output=True, text=True, check=True
    ).stdout
    key_file = tmp_path / "acme.key"
    key_file.write_text(written)
    secret = tsig_secret(rfc2136(server="127.0.0.1", tsig_key_file=str(key_file)))
    assert f'secret "{secret}"' in written


def test_the_zones_authoritative_servers_are_checked_by_default(bind):
    """Without check_servers: the NS of the zone the SOA walk finds, at port 53 (the
    issuance itself cannot go there: nothing of the tests listens on port 53)."""
    publisher = Rfc2136Publisher(rfc2136(**bind.dns_settings(check_servers=[])))
    assert str(publisher.zone_of(f"{RECORD}.")) == "aistack.test."
    assert publisher.default_servers(f"{RECORD}.") == [Server("ns.aistack.test", "127.0.0.1", 53)]


def nsupdate_script(
    tmp_path: Path, bind: Bind, fail: str = "", fail_after: str = ""
) -> tuple[Path, Path]:
    """An exec provider that really updates bind, through nsupdate, and logs its calls."""
    if shutil.which("nsupdate") is None:
        tool_missing("nsupdate", "apt-get install bind9-dnsutils")
    calls = tmp_path / "calls"
    script = tmp_path / "update-dns.sh"
    script.write_text(
        "#!/bin/sh\n"
        "set -e\n"
        f'echo "$@" >> {calls}\n'
        f"{fail}\n"
        'case "$1" in present) op="add $2 60" ;; cleanup) op="delete $2" ;; *) exit 2 ;; esac\n'
        f"nsupdate -y hmac-sha256:{KEY_NAME}:{bind.secret} <<EOF\n"
        f"server 127.0.0.1 {bind.port}\n"
        'update $op TXT "$3"\n'
        "send\n"
        "EOF\n"
        f"{fail_after}\n"
    )
    script.chmod(0o755)
    return script, calls


def test_exec_issues_with_a_script_calling_nsupdate(tmp_path, pebble, bind):
    script, calls = nsupdate_script(tmp_path, bind)
    exec_dns = {"provider": "exec", "command": str(script), "check_servers": [bind.address]}
    config = dns_config(tmp_path, pebble, exec_dns)
    assert renew(config).action == "renewed"
    assert_issued_for_the_wildcard(config, pebble)
    assert bind.txt(RECORD) == set()
    # Called as lego's exec provider calls its program: ACTION FQDN. VALUE.
    lines = [line.split(" ") for line in calls.read_text().splitlines()]
    assert [(action, name) for action, name, _ in lines] == [
        ("present", f"{RECORD}."),
        ("present", f"{RECORD}."),
        ("cleanup", f"{RECORD}."),
        ("cleanup", f"{RECORD}."),
    ]
    values = [value for _, _, value in lines]
    assert len(set(values)) == 2 and sorted(values[:2]) == sorted(values[2:])
    assert all(len(value) == 43 for value in values)  # base64url of a SHA-256 digest


def test_a_cleanup_that_fails_is_logged_and_the_certificate_stays(tmp_path, pebble, bind):
    script, _ = nsupdate_script(
        tmp_path, bind, fail='[ "$1" = cleanup ] && { echo "API down" >&2; exit 3; }'
    )
    path = tmp_path / "aistack.json"
    acme = {
        **pebble.acme_settings(tmp_path),
        "domains": ["cleanup.aistack.test"],
        "challenge": "dns-01",
        "dns": {"provider": "exec", "command": str(script), "check_servers": [bind.address]},
    }
    path.write_text(json.dumps({"qdrant": {"path": str(tmp_path / "q")}, "acme": acme}))
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "changed cleanup.aistack.test\n"
    assert "event=acme.dns_cleanup_failed" in result.stderr
    assert "exited 3: API down" in result.stderr
    # The record it could not remove is still there: the warning tells the truth.
    assert len(bind.txt("_acme-challenge.cleanup.aistack.test")) == 1


def test_rfc2136_signs_with_hmac_md5(tmp_path, pebble, bind):
    dns = bind.dns_settings(
        tsig_key_name=MD5_KEY_NAME, tsig_algorithm="hmac-md5", tsig_key_file=str(bind.md5_key_file)
    )
    config = dns_config(tmp_path, pebble, dns)
    assert renew(config).action == "renewed"
    assert_issued_for_the_wildcard(config, pebble)


def test_a_present_that_failed_after_adding_its_record_is_cleaned_up(tmp_path, pebble, bind):
    # The program's API call went through, then it failed (a timeout reading the answer):
    # the record stands, and is removed as lego removes it.
    script, calls = nsupdate_script(
        tmp_path, bind, fail_after='[ "$1" = present ] && { echo "read timeout" >&2; exit 1; }'
    )
    exec_dns = {"provider": "exec", "command": str(script), "check_servers": [bind.address]}
    config = dns_config(tmp_path, pebble, exec_dns, domains=["late.aistack.test"])
    outcome = renew(config)
    assert outcome.action == "failed" and outcome.error and "read timeout" in outcome.error
    assert [line.split(" ")[0] for line in calls.read_text().splitlines()] == [
        "present",
        "cleanup",
    ]
    assert bind.txt("_acme-challenge.late.aistack.test") == set()


# -- failures: each keeps the old certificate, with one line saying what to fix --------


def rfc2136(**settings: Any) -> Rfc2136Dns:
    return Rfc2136Dns.model_validate(
        {"provider": "rfc2136", "tsig_key_name": KEY_NAME, "tsig_key_file": "/k", **settings}
    )


def wrong_secret(tmp_path: Path, bind: Bind) -> dict[str, Any]:
    other = tmp_path / "other.secret"
    other.write_text("c2VjcmV0IG9mIGFub3RoZXIga2V5IGVudGlyZWx5IQ==\n")
    return bind.dns_settings(tsig_key_file=str(other))


def fails_with(tmp_path: Path, bind: Bind, static: Bind, case: str) -> tuple[dict[str, Any], str]:
    down = f"127.0.0.1:{free_port()}"
    script = tmp_path / "failing.sh"
    script.write_text('#!/bin/sh\necho "HETZNER_API_TOKEN is not set" >&2\nexit 1\n')
    script.chmod(0o755)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    return {
        "server down": (
            bind.dns_settings(server=down),
            f"cannot reach the DNS server {down} (acme.dns.server) for the SOA query for"
            f" {RECORD}.: connection refused",
        ),
        "wrong secret": (
            wrong_secret(tmp_path, bind),
            f"the DNS server {bind.address} refused TSIG key {KEY_NAME} (found the signature"
            " wrong) for the SOA query",
        ),
        "unknown key": (
            bind.dns_settings(tsig_key_name="nobody"),
            f"the DNS server {bind.address} refused TSIG key nobody (does not know key nobody)",
        ),
        "not a secret": (
            bind.dns_settings(tsig_key_file=str(script)),
            f"acme.dns.tsig_key_file {script} holds no base64 TSIG secret",
        ),
        "no secret file": (
            bind.dns_settings(tsig_key_file=str(tmp_path / "absent")),
            f"acme.dns.tsig_key_file: {tmp_path / 'absent'}: cannot read the secret file",
        ),
        "update refused": (
            # The static server knows the key but lets no one update its zone.
            bind.dns_settings(server=static.address),
            f"the DNS server {static.address} answered REFUSED to the update of {RECORD}.:"
            f" does its allow-update or update-policy for aistack.test. name key {KEY_NAME}?",
        ),
        "never visible": (
            bind.dns_settings(check_servers=[static.address], propagation_timeout_seconds=1),
            f"TXT {RECORD}. not visible on {static.address} within 1 s"
            f" (acme.dns.propagation_timeout_seconds): {static.address}: holds no TXT record"
            " with the challenge's value",
        ),
        "check server down": (
            bind.dns_settings(check_servers=[down], propagation_timeout_seconds=1),
            f"TXT {RECORD}. not visible on {down} within 1 s"
            f" (acme.dns.propagation_timeout_seconds): {down}: no answer (timed out)",
        ),
        "exec exits 1": (
            {"provider": "exec", "command": str(script), "check_servers": [bind.address]},
            f"acme.dns.command {script} present {RECORD}. exited 1: HETZNER_API_TOKEN is not set",
        ),
        "exec hangs": (
            {"provider": "exec", "command": str(slow), "command_timeout_seconds": 0.5},
            f"acme.dns.command {slow} present {RECORD}. did not finish within 0.5 s",
        ),
        "exec, no zone found": (
            # Nothing delegates aistack.test: the system's resolver cannot find its servers.
            {"provider": "exec", "command": str(nsupdate_script(tmp_path, bind)[0])},
            f"cannot find the zone of {RECORD}. through the system's resolver (",
        ),
        "exec missing": (
            {"provider": "exec", "command": str(tmp_path / "absent.sh")},
            f"cannot run acme.dns.command {tmp_path / 'absent.sh'} present {RECORD}.: no such file",
        ),
    }[case]


EXPECTED_ENDINGS = {"exec, no zone found": "): set acme.dns.check_servers"}


@pytest.mark.parametrize(
    "case",
    [
        "server down",
        "wrong secret",
        "unknown key",
        "update refused",
        "not a secret",
        "no secret file",
        "never visible",
        "check server down",
        "exec exits 1",
        "exec hangs",
        "exec, no zone found",
        "exec missing",
    ],
)
def test_a_dns_failure_keeps_the_old_certificate(tmp_path, pebble, bind, static_bind, case):
    config = dns_config(tmp_path, pebble, bind.dns_settings())
    assert renew(config).action == "renewed"
    before = installed_files(config)
    dns, message = fails_with(tmp_path, bind, static_bind, case)
    broken = dns_config(tmp_path, pebble, dns)
    outcome = renew(broken, force=True)
    assert outcome.action == "failed"
    assert outcome.error is not None and "\n" not in outcome.error
    assert message in outcome.error
    assert outcome.error.endswith(EXPECTED_ENDINGS.get(case, ""))
    assert installed_files(config) == before
    state = CertificateState.load(state_path(config))
    assert state.consecutive_failures == 1 and state.last_error is not None
    # Whatever was published before the failure was removed again.
    assert bind.txt(RECORD) == set()


def test_a_dns_failure_is_one_line_from_the_cli(tmp_path, pebble, bind, static_bind):
    dns, message = fails_with(tmp_path, bind, static_bind, "wrong secret")
    path = tmp_path / "aistack.json"
    acme = {**pebble.acme_settings(tmp_path), "domains": DOMAINS, "challenge": "dns-01"}
    path.write_text(
        json.dumps({"qdrant": {"path": str(tmp_path / "q")}, "acme": {**acme, "dns": dns}})
    )
    result = aistack("acme", "renew", "--config", str(path))
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if " failed " in line]
    assert len(failed) == 1 and message in failed[0], result.stderr
    assert "Traceback" not in result.stderr


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acme", "message"),
    [
        (
            {"domains": ["*.example.org"], "challenge": "webroot"},
            "acme.domains.0: '*.example.org' is a wildcard, and only DNS-01 validates wildcards",
        ),
        (
            {"domains": ["*.example.org"], "challenge": "standalone"},
            "only DNS-01 validates wildcards",
        ),
        (
            {"domains": ["a.example.org"], "challenge": "dns-01"},
            'acme.dns: challenge is "dns-01" but acme.dns is not set: set dns = {provider =',
        ),
        (
            {"challenge": "dns-01", "dns": {"server": "127.0.0.1"}},
            'acme.dns: provider must be "rfc2136" or "exec"',
        ),
        (
            {"challenge": "dns-01", "dns": {"provider": "route53"}},
            'acme.dns: provider must be "rfc2136" or "exec"',
        ),
        (
            {"challenge": "dns-01", "dns": {"provider": "rfc2136", "server": "127.0.0.1"}},
            "'acme.dns.tsig_key_name' is required",
        ),
        (
            {"challenge": "dns-01", "dns": {"provider": "exec", "command": "/x", "server": "y"}},
            "unknown key 'acme.dns.server'",
        ),
        (
            {
                "challenge": "dns-01",
                "dns": {"provider": "exec", "command": "/x", "check_servers": ["a:b:c"]},
            },
            "acme.dns.check_servers.0: 'a:b:c' is not host:port",
        ),
        (
            {"domains": ["*.Example.org"], "challenge": "dns-01"},
            "'*.Example.org' holds upper-case letters; a certificate names lower-case IDNA"
            " A-labels: write '*.example.org'",
        ),
        ({"domains": ["*.*.example.org"]}, "acme.domains.0: '*.*.example.org' is not a DNS name"),
    ],
)
def test_bad_dns_settings_are_one_line_errors(acme, message):
    with pytest.raises(ConfigError) as error:
        validate_config({"qdrant": {"path": "/q"}, "acme": acme}, "", "<test>")
    assert message in str(error.value)


def test_the_wildcard_refused_with_http01_creates_nothing(tmp_path):
    path = tmp_path / "aistack.json"
    acme = {
        "domains": ["*.example.org", "example.org"],
        "cert_dir": str(tmp_path / "certs"),
        "state_dir": str(tmp_path / "state"),
        "webroot": str(tmp_path / "webroot"),
    }
    path.write_text(json.dumps({"qdrant": {"path": str(tmp_path / "q")}, "acme": acme}))
    for command in ("renew", "placeholder"):
        result = aistack("acme", command, "--config", str(path))
        assert result.returncode == 2
        assert result.stderr.strip().endswith(
            "acme.domains.0: '*.example.org' is a wildcard, and only DNS-01 validates wildcards:"
            ' set challenge = "dns-01" and acme.dns, or name each host'
        ), result.stderr
    assert sorted(tmp_path.iterdir()) == [path]


def test_dns_settings_dump_as_written():
    config = validate_config(
        {
            "qdrant": {"path": "/q"},
            "acme": {
                "challenge": "dns-01",
                "dns": {"provider": "exec", "command": "/x", "check_servers": ["ns1.example.org"]},
            },
        }
    )
    dumped = config.model_dump(mode="json")["acme"]["dns"]
    assert dumped["check_servers"] == ["ns1.example.org"] and dumped["provider"] == "exec"
    assert validate_config({**config.model_dump(mode="json")}).acme.dns == config.acme.dns


def test_a_server_not_authoritative_for_the_name_is_named(bind):
    publisher = Rfc2136Publisher(rfc2136(**bind.dns_settings()))
    with pytest.raises(ChallengeSetupError) as error:
        publisher.zone_of("_acme-challenge.example.org.")
    assert str(error.value) == (
        f"the DNS server {bind.address} (acme.dns.server) is not authoritative for"
        " _acme-challenge.example.org. (it answered REFUSED to an SOA query): name the primary"
        " server of the zone"
    )


def test_setup_errors_are_challenge_setup_errors():
    with pytest.raises(ChallengeSetupError, match="cannot resolve the DNS server"):
        Rfc2136Publisher(rfc2136(server="no-such-host.invalid:53"))
