"""`aistack acme renew`: decide, and if due, issue and install; never lose the old pair.

A run that finds nothing due, the CA's renewal window included (`ari`), loads nothing of
the ACME client: the `acme` package and `requests` load only for an order. Nor does it
parse the certificate: its facts were kept when it was installed (`facts_path`, certfiles).

A failed attempt leaves the installed certificate as it was, is counted, logged with the
CA's problem document and kept in `state_dir/<name>.json` for `aistack acme status` and
the metrics. Attempts back off (1 h, 2 h, 4 h ... up to a day, or the CA's Retry-After if
longer) so a broken setup does not hammer the CA's rate limits.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aistack.acme import ari, certfiles, keys
from aistack.acme.due import Due, decide
from aistack.config import AcmeConfig, ConfigError
from aistack.observability.logs import EventLog

if TYPE_CHECKING:
    from aistack.acme.protocol import AcmeClient, AcmeFailure

log = EventLog("acme")
ATTEMPTS_PER_RUN = 3
RETRY_PAUSE_SECONDS = 2.0
LONGEST_PAUSE_IN_RUN = 30.0
BACKOFF_FIRST = datetime.timedelta(hours=1)
BACKOFF_MAX = datetime.timedelta(days=1)


@dataclass
class CertificateState:
    last_attempt: str | None = None
    last_success: str | None = None
    last_error: dict[str, Any] | None = None
    consecutive_failures: int = 0
    failures_total: int = 0
    renewals_total: int = 0
    next_attempt: str | None = None
    deploy_hook_failures_total: int = 0
    last_deploy_hook_error: str | None = None
    # The last certificate `acme revoke` revoked: {"serial": hex, "at": ISO 8601, "reason"}.
    revoked: dict[str, str] | None = None

    def revokes(self, installed: certfiles.Installed | None) -> bool:
        """Whether the installed certificate is the one revoked (then it is due)."""
        return (
            installed is not None
            and self.revoked is not None
            and self.revoked.get("serial") == f"{installed.serial_number:x}"
        )

    @classmethod
    def load(cls, path: Path) -> CertificateState:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**known)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private(path, json.dumps(asdict(self), indent=2).encode())


def state_path(config: AcmeConfig) -> Path:
    return Path(config.state_dir) / f"{config.certificate_name}.json"


def facts_path(config: AcmeConfig) -> Path:
    """Where what was read from the installed pair is kept (certfiles.read_installed)."""
    return Path(config.state_dir) / f"{config.certificate_name}.installed.json"


def changed_marker(config: AcmeConfig) -> Path:
    """Left by a renewal that installed a new certificate, until consumers were reloaded."""
    return Path(config.state_dir) / f"{config.certificate_name}.changed"


@dataclass
class Outcome:
    name: str
    action: str  # renewed | not-due | waiting | failed | placeholder
    due: Due
    changed: bool = False
    error: str | None = None
    problem: dict[str, Any] | None = None
    not_after: datetime.datetime | None = None
    hook_error: str | None = None

    def line(self) -> str:
        parts = [self.name, self.action]
        if self.not_after:
            parts.append(f"expires {self.not_after:%Y-%m-%dT%H:%M:%SZ}")
        if self.action == "not-due" and self.due.renew_at:
            parts.append(f"renews from {self.due.renew_at:%Y-%m-%dT%H:%M:%SZ}")
        elif self.action != "not-due":
            parts.append(f"({self.due.reason})")
        if self.error:
            parts.append(f"error: {self.error}")
        if self.hook_error:
            parts.append(f"({self.hook_error}; the certificate stays installed)")
        return " ".join(parts)


def backoff(consecutive_failures: int, retry_after: float | None) -> datetime.timedelta:
    pause = min(BACKOFF_FIRST * 2 ** max(0, consecutive_failures - 1), BACKOFF_MAX)
    if retry_after is not None:
        pause = max(pause, datetime.timedelta(seconds=retry_after))
    return pause


def ensure_placeholder(config: AcmeConfig) -> bool:
    """Stand a self-signed pair where the certificate goes, if nothing stands there."""
    cert_dir = Path(config.cert_dir)
    facts = facts_path(config)
    if certfiles.read_installed(cert_dir, config.certificate_name, facts) is not None:
        return False
    fullchain, key_pem = certfiles.make_placeholder(config.domains, config.key_type)
    certfiles.install(cert_dir, config.certificate_name, fullchain, key_pem)
    log.info("acme.placeholder_installed", certificate=config.certificate_name)
    return True


def certificates(section: AcmeConfig, names: list[str] | None = None) -> list[AcmeConfig]:
    """The certificates the section declares (only those `names` names, if given), each
    resolved to its own AcmeConfig. ConfigError when there is none, or a name is unknown."""
    every = section.each_certificate()
    if not every:
        raise ConfigError(
            "acme.domains is empty and acme.certificates names none: name at least one"
            " domain (acme.domains, acme.certificates.<name>.domains, or --domain)"
        )
    if not names:
        return every
    by_name = {certificate.certificate_name: certificate for certificate in every}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(
            f"no certificate is named {', '.join(map(repr, unknown))}; the configuration"
            f" names {', '.join(by_name)}"
        )
    return [by_name[name] for name in dict.fromkeys(names)]


def renew(
    config: AcmeConfig, *, force: bool = False, now: datetime.datetime | None = None
) -> Outcome:
    now = now or datetime.datetime.now(datetime.UTC)
    name = config.certificate_name
    cert_dir = Path(config.cert_dir)
    ensure_placeholder(config)
    installed = certfiles.read_installed(cert_dir, name, facts_path(config))
    state = CertificateState.load(state_path(config))

    offline = judge(config, installed, state, now, force=force)
    if installed is not None and not offline.due:
        # Not due by the certificate's lifetime: the CA may still want it early (ARI).
        try:
            window = ari.renewal_window(config, installed.renewal_id)
        except ari.DirectoryUnreachable as failure:
            # The CA being unreachable on a day nothing is due is no failure.
            log.warning("acme.directory_unreachable", certificate=name, error=str(failure))
            return Outcome(name, "not-due", offline, not_after=installed.not_after)
        due = offline
        if window is not None:
            due = judge(config, installed, state, now, ari_window=window)
        if not due.due:
            log.info("acme.not_due", certificate=name, renew_at=_stamp(due.renew_at))
            return Outcome(name, "not-due", due, not_after=installed.not_after)
    else:
        due = offline
    return _renew_due(config, due, state, installed, now, force)


def judge(
    config: AcmeConfig,
    installed: certfiles.Installed | None,
    state: CertificateState,
    now: datetime.datetime,
    *,
    force: bool = False,
    ari_window: ari.Window | None = None,
) -> Due:
    """`decide` for this certificate's configuration and state."""
    return decide(
        installed,
        config.domains,
        config.key_type,
        config.renew_before_days,
        now,
        ari_window=ari_window,
        force=force,
        revoked=state.revokes(installed),
    )


