"""What the gateway does with the rate limiter's answer, by `validation.rate_limit_*`:
networks it never asks about (`rate_limit_exempt`), refusals only rehearsed
(`rate_limit_action = "log"`, nginx's `limit_req_dry_run`), and requests while the shared
storage is down (`rate_limit_failure`: "closed" answers 503, "open" admits).

An open failure admits every request of the outage unlimited, so it is logged when it
begins and when it ends (not per request, which would flood the journal exactly when the
storage is in trouble) and every request admitted so is counted.
"""

from __future__ import annotations

import ipaddress
import time

from aistack.config import Network, ValidationConfig
from aistack.gateway.metrics import GatewayMetrics
from aistack.observability.logs import EventLog

log = EventLog("gateway")


class QuotaPolicy:
    def __init__(self, validation: ValidationConfig, metrics: GatewayMetrics) -> None:
        self.exempt_networks: tuple[Network, ...] = validation.rate_limit_exempt_networks
        self.rehearse = validation.rate_limit_action == "log"
        self.fail_open = validation.rate_limit_failure == "open"
        self.metrics = metrics
        self.outage_began: float | None = None

    def exempt(self, key: str) -> bool:
        """Whether the client key (an address, or an IPv6 /prefix network) lies inside an
        exempt network."""
        if not self.exempt_networks:
            return False
        try:
            network = ipaddress.ip_network(key, strict=False)
        except ValueError:
            return False  # a Unix socket's key: no address to be exempt by
        return any(
            network.version == exempt.version and network.subnet_of(exempt)  # type: ignore[arg-type]
            for exempt in self.exempt_networks
        )

    def storage_failed(self, error: str) -> None:
        self.metrics.rate_limit_failed_open += 1
        if self.outage_began is None:
            self.outage_began = time.monotonic()
            log.error("gateway.rate_limit_storage_down", failure="open", error=error)

    def storage_answered(self) -> None:
        if self.outage_began is not None:
            seconds = time.monotonic() - self.outage_began
            self.outage_began = None
            log.warning("gateway.rate_limit_storage_back", seconds=f"{seconds:.1f}")

    def rehearsed(self, window: str, key: str) -> None:
        self.metrics.rate_limit_dry_run.inc(window)
        log.info("gateway.rate_limit_dry_run", window=window, client=key)
