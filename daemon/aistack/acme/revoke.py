"""`aistack acme revoke NAME`: revoke the installed certificate with the account key.

The revocation is kept in the certificate's state (`CertificateState.revoked`): `acme
status` shows it, and the next `acme renew` finds the installed certificate due
("revoked") and replaces it. Nothing is changed when there is nothing to revoke or the
CA refuses.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from aistack.acme import certfiles
from aistack.acme.renew import CertificateState, state_path
from aistack.config import AcmeConfig
from aistack.errors import Failure
from aistack.observability.logs import EventLog

log = EventLog("acme")


def revoke(config: AcmeConfig, reason: str, now: datetime.datetime | None = None) -> str:
    """Revoke; the line to print. Failure, with nothing changed, when nothing can be."""
    from aistack.acme.cli import REVOCATION_REASONS
    from aistack.acme.protocol import CA_ERRORS, AcmeClient, as_failure

    name = config.certificate_name
    # Read afresh, not kept: a refused revocation leaves every file as it was.
    installed = certfiles.read_installed(Path(config.cert_dir), name)
    if installed is None:
        raise Failure(f"{name}: no certificate is installed, nothing to revoke")
    if installed.placeholder:
        raise Failure(f"{name}: only the self-signed placeholder is installed, nothing to revoke")
    serial = f"{installed.serial_number:x}"
    acme = AcmeClient(config, Path(config.state_dir))
    try:
        acme.revoke(installed.certificate(), REVOCATION_REASONS[reason])
    except CA_ERRORS as error:
        raise Failure(
            f"{name}: revoking serial {serial} failed: {as_failure(error, acme.net)}"
        ) from None
    now = now or datetime.datetime.now(datetime.UTC)
    state = CertificateState.load(state_path(config))
    state.revoked = {"serial": serial, "at": now.isoformat(), "reason": reason}
    state.save(state_path(config))
    log.info("acme.revoked", certificate=name, serial=serial, reason=reason)
    return f"{name}: revoked serial {serial} ({reason}); the next acme renew replaces it"
