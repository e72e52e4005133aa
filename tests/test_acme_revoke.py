"""`aistack acme revoke` against a real pebble: the CA's word on the certificate (its
management API), the state `acme status` shows, and the renewal that follows."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from aistack.acme.renew import state_path
from tests.pebble import Pebble, ari_pebble, running_pebble
from tests.test_acme import acme_config, aistack, config_file, leaf

NAME = "www.aistack.test"


@pytest.fixture(scope="module", params=["2.4", "2.6"])
def pebble(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Pebble]:
    binary = ari_pebble() if request.param == "2.6" else "pebble"
    yield from running_pebble(tmp_path_factory.mktemp(f"pebble-{request.param}"), binary=binary)


def ca_status(pebble: Pebble, serial: int) -> dict[str, object]:
    """What pebble's management API says of a serial (Status, Reason, RevokedAt)."""
    context = ssl.create_default_context(cafile=str(pebble.ca_file))
    url = f"https://127.0.0.1:{pebble.management_port}/cert-status-by-serial/{serial:x}"
    with urllib.request.urlopen(url, context=context, timeout=5) as answer:
        return json.loads(answer.read())


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_revoke_then_renew_replaces_the_certificate(tmp_path, pebble):
    path = config_file(tmp_path, pebble)
    config = acme_config(tmp_path, pebble)
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    serial = leaf(config).serial_number
    assert ca_status(pebble, serial)["Status"] == "Valid"

    revoked = aistack("acme", "revoke", NAME, "--reason", "keyCompromise", "--config", str(path))
    assert revoked.returncode == 0, revoked.stderr
    assert f"{NAME}: revoked serial {serial:x} (keyCompromise)" in revoked.stderr
    said = ca_status(pebble, serial)
    assert said["Status"] == "Revoked" and said["Reason"] == 1

    status = aistack("acme", "status", "--config", str(path))
    assert f"revoked: serial {serial:x} at " in status.stdout
    assert "next renewal: now (revoked)" in status.stdout
    (data,) = json.loads(aistack("acme", "status", "--config", str(path), "--json").stdout)
    assert data["revoked"]["serial"] == f"{serial:x}"
    assert data["revoked"]["reason"] == "keyCompromise" and data["due"] == "revoked"

    # Not forced: a revoked certificate is due.
    renewed = aistack("acme", "renew", "--config", str(path))
    assert renewed.returncode == 0 and renewed.stdout == f"changed {NAME}\n"
    assert "(revoked)" in renewed.stderr
    assert leaf(config).serial_number != serial
    assert ca_status(pebble, leaf(config).serial_number)["Status"] == "Valid"
    assert "not-due" in aistack("acme", "renew", "--config", str(path)).stderr


def test_revoking_twice_is_refused_by_the_ca_and_changes_nothing(tmp_path, pebble):
    path = config_file(tmp_path, pebble)
    config = acme_config(tmp_path, pebble)
    aistack("acme", "renew", "--config", str(path))
    assert aistack("acme", "revoke", NAME, "--config", str(path)).returncode == 0
    state = state_path(config).read_bytes()
    assert json.loads(state)["revoked"]["reason"] == "unspecified"
    again = aistack("acme", "revoke", NAME, "--config", str(path))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert "urn:ietf:params:acme:error:alreadyRevoked" in again.stderr
    assert state_path(config).read_bytes() == state


def test_a_revocation_the_state_does_not_know_of_is_recorded_from_the_ca(tmp_path, pebble):
    # As after a run that died between the CA's yes and writing the state.
    path = config_file(tmp_path, pebble)
    config = acme_config(tmp_path, pebble)
    aistack("acme", "renew", "--config", str(path))
    assert aistack("acme", "revoke", NAME, "--config", str(path)).returncode == 0
    state = json.loads(state_path(config).read_text())
    state["revoked"] = None
    state_path(config).write_text(json.dumps(state))
    again = aistack("acme", "revoke", NAME, "--config", str(path))
    assert again.returncode == 0, again.stderr
    assert "(already revoked at the CA); the next acme renew replaces it" in again.stderr
    assert json.loads(state_path(config).read_text())["revoked"]["reason"] == (
        "already revoked at the CA"
    )
    renewed = aistack("acme", "renew", "--config", str(path))
    assert renewed.returncode == 0 and renewed.stdout == f"changed {NAME}\n"
    assert "(revoked)" in renewed.stderr


@pytest.mark.parametrize("placeholder", [False, True], ids=["nothing", "placeholder"])
def test_nothing_to_revoke_is_a_one_line_error_that_changes_nothing(tmp_path, pebble, placeholder):
    path = config_file(tmp_path, pebble)
    if placeholder:
        assert aistack("acme", "placeholder", "--config", str(path)).returncode == 0
    before = files_under(tmp_path)
    result = aistack("acme", "revoke", NAME, "--config", str(path))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    installed = "only the self-signed placeholder is" if placeholder else "no certificate is"
    assert f"{NAME}: {installed} installed, nothing to revoke" in result.stderr
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["example.org"], "no certificate is named 'example.org'; the configuration names " + NAME),
        ([NAME, "--reason", "bored"], "argument --reason: invalid choice: 'bored'"),
    ],
)
def test_revoke_refuses_bad_arguments(tmp_path, pebble, arguments, message):
    path = config_file(tmp_path, pebble)
    aistack("acme", "renew", "--config", str(path))
    before = files_under(tmp_path)
    result = aistack("acme", "revoke", *arguments, "--config", str(path))
    assert result.returncode == 2 and message in result.stderr
    assert files_under(tmp_path) == before


def test_revoke_names_one_of_several_certificates(tmp_path, pebble):
    path = config_file(tmp_path, pebble, certificates={"api": {"domains": ["api.aistack.test"]}})
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    revoked = aistack("acme", "revoke", "api", "--config", str(path))
    assert revoked.returncode == 0, revoked.stderr
    assert "\napi: revoked serial " in revoked.stderr
    statuses = json.loads(aistack("acme", "status", "--config", str(path), "--json").stdout)
    by_name = {status["certificate"]: status for status in statuses}
    assert by_name["api"]["due"] == "revoked" and by_name[NAME]["revoked"] is None
    renewed = aistack("acme", "renew", "--config", str(path))
    assert renewed.stdout == "changed api\n", renewed.stderr
