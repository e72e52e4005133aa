"""`aistack acme renew | placeholder | reload | status | revoke | rollover`: the ACME
client's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aistack.command import config_argument, load_config
from aistack.errors import EXIT_FAILURE, EXIT_OK, Failure

if TYPE_CHECKING:
    from aistack.config import AcmeConfig

# RFC 5280 section 5.3.1: the reasons a subscriber may give, and their codes.
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}


def register(commands: Any) -> None:
    acme = commands.add_parser("acme", help="TLS certificates from an ACME CA (Let's Encrypt)")
    acme_commands = acme.add_subparsers(dest="acme_command", required=True)

    renew = acme_commands.add_parser(
        "renew",
        help="issue or renew each certificate that is due; exit 0 also when nothing was due",
        description="Prints one line per certificate: NAME renewed|not-due|waiting|failed. "
        "A line 'changed NAME' on stdout says consumers (nginx, the gateway) must reload.",
    )
    renew.add_argument(
        "--config", metavar="FILE", help="configuration file (.toml or .json); optional here"
    )
    roadmap = renew.add_argument_group(
        "certbot's flags", "on top of the configuration file's acme keys, or without one"
    )
    roadmap.add_argument(
        "--domain",
        action="append",
        dest="domains",
        metavar="NAME",
        help="repeatable: the names of the acme section's own certificate (acme.domains)",
    )
    roadmap.add_argument("--email", metavar="ADDRESS")
    roadmap.add_argument("--staging", action="store_true", help="Let's Encrypt's staging directory")
    roadmap.add_argument(
        "--webroot", metavar="DIR", help="answer HTTP-01 from DIR, for every certificate"
    )
    roadmap.add_argument(
        "--agree-tos",
        "--accept-terms",
        action="store_true",
        dest="accept_terms",
        help="agree to the CA's terms of service (acme.accept_terms)",
    )
    roadmap.add_argument("--server", metavar="URL", help="the ACME directory (acme.directory_url)")
    roadmap.add_argument("--cert-dir", metavar="DIR", help="acme.cert_dir")
    roadmap.add_argument("--state-dir", metavar="DIR", help="acme.state_dir")
    cert_name_argument(renew)
    renew.add_argument("--force", action="store_true", help="renew now, due or not")
    renew.add_argument(
        "--dry-run",
        action="store_true",
        help="order a certificate from the staging directory (or the configured one when it "
        "is not Let's Encrypt's production) and keep nothing: exit 0 only if it was issued",
    )
    renew.add_argument(
        "--deploy-hook",
        metavar="CMD",
        help="run CMD with /bin/sh once after a certificate changed (instead of "
        "its deploy_hook); it sees AISTACK_CERTIFICATE, AISTACK_FULLCHAIN, AISTACK_KEY, "
        "RENEWED_LINEAGE ...",
    )
    renew.add_argument(
        "--metrics-file",
        type=Path,
        metavar="FILE",
        help="write the certificate's Prometheus figures here (node_exporter textfile)",
    )
    renew.set_defaults(run=run_renew)

    placeholder = acme_commands.add_parser(
        "placeholder",
        help="put a self-signed placeholder where each certificate goes, if none is there yet",
    )
    config_argument(placeholder)
    cert_name_argument(placeholder)
    placeholder.set_defaults(run=run_placeholder)

    reload = acme_commands.add_parser(
        "reload",
        help="reload these units if the last renewal changed a certificate (then forget it)",
    )
    config_argument(reload)
    cert_name_argument(reload)
    reload.add_argument("units", nargs="+", metavar="UNIT", help="e.g. nginx.service")
    reload.set_defaults(run=run_reload)

    status = acme_commands.add_parser(
        "status", help="per certificate: expiry, next renewal, last error"
    )
    config_argument(status)
    cert_name_argument(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--metrics-file", type=Path, metavar="FILE", help="also write the Prometheus figures"
    )
    status.set_defaults(run=run_status)

    revoke = acme_commands.add_parser(
        "revoke",
        help="revoke the installed certificate NAME; the next acme renew replaces it",
    )
    revoke.add_argument(
        "name",
        metavar="NAME",
        help="the certificate: its acme.certificates key, or the first of acme.domains",
    )
    revoke.add_argument(
        "--reason",
        choices=REVOCATION_REASONS,
        default="unspecified",
        help="RFC 5280's reason (default: unspecified)",
    )
    config_argument(revoke)
    revoke.set_defaults(run=run_revoke)

    rollover = acme_commands.add_parser(
        "rollover", help="replace the ACME account key by a new one, keeping the account"
    )
    config_argument(rollover)
    rollover.set_defaults(run=run_rollover)


def cert_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cert-name",
        action="append",
        dest="cert_names",
        metavar="NAME",
        help="only this certificate (repeatable; default: every certificate)",
    )


def _write_metrics(section: AcmeConfig, path: Path | None) -> None:
    """Every certificate's figures, whichever this run touched: one file holds them all."""
    if path is None:
        return
    from aistack.acme.renew import certificates
    from aistack.acme.status import certificate_status, write_metrics_file

    write_metrics_file(path, [certificate_status(c) for c in certificates(section)])


FLAG_OF = {
    "domains": "--domain",
    "email": "--email",
    "webroot": "--webroot",
    "directory_url": "--server",
    "cert_dir": "--cert-dir",
    "state_dir": "--state-dir",
}


