"""The deploy hook (`acme.deploy_hook`, `--deploy-hook`) against a real pebble: it runs
once after the certificate changed, with its name and paths; its failure is logged and
counted and never undoes the install."""

from __future__ import annotations

import json
import shlex

import pytest

from aistack.acme.renew import CertificateState, renew, state_path
from aistack.config import validate_config
from tests.test_acme import acme_config, aistack, config_file, leaf, live, metric_value, pebble

__all__ = ["pebble"]  # the module's pebble, a fixture


def recording_hook(tmp_path) -> str:
    """A hook that appends its environment's certificate variables to a file, one run a line."""
    record = tmp_path / "hook-runs.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os\n"
        f"with open({str(record)!r}, 'a') as out:\n"
        "    keys = [k for k in os.environ if k.startswith(('AISTACK_', 'RENEWED_'))]\n"
        "    out.write(json.dumps({k: os.environ[k] for k in keys}) + '\\n')\n"
    )
    return f"python3 {shlex.quote(str(script))}"


def runs(tmp_path) -> list[dict[str, str]]:
    record = tmp_path / "hook-runs.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_the_hook_runs_once_after_a_change_with_the_certificates_paths(tmp_path, pebble):
    config = acme_config(tmp_path, pebble, deploy_hook=recording_hook(tmp_path))
    outcome = renew(config)
    assert outcome.action == "renewed" and outcome.hook_error is None
    [run] = runs(tmp_path)
    directory = live(config)
    assert run["AISTACK_CERTIFICATE"] == config.certificate_name
    assert run["AISTACK_DOMAINS"] == " ".join(config.domains) == run["RENEWED_DOMAINS"]
    assert run["AISTACK_CERT_DIR"] == str(directory) == run["RENEWED_LINEAGE"]
    for variable, file in (
        ("AISTACK_FULLCHAIN", "fullchain.pem"),
        ("AISTACK_KEY", "key.pem"),
        ("AISTACK_CERT", "cert.pem"),
        ("AISTACK_CHAIN", "chain.pem"),
    ):
        assert run[variable] == str(directory / file)
    assert renew(config).action == "not-due"
    assert len(runs(tmp_path)) == 1  # nothing changed: the hook does not run


def test_a_failing_hook_is_logged_and_counted_and_the_certificate_stays(tmp_path, pebble):
    hook = "echo 'Error: no such container: local-ai-nginx' >&2; exit 3"
    path = config_file(tmp_path, pebble, deploy_hook=hook)
    metrics = tmp_path / "acme.prom"
    result = aistack("acme", "renew", "--config", str(path), "--metrics-file", str(metrics))
    assert result.returncode == 0, result.stderr  # the renewal itself worked
    assert result.stdout == "changed www.aistack.test\n"
    assert "event=acme.deploy_hook_failed" in result.stderr
    assert "the deploy hook exited with 3" in result.stderr
    assert "no such container: local-ai-nginx" in result.stderr
    assert "the certificate stays installed" in result.stderr
    config = acme_config(tmp_path, pebble)
    assert leaf(
        config
    ).serial_number  # installed, and readable (pebble 2.6 leaves the subject empty)
    state = CertificateState.load(state_path(config))
    assert state.deploy_hook_failures_total == 1 and state.renewals_total == 1
    assert metric_value(metrics.read_text(), "aistack_acme_deploy_hook_failures_total") == 1
    [status] = json.loads(aistack("acme", "status", "--config", str(path), "--json").stdout)
    assert status["deploy_hook_failures_total"] == 1
    assert status["last_deploy_hook_error"] == "the deploy hook exited with 3"


def test_a_hook_past_its_timeout_is_killed_and_counted(tmp_path, pebble):
    config = acme_config(tmp_path, pebble, deploy_hook="sleep 30", deploy_hook_timeout_seconds=1)
    outcome = renew(config)
    assert outcome.action == "renewed" and outcome.changed
    assert outcome.hook_error == "the deploy hook did not finish within 1 s (killed)"
    assert CertificateState.load(state_path(config)).deploy_hook_failures_total == 1


def test_the_command_line_hook_replaces_the_configured_one(tmp_path, pebble):
    path = config_file(tmp_path, pebble, deploy_hook="exit 9")
    result = aistack(
        "acme", "renew", "--config", str(path), "--deploy-hook", recording_hook(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "event=acme.deploy_hook_ran" in result.stderr
    assert len(runs(tmp_path)) == 1


@pytest.mark.parametrize("timeout", [0, -1, 3601])
def test_a_bad_hook_timeout_is_refused(timeout):
    with pytest.raises(Exception, match="deploy_hook_timeout_seconds"):
        validate_config(
            {"qdrant": {"path": "/x"}, "acme": {"deploy_hook_timeout_seconds": timeout}}
        )
