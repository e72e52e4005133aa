"""ACME profiles (draft-ietf-acme-profiles): sent with the order when the directory offers
the profile, refused with a clear error (and nothing sent) when it does not.

pebble 2.4 (bookworm) and 2.6 (trixie) advertise no profiles: the refusal is tested
against pebble itself; the order that names one goes through tests/profile_proxy.py, a
pass-through in front of the same pebble that adds Let's Encrypt's profile names to the
directory (its docstring says what it does not model)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from aistack.acme.renew import CertificateState, renew, state_path
from tests.pebble import Pebble, running_pebble
from tests.profile_proxy import ProfileDirectory, profile_directory
from tests.test_acme import acme_config, leaf, pebble

__all__ = ["pebble"]  # the module's pebble, a fixture

LETS_ENCRYPT_PROFILES = {
    "classic": "The same profile you're accustomed to",
    "tlsserver": "https://letsencrypt.org/2025/01/09/acme-profiles/",
    "shortlived": "https://letsencrypt.org/2025/01/09/acme-profiles/",
}


@pytest.fixture(scope="module")
def short_lived_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    # What `shortlived` gives at Let's Encrypt: six-day certificates.
    yield from running_pebble(tmp_path_factory.mktemp("short"), validity_seconds=6 * 86400)


@pytest.fixture
def offering(short_lived_pebble: Pebble) -> Iterator[ProfileDirectory]:
    yield from profile_directory(short_lived_pebble, LETS_ENCRYPT_PROFILES)


def test_the_profile_goes_with_the_order_and_a_short_lived_one_renews_on_time(
    tmp_path, short_lived_pebble, offering
):
    config = acme_config(
        tmp_path, short_lived_pebble, directory_url=offering.directory_url, profile="shortlived"
    )
    assert renew(config).action == "renewed"
    assert offering.ordered_profiles == ["shortlived"]
    lifetime = leaf(config).not_valid_after_utc - leaf(config).not_valid_before_utc
    assert lifetime.days in (5, 6)
    again = renew(config)
    assert again.action == "not-due" and again.due.renew_at is not None
    # Renewed with a third of the six days left (plus up to a tenth of that as jitter).
    left = leaf(config).not_valid_after_utc - again.due.renew_at
    assert lifetime / 3 <= left <= lifetime / 3 * 1.1 + datetime.timedelta(seconds=1)


def test_no_profile_sends_none(tmp_path, short_lived_pebble, offering):
    config = acme_config(tmp_path, short_lived_pebble, directory_url=offering.directory_url)
    assert renew(config).action == "renewed"
    assert offering.ordered_profiles == [None]


def test_a_profile_the_ca_does_not_offer_keeps_the_old_certificate(
    tmp_path, short_lived_pebble, offering
):
    config = acme_config(tmp_path, short_lived_pebble, directory_url=offering.directory_url)
    assert renew(config).action == "renewed"
    serial = leaf(config).serial_number
    wrong = config.model_copy(update={"profile": "short-lived"})
    outcome = renew(wrong, force=True)
    assert outcome.action == "failed"
    assert outcome.error == (
        "the CA has no ACME profile 'short-lived' (it offers classic, shortlived, tlsserver):"
        ' set profile to one it offers, or to "" for its default'
    )
    assert offering.ordered_profiles == [None]  # nothing was ordered
    assert leaf(config).serial_number == serial
    assert CertificateState.load(state_path(config)).failures_total == 1


def test_a_ca_without_profiles_refuses_any(tmp_path, pebble):
    config = acme_config(tmp_path, pebble, profile="tlsserver")
    outcome = renew(config)
    assert outcome.action == "failed"
    assert outcome.error is not None and "(it offers none)" in outcome.error
    assert leaf(config).subject  # the placeholder stands
