"""`aistack acme status` and the figures the oneshot leaves for Prometheus (a node_exporter
textfile, replaced atomically, so a scrape finds them after the process has exited)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aistack.acme import certfiles
from aistack.acme.account import AccountStore
from aistack.acme.renew import CertificateState, facts_path, judge, state_path
from aistack.config import AcmeConfig
from aistack.observability.textfile import write_textfile


@dataclass
class CertificateStatus:
    name: str
    domains: list[str]
    installed: bool
    placeholder: bool
    not_after: datetime.datetime | None
    renew_at: datetime.datetime | None
    due_reason: str
    state: CertificateState
    account_key_rolled_over: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "certificate": self.name,
            "domains": self.domains,
            "installed": self.installed,
            "placeholder": self.placeholder,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "renew_at": self.renew_at.isoformat() if self.renew_at else None,
            "due": self.due_reason,
            "last_success": self.state.last_success,
            "last_error": self.state.last_error,
            "consecutive_failures": self.state.consecutive_failures,
            "failures_total": self.state.failures_total,
            "renewals_total": self.state.renewals_total,
            "next_attempt": self.state.next_attempt,
            "deploy_hook_failures_total": self.state.deploy_hook_failures_total,
            "last_deploy_hook_error": self.state.last_deploy_hook_error,
            "revoked": self.state.revoked,
            "account_key_rolled_over": self.account_key_rolled_over,
        }


def certificate_status(
    config: AcmeConfig, now: datetime.datetime | None = None
) -> CertificateStatus:
    now = now or datetime.datetime.now(datetime.UTC)
    name = config.certificate_name
    installed = certfiles.read_installed(Path(config.cert_dir), name, facts_path(config))
    state = CertificateState.load(state_path(config))
    due = judge(config, installed, state, now)
    return CertificateStatus(
        name=config.certificate_name,
        domains=list(config.domains),
        installed=installed is not None,
        placeholder=installed.placeholder if installed else False,
        not_after=installed.not_after if installed else None,
        renew_at=due.renew_at,
        due_reason=due.reason,
        state=state,
        account_key_rolled_over=AccountStore(
            Path(config.state_dir), config.directory
        ).rolled_over(),
    )


def format_status(status: CertificateStatus) -> str:
    def stamp(value: datetime.datetime | str | None) -> str:
        if value is None:
            return "never"
        return value if isinstance(value, str) else value.strftime("%Y-%m-%dT%H:%M:%SZ")

    lines = [
        f"{status.name} ({', '.join(status.domains)})",
        "  installed: "
        + ("no" if not status.installed else "placeholder" if status.placeholder else "yes"),
        f"  expires: {stamp(status.not_after)}",
        f"  next renewal: {stamp(status.renew_at) if status.renew_at else 'now'}"
        f" ({status.due_reason})",
        f"  last success: {stamp(status.state.last_success)}",
        f"  renewals: {status.state.renewals_total}, failures: {status.state.failures_total}",
    ]
    if status.state.revoked:
        revoked = status.state.revoked
        lines.append(
            f"  revoked: serial {revoked.get('serial')} at {revoked.get('at')}"
            f" ({revoked.get('reason')})"
        )
    if status.account_key_rolled_over:
        lines.append(f"  account key: rolled over at {status.account_key_rolled_over}")
    if status.state.last_deploy_hook_error:
        lines.append(
            f"  deploy hook: {status.state.last_deploy_hook_error} "
            f"({status.state.deploy_hook_failures_total} failures in all)"
        )
    if status.state.last_error:
        error = status.state.last_error
        lines.append(f"  last error ({error.get('at', '?')}): {error.get('message')}")
        if status.state.next_attempt:
            lines.append(f"  next attempt: {status.state.next_attempt}")
    return "\n".join(lines)


class StatusCollector(Collector):
    """The figures of every certificate, one series per certificate (label `certificate`)."""

    def __init__(self, statuses: list[CertificateStatus]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Any]:
        expiry = GaugeMetricFamily(
            "aistack_acme_certificate_expiry_timestamp_seconds",
            "When the installed certificate expires (0 while only the placeholder stands)",
            labels=["certificate"],
        )
        failures = CounterMetricFamily(
            "aistack_acme_renewal_failures",
            "Failed issuance or renewal attempts",
            labels=["certificate"],
        )
        renewals = CounterMetricFamily(
            "aistack_acme_renewals", "Certificates issued and installed", labels=["certificate"]
        )
        success = GaugeMetricFamily(
            "aistack_acme_last_success_timestamp_seconds",
            "When a certificate was last issued and installed",
            labels=["certificate"],
        )
        consecutive = GaugeMetricFamily(
            "aistack_acme_consecutive_failures",
            "Failed attempts since the last success (0 when the last attempt worked)",
            labels=["certificate"],
        )
        placeholder = GaugeMetricFamily(
            "aistack_acme_placeholder",
            "1 while the self-signed placeholder stands in for the certificate",
            labels=["certificate"],
        )
        hook = CounterMetricFamily(
            "aistack_acme_deploy_hook_failures",
            "Deploy hook runs that failed (the certificate stayed installed)",
            labels=["certificate"],
        )
        for status in self._statuses:
            name, state = [status.name], status.state
            not_after = None if status.placeholder else status.not_after
            expiry.add_metric(name, not_after.timestamp() if not_after else 0)
            failures.add_metric(name, state.failures_total)
            renewals.add_metric(name, state.renewals_total)
            last = state.last_success
            success.add_metric(
                name, datetime.datetime.fromisoformat(last).timestamp() if last else 0
            )
            consecutive.add_metric(name, state.consecutive_failures)
            placeholder.add_metric(name, 1 if status.placeholder else 0)
            hook.add_metric(name, state.deploy_hook_failures_total)
        yield from (expiry, failures, renewals, success, consecutive, placeholder, hook)


def write_metrics_file(path: Path, statuses: list[CertificateStatus]) -> None:
    write_textfile(path, StatusCollector(statuses))