def dry_run(config: AcmeConfig) -> Outcome:
    """A complete order against `rehearsal_directory`, with a throwaway certificate key and
    an account of its own (`state_dir/dry-run`): nothing is installed under `cert_dir`, no
    state, account, placeholder, marker or hook of the real certificate is touched."""
    from aistack.acme.protocol import AcmeClient, AcmeFailure

    name = config.certificate_name
    directory = config.rehearsal_directory
    rehearsal = config.model_copy(update={"directory_url": directory, "staging": False})
    due = Due(True, f"dry run against {directory}")
    log.info("acme.dry_run", certificate=name, directory=directory)
    try:
        with AcmeClient(rehearsal, Path(config.state_dir) / "dry-run") as acme:
            fullchain, key_pem = _issue_with_retries(acme, rehearsal)
    except AcmeFailure as failure:
        log.error("acme.dry_run_failed", certificate=name, directory=directory, error=str(failure))
        return Outcome(name, "failed", due, error=str(failure))
    facts = certfiles.read_facts(certfiles.split_chain(fullchain)[0].encode(), key_pem)
    log.info(
        "acme.dry_run_issued",
        certificate=name,
        serial=f"{facts.serial_number:x}",
        not_after=_stamp(facts.not_after),
        installed="no",
    )
    return Outcome(name, "dry-run-issued", due, not_after=facts.not_after)


