"""The rig's Machine driver keeps the semantics of nixpkgs' test driver the VM test scripts
rely on (nixos/lib/test-driver/src/test_driver/machine.py), checked against one real
container booting systemd: a failing `succeed` raises naming the command and its status,
`wait_for_unit` gives up on a failed unit at once, the sandboxing directives are enforced.

What it does not model: QEMU (screens, keyboards, serial consoles, snapshots); those
methods are absent, and a script calling them fails with a clear error."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.vm.machine import Driver, MachineError, RequestedAssertionFailed, rig
from tests.vm_rig import require_rig

UNITS = {
    "settled.service": ("[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"),
    "broken.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    "listener.service": (
        "[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 8000\n"
        "WorkingDirectory=/tmp\n"
    ),
    "idle.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
}
RENDERING = {
    "name": "driver",
    "nodes": {
        "probe": {
            "hostName": "probe",
            "domain": None,
            "units": UNITS,
            "wants": {
                "multi-user.target": ["settled.service", "broken.service", "listener.service"]
            },
        }
    },
    "testScript": "",
}


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    require_rig()
    with rig(RENDERING) as up:
        yield up


@pytest.fixture
def probe(driver):
    (machine,) = driver.machines
    return machine


def test_succeed_returns_stdout_and_raises_naming_a_failed_command(probe):
    assert probe.succeed("echo one", "echo two") == "one\ntwo\n"
    with pytest.raises(RequestedAssertionFailed, match=r"command `exit 3` failed \(exit code 3\)"):
        probe.succeed("true", "exit 3")


def test_commands_run_with_pipefail_as_the_driver_runs_them(probe):
    assert probe.execute("false | true")[0] == 1
    assert probe.execute("echo out; echo err >&2; exit 4") == (4, "out\n")


def test_fail_raises_when_the_command_succeeds(probe):
    assert probe.fail("echo no; exit 1") == "no\n"
    with pytest.raises(RequestedAssertionFailed, match="unexpectedly succeeded"):
        probe.fail("true")


def test_wait_for_unit_returns_for_an_active_unit_and_fails_at_once_on_a_failed_one(probe):
    probe.wait_for_unit("settled.service")
    started = time.monotonic()
    with pytest.raises(RequestedAssertionFailed, match=r'"broken\.service" reached state "failed"'):
        probe.wait_for_unit("broken.service", timeout=60)
    assert time.monotonic() - started < 30
    with pytest.raises(RequestedAssertionFailed, match="inactive and there are no pending jobs"):
        probe.wait_for_unit("idle.service", timeout=60)


def test_wait_for_open_port_and_wait_until_succeeds_time_out(probe):
    probe.wait_for_open_port(8000, timeout=60)
    with pytest.raises(RequestedAssertionFailed, match=r"timed out after .* \(timeout=2\)"):
        probe.wait_until_succeeds("false", timeout=2)
    with pytest.raises(RequestedAssertionFailed, match="timed out"):
        probe.wait_for_closed_port(8000, timeout=2)


def test_unit_properties_come_from_the_real_systemd(probe):
    assert probe.get_unit_property("broken.service", "Result") == "exit-code"
    assert probe.systemctl("is-active settled.service") == (0, "active\n")


def test_the_sandboxing_directives_are_enforced(probe):
    # What `systemd-analyze security` scores is applied, not only parsed: each directive
    # refuses what the same command does without it.
    run = "systemd-run --wait -q --pipe"
    assert probe.execute(f"{run} touch /etc/x && rm /etc/x")[0] == 0
    assert probe.execute(f"{run} -p ProtectSystem=strict touch /etc/x")[0] != 0
    assert probe.execute("test -e /etc/x")[0] != 0
    assert probe.execute(f"{run} uname -s") == (0, "Linux\n")
    denied = probe.execute(
        f"{run} -p SystemCallFilter=~uname -p SystemCallErrorNumber=EPERM uname -s 2>&1"
    )
    assert denied[0] != 0 and "Operation not permitted" in denied[1], denied


def test_a_failed_step_of_a_script_exits_1_showing_the_script_line(driver, capsys):
    script = 'with subtest("step"):\n    machine.succeed("exit 7")\n'
    with pytest.raises(SystemExit) as exit_:
        driver.run_script(script)
    assert exit_.value.code == 1
    log = capsys.readouterr().err
    assert 'Test "step" failed with error: "command `exit 7` failed (exit code 7)"' in log
    assert 'machine.succeed("exit 7")' in log


def test_a_script_using_what_the_rig_lacks_is_told_so(driver):
    with pytest.raises(MachineError, match="serial_stdout_off is not implemented"):
        driver.run_script("serial_stdout_off()\n")
    with pytest.raises(AttributeError, match="screenshot"):
        driver.run_script("machine.screenshot('x')\n")
