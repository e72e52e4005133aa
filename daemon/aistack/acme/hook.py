"""The deploy hook: one shell command after a certificate changed, as certbot's
`--deploy-hook` (the roadmap reloads `podman exec local-ai-nginx nginx -s reload`).

It runs with the certificate's name and paths in its environment: ours (`AISTACK_*`) and
certbot's (`RENEWED_LINEAGE`, `RENEWED_DOMAINS`), so a certbot hook script runs as it is.
A hook that fails, hangs past its timeout or cannot start is logged with its exit status
and the end of its output, and counted; the new certificate stays installed, since the
hook only tells consumers about a certificate that is already in place. On NixOS,
`reloadServices` (`aistack acme reload`) is the way; this is for everyone else.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from aistack.observability.logs import EventLog

log = EventLog("acme")
OUTPUT_TAIL = 500  # characters of the hook's output kept in the log line


def hook_environment(name: str, live: Path, domains: list[str]) -> dict[str, str]:
    return {
        **os.environ,
        "AISTACK_CERTIFICATE": name,
        "AISTACK_DOMAINS": " ".join(domains),
        "AISTACK_CERT_DIR": str(live),
        "AISTACK_CERT": str(live / "cert.pem"),
        "AISTACK_CHAIN": str(live / "chain.pem"),
        "AISTACK_FULLCHAIN": str(live / "fullchain.pem"),
        "AISTACK_KEY": str(live / "key.pem"),
        "RENEWED_LINEAGE": str(live),
        "RENEWED_DOMAINS": " ".join(domains),
    }


def run_deploy_hook(
    command: str, name: str, live: Path, domains: list[str], timeout: float
) -> str | None:
    """Run the hook; None when it exited 0, else what went wrong, in one line."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            env=hook_environment(name, live, domains),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        error = f"the deploy hook did not finish within {timeout:g} s (killed)"
        log.error("acme.deploy_hook_failed", certificate=name, error=error)
        return error
    except OSError as failure:
        error = f"the deploy hook could not start: {failure.strerror or failure}"
        log.error("acme.deploy_hook_failed", certificate=name, error=error)
        return error
    seconds = f"{time.monotonic() - started:.1f}"
    output = (result.stderr or result.stdout).strip()[-OUTPUT_TAIL:]
    if result.returncode != 0:
        error = f"the deploy hook exited with {result.returncode}"
        log.error(
            "acme.deploy_hook_failed",
            certificate=name,
            error=error,
            seconds=seconds,
            output=output,
        )
        return error
    log.info("acme.deploy_hook_ran", certificate=name, seconds=seconds)
    return None
