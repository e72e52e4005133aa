"""The part of nixpkgs' test-driver `Machine` API the scripts in nix/tests/*.nix use, on
rendered nodes booted by tests/vm/container.py.

Semantics follow nixos/lib/test-driver/src/test_driver/machine/__init__.py (BaseMachine and
its QEMU and nspawn machines) and driver.py: commands run as root through `bash -c` with
`set -euo pipefail`, `timeout N` in front when a timeout is given, and only stdout is
returned (stderr is the machine's log, as the serial console is there); `succeed` raises
with the command and shows its output, `wait_for_unit` fails on a failed or inactive unit
with no jobs left, the `retry` loops poll once a second. Messages go to stderr in the
driver's terminal format (`machine: message`, `subtest: NAME`, `(finished: ..., in N
seconds)`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn
from unittest import TestCase

from tests.vm import container as ct
from tests.vm import install


class MachineError(Exception):
    """Something is wrong that the test script cannot do anything about (nixpkgs' name)."""


class RequestedAssertionFailed(AssertionError):
    """A failed `succeed`, `fail`, `wait_*`, ... (nixpkgs' name and base class)."""


class Logger:
    """nixpkgs' TerminalLogger: messages on stderr, nested steps timed."""

    def __init__(self) -> None:
        self.colour = sys.stderr.isatty()
        self.lock = threading.Lock()

    def log(self, message: str, machine: str | None = None) -> None:
        with self.lock:
            print(f"{machine}: {message}" if machine else message, file=sys.stderr, flush=True)

    def log_serial(self, message: str, machine: str) -> None:
        self.log(
            f"\x1b[2m{machine} # {message}\x1b[0m" if self.colour else f"{machine} # {message}"
        )

    def log_test_error(self, message: str) -> None:
        self.log(("\x1b[31m!!! \x1b[0m" if self.colour else "!!! ") + message)

    @contextlib.contextmanager
    def nested(self, message: str, machine: str | None = None) -> Iterator[None]:
        self.log(f"\x1b[1;32m{message}\x1b[0m" if self.colour else message, machine)
        started = time.time()
        yield
        self.log(f"(finished: {message}, in {time.time() - started:.2f} seconds)", machine)

    # The driver's `log` symbol is the logger; scripts call log.info(...).
    def info(self, message: str) -> None:
        self.log(message)

    warning = error = info


def retry(fn: Callable[[bool], bool], timeout_seconds: int = 900) -> None:
    """Call `fn(False)` once a second until it is true; then `fn(True)` a last time
    (nixpkgs' retry, including its error message)."""
    start_time = time.monotonic()
    while time.monotonic() - start_time < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start_time
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={timeout_seconds})"
        )


