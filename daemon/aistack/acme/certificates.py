"""Which certificate a command names."""

from __future__ import annotations

from aistack.config import AcmeConfig
from aistack.errors import UsageError


def find_certificate(config: AcmeConfig, name: str) -> AcmeConfig:
    """The configuration of the certificate called `name` (its first domain), or a
    one-line UsageError naming the known ones. Today there is one certificate."""
    known = [config.certificate_name]
    if name not in known:
        raise UsageError(f"no certificate called {name!r}; the configured ones: {', '.join(known)}")
    return config