def command_line_acme(args: argparse.Namespace) -> dict[str, Any]:
    """The acme keys the flags set; only those given."""
    given: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("domains", "email", "cert_dir", "state_dir")
        if getattr(args, key) is not None
    }
    if args.server is not None:
        given["directory_url"] = args.server
    if args.webroot is not None:
        given |= {"challenge": "webroot", "webroot": args.webroot}
    if args.staging:
        given["staging"] = True
    if args.accept_terms:
        given["accept_terms"] = True
    return given


def run_renew(args: argparse.Namespace) -> int:
    from aistack.acme.renew import certificates
    from aistack.config import acme_config_with

    section = acme_config_with(args.config, command_line_acme(args), FLAG_OF)
    chosen = certificates(section, args.cert_names)
    # What a certificate may set for itself, a flag sets for every certificate; the
    # other flags set the section's keys (--domain: the section's own certificate).
    for_each: dict[str, Any] = {}
    if args.webroot is not None:
        for_each |= {"challenge": "webroot", "webroot": args.webroot}
    if args.deploy_hook is not None:
        for_each["deploy_hook"] = args.deploy_hook
    if for_each:
        chosen = [certificate.with_settings(**for_each) for certificate in chosen]
    if args.dry_run:
        return _dry_run(chosen)
    status = EXIT_OK
    try:
        for config in chosen:
            if not _renew_one(config, args.force):
                status = EXIT_FAILURE
    finally:
        _write_metrics(section, args.metrics_file)
    return status


def _renew_one(config: AcmeConfig, force: bool) -> bool:
    """Renew one certificate if due and say so; False if it failed or is backing off.

    An error no code path expected (a bug, a file in the way) fails this certificate
    only, with its traceback in the log: the others are still renewed on time."""
    from aistack.acme.renew import log, renew

    try:
        outcome = renew(config, force=force)
    except Exception as error:
        log.exception("acme.renewal_crashed", certificate=config.certificate_name)
        print(f"{config.certificate_name} failed (unexpected: {error!r})", file=sys.stderr)
        return False
    print(outcome.line(), file=sys.stderr)
    if outcome.changed:
        print(f"changed {outcome.name}", flush=True)
    return outcome.action not in ("failed", "waiting")


def _dry_run(chosen: list[AcmeConfig]) -> int:
    from aistack.acme.renew import dry_run

    status = EXIT_OK
    for config in chosen:
        outcome = dry_run(config)
        if outcome.action == "failed":
            print(f"{outcome.name} dry run failed: {outcome.error}", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        expires = f"{outcome.not_after:%Y-%m-%dT%H:%M:%SZ}" if outcome.not_after else "?"
        print(
            f"{outcome.name} dry run: issued ({outcome.due.reason}, expires {expires}); "
            "nothing was installed or recorded",
            file=sys.stderr,
        )
    return status


def _chosen(args: argparse.Namespace) -> list[AcmeConfig]:
    from aistack.acme.renew import certificates

    return certificates(load_config(args.config).acme, args.cert_names)


def run_placeholder(args: argparse.Namespace) -> int:
    from aistack.acme.renew import ensure_placeholder

    for config in _chosen(args):
        made = ensure_placeholder(config)
        print(
            f"{config.certificate_name}: "
            + ("placeholder installed" if made else "a certificate is already in place"),
            file=sys.stderr,
        )
    return EXIT_OK


def run_reload(args: argparse.Namespace) -> int:
    import subprocess

    from aistack.acme.renew import changed_marker

    markers = {c.certificate_name: changed_marker(c) for c in _chosen(args)}
    changed = {name: marker for name, marker in markers.items() if marker.exists()}
    if not changed:
        print(f"{', '.join(markers)}: unchanged, nothing reloaded", file=sys.stderr)
        return EXIT_OK
    try:
        result = subprocess.run(["systemctl", "try-reload-or-restart", *args.units])
    except OSError as error:
        raise Failure(f"cannot run systemctl: {error.strerror}") from None
    if result.returncode != 0:
        # The markers stay: the next run tries the reload again.
        raise Failure(f"systemctl try-reload-or-restart failed ({result.returncode})")
    for marker in changed.values():
        marker.unlink(missing_ok=True)
    print(f"{', '.join(changed)}: reloaded {' '.join(args.units)}", file=sys.stderr)
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    from aistack.acme.status import certificate_status, format_status, write_metrics_file

    statuses = [certificate_status(config) for config in _chosen(args)]
    if args.metrics_file:
        write_metrics_file(args.metrics_file, statuses)
    if args.json:
        print(json.dumps([status.as_json() for status in statuses], indent=2))
    else:
        print("\n\n".join(format_status(status) for status in statuses))
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    from aistack.acme.renew import certificates
    from aistack.acme.revoke import revoke

    (config,) = certificates(load_config(args.config).acme, [args.name])
    print(revoke(config, args.reason), file=sys.stderr)
    return EXIT_OK


def run_rollover(args: argparse.Namespace) -> int:
    from aistack.acme.rollover import roll_over

    # The account is the section's, shared by every certificate.
    print(roll_over(load_config(args.config).acme), file=sys.stderr)
    return EXIT_OK