class Machine:
    """A handle to one booted node."""

    def __init__(self, name: str, box: ct.Container, logger: Logger) -> None:
        self.name = name
        self.container = box
        self.logger = logger

    def __repr__(self) -> str:
        return f"<Machine '{self.name}'>"

    # --- logging -------------------------------------------------------------------

    def log(self, msg: str) -> None:
        self.logger.log(msg, self.name)

    def nested(self, msg: str) -> contextlib.AbstractContextManager[None]:
        return self.logger.nested(msg, self.name)

    # --- lifecycle -----------------------------------------------------------------

    def is_up(self) -> bool:
        return self.container.leader is not None

    def start(self) -> None:
        """Boot the node if it is not running (the rig boots all nodes before the script,
        so this matters after `shutdown`); unlike QEMU's, it returns once booted."""
        if self.is_up():
            return
        with self.nested("starting container"):
            self.container.boot()
            self.container.wait_booted()

    def shutdown(self) -> None:
        """Power the node off and wait for it (its disk, the overlay, stays for `start`)."""
        if not self.is_up():
            return
        with self.nested("waiting for the container to power off"):
            self.container.poweroff()

    def wait_for_shutdown(self) -> None:
        process = self.container.process
        if process is None or not self.is_up():
            return
        with self.nested("waiting for the container to power off"):
            process.wait()
            self.container.leader = None

    def crash(self) -> None:
        """A sudden power failure: the container's processes are killed."""
        if not self.is_up():
            return
        self.log("forced crash")
        ct.kill_cgroup(self.container.name)
        if self.container.process is not None:
            self.container.process.wait()
        self.container.leader = None

    # --- commands ------------------------------------------------------------------

    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]:
        """Run `bash -c 'set -euo pipefail; COMMAND'` as root; returns (status, stdout).
        stderr is logged as the machine's console output. check_return=False gives -1 as
        the status and check_output=False (-2, ""), as the driver does."""
        self.start()
        result = self.container.run(f"set -euo pipefail; {command}", timeout=timeout)
        for line in result.stderr.splitlines():
            self.logger.log_serial(line, self.name)
        if not check_output:
            return (-2, "")
        if not check_return:
            return (-1, result.stdout)
        return (result.status, result.stdout)

    def succeed(self, *commands: str, timeout: int | None = None) -> str:
        """Run each command, raising if one exits nonzero; returns their stdout."""
        output = ""
        for command in commands:
            with self.nested(f"must succeed: {command}"):
                (status, out) = self.execute(command, timeout=timeout)
                if status != 0:
                    self.log(f"output: {out}")
                    raise RequestedAssertionFailed(
                        f"command `{command}` failed (exit code {status})"
                    )
                output += out
        return output

    def fail(self, *commands: str, timeout: int | None = None) -> str:
        """Like `succeed`, but raising if a command exits zero."""
        output = ""
        for command in commands:
            with self.nested(f"must fail: {command}"):
                (status, out) = self.execute(command, timeout=timeout)
                if status == 0:
                    raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
                output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        return self._wait_for_status(command, timeout, "success", lambda status: status == 0)

    def wait_until_fails(self, command: str, timeout: int = 900) -> str:
        return self._wait_for_status(command, timeout, "failure", lambda status: status != 0)

    def _wait_for_status(
        self, command: str, timeout: int, what: str, wanted: Callable[[int], bool]
    ) -> str:
        """Run `command` once a second until its status is `wanted`; its last output."""
        output = ""

        def check(_last_try: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return wanted(status)

        with self.nested(f"waiting for {what}: {command}"):
            retry(check, timeout)
            return output

    def sleep(self, secs: int) -> None:
        self.succeed(f"sleep {secs}")

    # --- systemd -------------------------------------------------------------------

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(
                f"su -l {user} --shell /bin/sh -c "
                "$'XDG_RUNTIME_DIR=/run/user/`id -u` "
                f"systemctl --user {q}'"
            )
        return self.execute(f"systemctl {q}")

    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"start {jobname}", user)

    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        return self.systemctl(f"stop {jobname}", user)

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        status, lines = self.systemctl(f'--no-pager show "{unit}"', user)
        if status != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl info for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {status}"
            )
        line_pattern = re.compile(r"^([^=]+)=(.*)$")
        return {
            match[1]: match[2]
            for match in (line_pattern.match(line) for line in lines.split("\n"))
            if match
        }

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        status, lines = self.systemctl(f'--no-pager show "{unit}" --property="{property}"', user)
        if status != 0:
            raise RequestedAssertionFailed(
                f'retrieving systemctl property "{property}" for unit "{unit}"'
                + ("" if user is None else f' under user "{user}"')
                + f" failed with exit code {status}"
            )
        invalid_output_message = (
            f'systemctl show --property "{property}" "{unit}"produced invalid output: {lines}'
        )
        match = re.match(r"^([^=]+)=(.*)$", lines)
        assert match is not None, invalid_output_message
        assert match[1] == property, invalid_output_message
        return match[2]

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None:
        """Wait for the unit to be active; raise when it is failed, or inactive with no
        jobs pending (it will not start by itself), or after the timeout."""

        def check_active(_last_try: bool) -> bool:
            state = self.get_unit_property(unit, "ActiveState", user)
            if state == "failed":
                raise RequestedAssertionFailed(f'unit "{unit}" reached state "{state}"')
            if state == "inactive":
                _status, jobs = self.systemctl("list-jobs --full 2>&1", user)
                if "No jobs" in jobs:
                    info = self.get_unit_info(unit, user)
                    if info["ActiveState"] == state:
                        raise RequestedAssertionFailed(
                            f'unit "{unit}" is inactive and there are no pending jobs'
                        )
            return state == "active"

        with self.nested(
            f"waiting for unit {unit}" + (f" with user {user}" if user is not None else "")
        ):
            retry(check_active, timeout)

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        with self.nested(f"checking if unit '{unit}' has reached state '{require_state}'"):
            state = self.get_unit_info(unit)["ActiveState"]
            if state != require_state:
                raise RequestedAssertionFailed(
                    f"Expected unit '{unit}' to to be in state "
                    f"'{require_state}' but it is in state '{state}'"
                )

    # --- files and ports -----------------------------------------------------------

    def wait_for_file(self, filename: str, timeout: int = 900) -> None:
        def check_file(_last_try: bool) -> bool:
            status, _ = self.execute(f"test -e {filename}")
            return status == 0

        with self.nested(f"waiting for file '{filename}'"):
            retry(check_file, timeout)

    @staticmethod
    def port_probe(addr: str, port: int) -> str:
        # The driver runs `nc -z ADDR PORT`; the Debian root has no netcat, and bash's
        # /dev/tcp makes the same TCP connect (bounded: an unreachable address would hang).
        return f"timeout 5 bash -c {shlex.quote(f'exec 3<>/dev/tcp/{addr}/{port}')}"

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        def port_is_open(_last_try: bool) -> bool:
            status, _ = self.execute(self.port_probe(addr, port))
            return status == 0

        with self.nested(f"waiting for TCP port {port} on {addr}"):
            retry(port_is_open, timeout)

    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        def port_is_closed(_last_try: bool) -> bool:
            status, _ = self.execute(self.port_probe(addr, port))
            return status != 0

        with self.nested(f"waiting for TCP port {port} on {addr} to be closed"):
            retry(port_is_closed, timeout)


