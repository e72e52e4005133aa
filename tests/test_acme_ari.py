"""ARI (RFC 9773) against a real CA that serves it: Debian trixie's pebble 2.6 (bookworm's
2.4 has no renewalInfo). The renewal window, `replaces` in a renewal's order, and what
pebble does with a second replacement of one certificate."""

from __future__ import annotations

import datetime
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from acme import client

from aistack.acme import ari, certfiles
from aistack.acme.renew import renew
from aistack.config import AcmeConfig
from tests.pebble import Pebble, ari_pebble, running_pebble
from tests.profile_proxy import profile_directory
from tests.test_acme import acme_config, leaf, live


@pytest.fixture(scope="module")
def pebble26(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble26"), binary=ari_pebble())


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


def installed(config: AcmeConfig) -> certfiles.Installed:
    found = certfiles.read_installed(Path(config.cert_dir), config.certificate_name)
    assert found is not None
    return found


def replacements_in_log(pebble: Pebble) -> list[str]:
    """Pebble's own word on each order it took as a replacement."""
    text = pebble.log_file.read_text()
    return [line for line in text.splitlines() if "is a replacement of" in line]


def test_the_window_pebble_suggests_is_the_one_the_renewal_follows(tmp_path, pebble26):
    config = acme_config(tmp_path, pebble26)
    assert renew(config).action == "renewed"
    certificate = installed(config)
    # Pebble knows the certificate by the id acme's own code computes.
    assert certificate.renewal_id == client._renewal_info_path_component(certificate.certificate())
    window = ari.renewal_window(config, certificate.renewal_id)
    assert window is not None
    start, end = window
    # Pebble 2.6 suggests two days around two thirds of the lifetime.
    lifetime = certificate.not_after - certificate.not_before
    ideal = certificate.not_after - lifetime / 3
    assert abs(start - (ideal - datetime.timedelta(days=1))) < datetime.timedelta(seconds=5)
    assert end - start == datetime.timedelta(days=2)
    outcome = renew(config)
    assert outcome.action == "not-due" and outcome.due.renew_at is not None
    assert start <= outcome.due.renew_at <= end


def test_a_renewal_says_what_it_replaces_and_a_first_issue_does_not(tmp_path, pebble26, caplog):
    caplog.set_level(logging.INFO, "aistack.acme")
    config = acme_config(tmp_path, pebble26)
    before = len(replacements_in_log(pebble26))
    assert renew(config).action == "renewed"  # over the placeholder: a first issue
    first = events(caplog, "acme.order_created")
    assert [e["replaces"] for e in first] == [""]
    old_id = installed(config).renewal_id
    assert old_id is not None

    caplog.clear()
    assert renew(config, force=True).action == "renewed"
    # Pebble echoes `replaces` in the order it made, and logs it as a replacement.
    assert [e["replaces"] for e in events(caplog, "acme.order_created")] == [old_id]
    assert len(replacements_in_log(pebble26)) == before + 1
    assert events(caplog, "acme.replaces_refused") == []


def test_a_second_replacement_of_one_certificate_is_refused_and_ordered_plainly(
    tmp_path, pebble26, caplog
):
    caplog.set_level(logging.INFO, "aistack.acme")
    config = acme_config(tmp_path, pebble26)
    renew(config)
    old = live(config)
    old_pair = ((old / "fullchain.pem").read_text(), (old / "key.pem").read_bytes())
    old_id = installed(config).renewal_id
    assert renew(config, force=True).action == "renewed"  # replaces the old one
    # The old pair back in place (a restore from backup): its renewal replaces it again.
    certfiles.install(Path(config.cert_dir), config.certificate_name, *old_pair)
    caplog.clear()
    outcome = renew(config, force=True)
    assert outcome.action == "renewed"
    refused = events(caplog, "acme.replaces_refused")
    assert len(refused) == 1 and refused[0]["replaces"] == old_id
    assert "already has a replacement order" in str(refused[0]["detail"])
    assert [e["replaces"] for e in events(caplog, "acme.order_created")] == [""]
    assert leaf(config).serial_number == installed(config).serial_number


def revoke_elsewhere(config: AcmeConfig, certificate: certfiles.Installed) -> None:
    """Revoke as another tool would (certbot revoke): nothing of ours records it."""
    from aistack.acme.protocol import AcmeClient

    with AcmeClient(config, Path(config.state_dir)) as acme:
        acme.register()
        acme.client.revoke(certificate.certificate(), 4)


def test_a_certificate_revoked_at_the_ca_is_renewed_at_once_by_its_ari_window(tmp_path, pebble26):
    config = acme_config(tmp_path, pebble26)
    renew(config)
    revoked = installed(config)
    assert renew(config).action == "not-due"
    revoke_elsewhere(config, revoked)
    outcome = renew(config)
    # Pebble 2.6 answers a revoked certificate's renewalInfo with a window in the past.
    assert outcome.due.reason == "inside the CA's renewal window (ARI)"
    assert outcome.action == "renewed"
    assert installed(config).serial_number != revoked.serial_number


def test_a_renewal_by_another_account_is_refused_its_replaces_and_still_renews(
    tmp_path, pebble26, caplog
):
    """The account lost (a state directory restored without it): the new account did not
    order the certificate it names, which pebble refuses; the plain order goes through."""
    caplog.set_level(logging.INFO, "aistack.acme")
    config = acme_config(tmp_path, pebble26)
    renew(config)
    old_serial = installed(config).serial_number
    shutil.rmtree(Path(config.state_dir) / "accounts")
    caplog.clear()
    outcome = renew(config, force=True)
    assert outcome.action == "renewed"
    refused = events(caplog, "acme.replaces_refused")
    assert len(refused) == 1 and refused[0]["problem"] == "urn:ietf:params:acme:error:unauthorized"
    assert "did not request the certificate being replaced" in str(refused[0]["detail"])
    assert installed(config).serial_number != old_serial


def test_a_renewal_order_carries_its_profile_and_what_it_replaces(tmp_path, pebble26):
    """The profile through tests/profile_proxy.py (pebble 2.6 offers none), in front of
    the real ARI pebble: one order payload holds both."""
    for offering in profile_directory(pebble26, {"classic": "the default"}):
        config = acme_config(
            tmp_path, pebble26, directory_url=offering.directory_url, profile="classic"
        )
        assert renew(config).action == "renewed"
        old_id = installed(config).renewal_id
        assert renew(config, force=True).action == "renewed"
        sent = [(order.get("profile"), order.get("replaces")) for order in offering.orders]
        assert sent == [("classic", None), ("classic", old_id)]
