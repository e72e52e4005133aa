"""`aistack acme renew --dry-run` against a real pebble: a complete order, and nothing of
the real certificate changes (files, state, account, marker, hook)."""

from __future__ import annotations

import socket
from pathlib import Path

from aistack.config import PRODUCTION_DIRECTORY, STAGING_DIRECTORY, AcmeConfig
from tests.test_acme import aistack, config_file, pebble

__all__ = ["pebble"]  # the module's pebble, a fixture


def snapshot(directory: Path, leave_out: str = "dry-run") -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and leave_out not in path.relative_to(directory).parts
    }


def test_a_dry_run_orders_a_certificate_and_keeps_nothing(tmp_path, pebble):
    hook_ran = tmp_path / "hook-ran"
    path = config_file(tmp_path, pebble, deploy_hook=f"touch {hook_ran}")
    result = aistack("acme", "renew", "--config", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # no `changed` line: nothing to reload
    assert "dry run: issued (dry run against https://" in result.stderr
    assert "nothing was installed or recorded" in result.stderr
    assert "event=acme.dry_run_issued" in result.stderr
    assert not (tmp_path / "certs").exists()  # not even the placeholder
    assert snapshot(tmp_path / "state") == {}  # only the dry run's own account
    assert list((tmp_path / "state" / "dry-run" / "accounts").iterdir())
    assert not hook_ran.exists()


def test_a_dry_run_after_a_real_issuance_changes_none_of_it(tmp_path, pebble):
    path = config_file(tmp_path, pebble)
    assert aistack("acme", "renew", "--config", str(path)).returncode == 0
    marker = tmp_path / "state" / "www.aistack.test.changed"
    marker.unlink()  # as `acme reload` leaves it after reloading
    certs, state = snapshot(tmp_path / "certs"), snapshot(tmp_path / "state")
    for _ in range(2):  # the dry run's account is found again the second time
        result = aistack("acme", "renew", "--config", str(path), "--dry-run", "--force")
        assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path / "certs") == certs
    assert snapshot(tmp_path / "state") == state
    assert not marker.exists()


def test_a_failed_dry_run_exits_1_and_writes_nothing(tmp_path, pebble):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config_file(tmp_path, pebble, http_address=f"127.0.0.1:{port}")
        result = aistack("acme", "renew", "--config", str(path), "--dry-run")
    assert result.returncode == 1
    assert "dry run failed: cannot listen on acme.http_address" in result.stderr
    assert not (tmp_path / "certs").exists()
    assert snapshot(tmp_path / "state") == {}


def test_a_dry_run_of_lets_encrypt_production_goes_to_its_staging():
    assert AcmeConfig(domains=["a.example.org"]).rehearsal_directory == STAGING_DIRECTORY
    assert AcmeConfig(staging=True).rehearsal_directory == STAGING_DIRECTORY
    private = "https://ca.internal:14000/dir"
    assert AcmeConfig(directory_url=private).rehearsal_directory == private
    assert PRODUCTION_DIRECTORY != STAGING_DIRECTORY