def _renew_due(
    config: AcmeConfig,
    due: Due,
    state: CertificateState,
    installed: certfiles.Installed | None,
    now: datetime.datetime,
    force: bool,
) -> Outcome:
    from aistack.acme.protocol import AcmeClient, AcmeFailure

    name = config.certificate_name
    cert_dir = Path(config.cert_dir)
    if (
        not force
        and state.next_attempt
        and now < datetime.datetime.fromisoformat(state.next_attempt)
    ):
        log.warning("acme.backing_off", certificate=name, next_attempt=state.next_attempt)
        return Outcome(
            name,
            "waiting",
            due,
            error=f"failed {state.consecutive_failures} times; next attempt "
            f"at {state.next_attempt} (--force tries now)",
            not_after=_not_after(installed),
        )

    log.info("acme.renewing", certificate=name, reason=due.reason)
    try:
        with AcmeClient(config, Path(config.state_dir)) as acme:
            # Not for a placeholder or a first issue: only a CA's certificate has an ARI id.
            replaces = installed.renewal_id if installed and not installed.placeholder else None
            fullchain, key_pem = _issue_with_retries(acme, config, replaces)
    except AcmeFailure as failure:
        return _failed(config, state, due, failure, now, installed)
    try:
        certfiles.install(cert_dir, name, fullchain, key_pem)
    except OSError as error:
        # Disk full, read-only file system: the old pair stays live; record and retry later.
        reason = error.strerror or error.__class__.__name__
        not_installed = AcmeFailure(
            f"installing the new certificate in {cert_dir} failed: {reason}", retryable=False
        )
        return _failed(config, state, due, not_installed, now, installed)
    fresh = certfiles.read_installed(cert_dir, name, facts_path(config))
    assert fresh is not None
    state.last_attempt = state.last_success = now.isoformat()
    state.last_error = None
    state.consecutive_failures = 0
    state.next_attempt = None
    state.renewals_total += 1
    state.save(state_path(config))
    changed_marker(config).write_text(now.isoformat() + "\n")
    log.info(
        "acme.renewed",
        certificate=name,
        serial=f"{fresh.serial_number:x}",
        not_after=_stamp(fresh.not_after),
    )
    hook_error = _deploy(config, state)
    return Outcome(
        name, "renewed", due, changed=True, not_after=fresh.not_after, hook_error=hook_error
    )


def _deploy(config: AcmeConfig, state: CertificateState) -> str | None:
    """The deploy hook, if one is set; its failure is counted, never undone."""
    if not config.deploy_hook:
        return None
    from aistack.acme.hook import run_deploy_hook

    name = config.certificate_name
    error = run_deploy_hook(
        config.deploy_hook,
        name,
        certfiles.live_path(Path(config.cert_dir), name),
        list(config.domains),
        config.deploy_hook_timeout_seconds,
    )
    state.last_deploy_hook_error = error
    if error is not None:
        state.deploy_hook_failures_total += 1
    state.save(state_path(config))
    return error


def _issue_with_retries(
    acme: AcmeClient, config: AcmeConfig, replaces: str | None = None
) -> tuple[str, bytes]:
    from aistack.acme.challenges import ChallengeSetupError, open_responder
    from aistack.acme.protocol import CA_ERRORS, AcmeFailure, as_failure

    attempt = 0
    while True:
        attempt += 1
        key_pem = keys.to_pem(keys.generate(config.key_type))
        try:
            acme.register()
            responder = functools.partial(open_responder, config)
            fullchain = acme.issue(config.domains, key_pem, responder, config.profile, replaces)
            return fullchain, key_pem
        except ChallengeSetupError as error:
            raise AcmeFailure(str(error), retryable=False) from None
        except CA_ERRORS as error:
            failure = as_failure(error, acme.net)
        except AcmeFailure as error:
            failure = error
        pause = (
            failure.retry_after
            if failure.retry_after is not None
            else RETRY_PAUSE_SECONDS * attempt
        )
        if not failure.retryable or attempt >= ATTEMPTS_PER_RUN or pause > LONGEST_PAUSE_IN_RUN:
            raise failure
        log.warning("acme.retrying", attempt=attempt, pause=f"{pause:.0f}", error=str(failure))
        time.sleep(pause)


def _failed(
    config: AcmeConfig,
    state: CertificateState,
    due: Due,
    failure: AcmeFailure,
    now: datetime.datetime,
    installed: certfiles.Installed | None,
) -> Outcome:
    state.last_attempt = now.isoformat()
    state.consecutive_failures += 1
    state.failures_total += 1
    state.last_error = {"at": now.isoformat(), "message": str(failure), "problem": failure.problem}
    state.next_attempt = (
        now + backoff(state.consecutive_failures, failure.retry_after)
    ).isoformat()
    state.save(state_path(config))
    log.error(
        "acme.renewal_failed",
        certificate=config.certificate_name,
        error=str(failure),
        problem=json.dumps(failure.problem) if failure.problem else "",
        next_attempt=state.next_attempt,
    )
    return Outcome(
        config.certificate_name,
        "failed",
        due,
        error=str(failure),
        problem=failure.problem,
        not_after=_not_after(installed),
    )


def _not_after(installed: certfiles.Installed | None) -> datetime.datetime | None:
    return installed.not_after if installed is not None else None


def _stamp(value: datetime.datetime | None) -> str:
    return value.isoformat() if value else ""
