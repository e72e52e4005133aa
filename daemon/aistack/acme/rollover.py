"""`aistack acme rollover`: a new account key, the same account (RFC 8555 section 7.3.5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aistack.config import AcmeConfig
from aistack.errors import Failure

if TYPE_CHECKING:
    from aistack.acme.protocol import AcmeClient


def roll_over(config: AcmeConfig) -> str:
    """Roll the account key over; the line to print. Failure when the CA refused (the old
    key stays) or could not be asked."""
    from aistack.acme.protocol import AcmeClient

    with AcmeClient(config, Path(config.state_dir)) as acme:
        return roll_over_with(acme)


def roll_over_with(acme: AcmeClient) -> str:
    from aistack.acme.protocol import CA_ERRORS, as_failure

    try:
        uri = acme.roll_over()
    except CA_ERRORS as error:
        failure = as_failure(error, acme.net)
        if acme.accounts.pending_key() is not None:
            # No answer: the CA may hold either key now; the next run asks it which.
            raise Failure(
                f"the account key rollover failed: {failure}; both keys are kept and the "
                "next acme command keeps the one the CA holds"
            ) from None
        raise Failure(f"the account key rollover failed: {failure}; the old key stays") from None
    return f"account {uri}: new account key in {acme.accounts.key_file}"