# --- The driver ------------------------------------------------------------------------


def pythonize_name(name: str) -> str:
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


# The names nixpkgs' generate-driver-symbols writes (driver.py, test_symbols) plus the older
# `machines`: pyflakes gets them as builtins, so a script lints here as it does in nixpkgs.
DRIVER_SYMBOLS = (
    "start_all",
    "test_script",
    "machines",
    "machines_qemu",
    "machines_nspawn",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "BaseMachine",
    "t",
    "debug",
)


class AssertionTester(TestCase):
    """The script's `t`: unittest assertions raising RequestedAssertionFailed."""

    failureException = RequestedAssertionFailed


class Driver:
    """The machines of one rendering, up, plus the script's symbols."""

    def __init__(self, machines: list[Machine], logger: Logger) -> None:
        self.machines = machines
        self.logger = logger

    def start_all(self) -> None:
        with self.logger.nested("start all VMs"):
            for machine in self.machines:
                machine.start()

    def join_all(self) -> None:
        with self.logger.nested("wait for all VMs to finish"):
            for machine in self.machines:
                machine.wait_for_shutdown()

    @contextlib.contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        with self.logger.nested(f"subtest: {name}"):
            try:
                yield
            except Exception as e:
                self.logger.log_test_error(f'Test "{name}" failed with error: "{e}"')
                raise

    def test_symbols(self) -> dict[str, Any]:
        def missing(symbol: str) -> Callable[..., NoReturn]:
            def call(*_args: Any, **_kwargs: Any) -> NoReturn:
                raise MachineError(f"{symbol} is not implemented by the container rig")

            return call

        symbols: dict[str, Any] = {name: missing(name) for name in DRIVER_SYMBOLS}
        symbols.update(
            start_all=self.start_all,
            machines=self.machines,
            machines_qemu=[],
            machines_nspawn=self.machines,
            vlans=[],
            driver=self,
            log=self.logger,
            os=os,
            subtest=self.subtest,
            join_all=self.join_all,
            retry=retry,
            BaseMachine=Machine,
            t=AssertionTester(),
        )
        machine_symbols = {pythonize_name(m.name): m for m in self.machines}
        if len(self.machines) == 1:
            (machine_symbols["machine"],) = self.machines
        return {**symbols, **machine_symbols}

    def run_script(self, script: str) -> None:
        """exec the script with the symbols as globals; a failed step exits 1 after
        printing the script's frames, as the driver does."""
        with self.logger.nested("run the VM test script"):
            symbols = self.test_symbols()
            try:
                exec(compile(script, "<string>", "exec"), symbols, None)
            except RequestedAssertionFailed as exc:
                frames = [
                    frame
                    for frame in traceback.extract_tb(exc.__traceback__)
                    if frame.filename == "<string>"
                ]
                self.logger.log_test_error("Traceback (most recent call last):")
                code = script.splitlines()
                for frame, line in zip(frames, traceback.format_list(frames), strict=True):
                    self.logger.log_test_error(line.rstrip())
                    if frame.lineno:
                        self.logger.log_test_error(f"    {code[frame.lineno - 1].strip()}")
                self.logger.log_test_error("")
                for line in f"{type(exc).__name__}: {exc}".splitlines():
                    self.logger.log_test_error(line)
                raise SystemExit(1) from None


def lint_names(node_names: list[str]) -> list[str]:
    """pyflakes' builtins for a script, as nixos/lib/testing/driver.nix computes them."""
    names = [pythonize_name(name) for name in node_names]
    if len(node_names) == 1 and "machine" not in node_names:
        names.append("machine")
    return [*names, *DRIVER_SYMBOLS]


