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
    state = CertificateState.load(state_path(config))
    try:
        with AcmeClient(config, Path(config.state_dir)) as acme:
            acme.revoke(installed.certificate(), REVOCATION_REASONS[reason])
    except CA_ERRORS as error:
        refusal = acme.net.refusal(error)
        recorded = (state.revoked or {}).get("serial") == serial
        if refusal is None or refusal.code != "alreadyRevoked" or recorded:
            raise Failure(
                f"{name}: revoking serial {serial} failed: {as_failure(error, acme.net)}"
            ) from None
        # Revoked by other means, or by a run that died before it wrote so: the CA's word
        # is enough to record it, so that the next renewal replaces the certificate.
        reason = "already revoked at the CA"
    now = now or datetime.datetime.now(datetime.UTC)
    state.revoked = {"serial": serial, "at": now.isoformat(), "reason": reason}
    state.save(state_path(config))
    log.info("acme.revoked", certificate=name, serial=serial, reason=reason)
    return f"{name}: revoked serial {serial} ({reason}); the next acme renew replaces it"
