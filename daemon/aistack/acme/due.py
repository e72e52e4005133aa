"""Is the certificate due? A pure function of what is installed, the configuration, the
CA's renewal window (ARI, RFC 9773) if it offers one, and a clock.

Without ARI the certificate is renewed `renew_before_days` before it expires, but never
later than with a third of its lifetime left: a fixed "30 days before" would renew a
6-day certificate on every run (and a 90-day one too late if the setting were 60).
A jitter of up to a tenth of that period, fixed per certificate, keeps a fleet from
renewing in the same minute.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from aistack.acme.certfiles import Installed

JITTER_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Due:
    due: bool
    reason: str
    renew_at: datetime.datetime | None = None


def jitter_of(serial: int) -> float:
    """A number in [0, 1), the same every run for one certificate."""
    digest = hashlib.sha256(serial.to_bytes(20, "big", signed=False)).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def renewal_time(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    renew_before_days: int,
    jitter: float,
) -> datetime.datetime:
    lifetime = not_after - not_before
    before = min(datetime.timedelta(days=renew_before_days), lifetime / 3)
    return not_after - before - before * JITTER_SHARE * jitter


def window_time(
    start: datetime.datetime, end: datetime.datetime, jitter: float
) -> datetime.datetime:
    """A point inside the CA's suggested window (ARI), fixed per certificate."""
    return start + (end - start) * jitter if end > start else start


def decide(
    installed: Installed | None,
    domains: list[str],
    key_type: str,
    renew_before_days: int,
    now: datetime.datetime,
    *,
    ari_window: tuple[datetime.datetime, datetime.datetime] | None = None,
    force: bool = False,
    revoked: bool = False,
) -> Due:
    if installed is None:
        return Due(True, "no certificate installed")
    if installed.placeholder:
        return Due(True, "only the placeholder is installed")
    if revoked:
        return Due(True, "revoked")
    if force:
        return Due(True, "forced")
    if installed.key_type != key_type:
        return Due(True, f"key type changed ({installed.key_type} -> {key_type})")
    wanted = sorted(domain.lower() for domain in domains)
    if installed.domains != wanted:
        return Due(True, f"domains changed ({','.join(installed.domains)} -> {','.join(wanted)})")
    if installed.not_after <= now:
        return Due(True, "expired", installed.not_after)
    jitter = jitter_of(installed.serial_number)
    if ari_window is not None:
        renew_at = window_time(*ari_window, jitter)
        reason = "inside the CA's renewal window (ARI)"
    else:
        renew_at = renewal_time(
            installed.not_before, installed.not_after, renew_before_days, jitter
        )
        reason = "within the renewal period"
    if now >= renew_at:
        return Due(True, reason, renew_at)
    return Due(False, "not due", renew_at)