def lint(script: str, node_names: list[str]) -> str:
    """pyflakes on the script with the machine names and driver symbols as builtins;
    returns its report ("" when clean). Raises when pyflakes is not installed."""
    import subprocess
    import tempfile

    try:
        import pyflakes  # noqa: F401
    except ImportError:
        raise MachineError(
            "pyflakes is missing (the scripts are linted as nixpkgs lints them):"
            " pip install pyflakes"
        ) from None
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="test-script-") as file:
        file.write(script)
        file.flush()
        result = subprocess.run(
            [sys.executable, "-m", "pyflakes", file.name],
            capture_output=True,
            text=True,
            env={**os.environ, "PYFLAKES_BUILTINS": ",".join(lint_names(node_names))},
        )
        return (result.stdout + result.stderr).replace(file.name, "test-script")


# --- Bringing a rendering up -----------------------------------------------------------


class Timings:
    """Per-step seconds, printed at the end of a run."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - started))

    def report(self) -> str:
        return "\n".join(f"  {seconds:7.2f} s  {name}" for name, seconds in self.steps)


@contextlib.contextmanager
def scenario_lock(scenario: str) -> Iterator[None]:
    """One run per scenario at a time: its names (netns, cgroups, run dirs) are fixed."""
    ct.RUNS.mkdir(parents=True, exist_ok=True)
    with (ct.RUNS / f"{scenario}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MachineError(f"another run of {scenario} is in progress") from None
        yield


def containers_of(rendering: dict[str, Any]) -> list[ct.Container]:
    scenario = rendering["name"]
    return [
        ct.Container(f"aistack-{scenario}-{node}", ct.RUNS / scenario / node)
        for node in rendering["nodes"]
    ]


def reap(rendering: dict[str, Any]) -> None:
    """Remove what a killed (or --keep) run of this scenario left: processes, mounts,
    run directories, cgroups, namespaces, the bridge."""
    for box in containers_of(rendering):
        box.cleanup()
    ct.Network(rendering["name"]).down(rendering["nodes"])


@contextlib.contextmanager
def rig(
    rendering: dict[str, Any],
    logger: Logger | None = None,
    timings: Timings | None = None,
    keep: bool = False,
) -> Iterator[Driver]:
    """Bring every node of the rendering up (network, overlay, install, boot in parallel),
    yield the driver, and tear everything down afterwards, whatever happened (unless
    `keep`, which leaves the nodes running for debugging)."""
    logger = logger or Logger()
    timings = timings or Timings()
    scenario, nodes = rendering["name"], rendering["nodes"]
    with scenario_lock(scenario):
        ct.ensure_root()
        install.ensure_node_site()
        reap(rendering)
        network = ct.Network(scenario)
        boxes = containers_of(rendering)
        try:
            with timings.step("network"):
                network.up()
                for index, (box, node) in enumerate(zip(boxes, nodes, strict=True), start=1):
                    box.netns_path = network.add_node(node, index)
            with timings.step("install"):
                assets = install.make_assets()
                for box, (name, node) in zip(boxes, nodes.items(), strict=True):
                    box.mount()
                    box.binds = sorted(set(install.install(name, node, nodes, box.merged, assets)))
            with timings.step("boot"):
                for name, seconds in ct.boot_all(boxes).items():
                    logger.log(f"booted in {seconds:.2f} s", name)
            machines = [Machine(name, box, logger) for name, box in zip(nodes, boxes, strict=True)]
            for machine in machines:
                for line in install.ignored_keys(machine.container):
                    machine.log(f"systemd 252 ignored: {line}")
            yield Driver(machines, logger)
        finally:
            if keep:
                for box in boxes:
                    if box.leader:
                        logger.log(f"kept up: nsenter -t {box.leader} -a bash", box.name)
                logger.log(f"rerun or `python3 -m tests.vm --cleanup {scenario}` to remove them")
            else:
                with timings.step("teardown"), ThreadPoolExecutor(len(boxes)) as pool:
                    # Power the nodes off together: each takes about 2 s.
                    list(pool.map(ct.Container.cleanup, boxes))
                    network.down()


def diagnose(driver: Driver) -> None:
    """After a failed script: each node's failed units and the end of its journal."""
    for machine in driver.machines:
        if not machine.is_up():
            continue
        result = machine.container.run(
            "systemctl --failed --no-legend --no-pager; journalctl -b --no-pager -n 60",
            timeout=30,
        )
        for line in result.stdout.splitlines():
            driver.logger.log_serial(line, machine.name)


RENDERED = Path(__file__).parent / "rendered"
