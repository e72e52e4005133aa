"""Boot rendered nodes under a real systemd 252 with systemd-nspawn.

Each node is a Debian bookworm root (built once with debootstrap, cached) seen through a
per-run overlayfs, in its own network namespace joined to a host bridge, booted with the
recipe measured in /work/shared/notes/FACTS.md ("A real systemd here"): a pure cgroup2
view in a private mount namespace, `--keep-unit` (there is no host systemd to register
with), and the container's systemd controlled with `nsenter -t LEADER -a`.

Everything a run creates (overlay mounts, network namespaces, veths, the bridge, cgroup
directories, run directories) has a deterministic name derived from the scenario and the
node, so a run killed with SIGKILL is reaped by the next run of the same scenario.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(os.environ.get("AISTACK_VM_ROOT", "/var/cache/aistack-vm/root"))
RUNS = Path(os.environ.get("AISTACK_VM_RUNS", "/var/tmp/aistack-vm"))
SUITE = "bookworm"
# The Debian packages providing what the renderings' `packages` map names (tests/vm/install.py).
DEBIAN_PACKAGES = (
    "systemd,systemd-sysv,dbus,python3,curl,postgresql,nginx,sudo,openssl,pebble,procps,"
    "iproute2,ca-certificates,less"
)
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "setsid": "util-linux",
    "ip": "iproute2",
}
SUBNET = "192.168.1"
BRIDGE_ADDRESS = f"{SUBNET}.254"
# The commands' environment: root's, with the NixOS system path modelled by /usr/local/bin.
COMMAND_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
CGROUP_HIERARCHIES = ("unified", "systemd")


def log(message: str) -> None:
    """Progress lines go to stderr, like the nixpkgs driver's terminal logger."""
    print(message, file=sys.stderr, flush=True)


def missing_tools() -> list[str]:
    """The host programs the rig needs and cannot find, with the package providing each."""
    return [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


def short(prefix: str, *parts: str) -> str:
    """An interface name (at most 15 bytes) that is stable for the same scenario and node."""
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()[: 15 - len(prefix)]
    return prefix + digest


def sh(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a host command, raising with its output when it fails (the output is the cause)."""
    result = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def quietly(what: str, action: Callable[[], object]) -> None:
    """Run one cleanup step; a failure is reported, not raised, so the other steps still run
    and the error that made us clean up is the one the caller sees."""
    try:
        action()
    except Exception as error:
        log(f"vm: cleanup: {what}: {error}")


# --- The Debian root -------------------------------------------------------------------


def ensure_root(root: Path = ROOT) -> None:
    """Build the cached Debian root when it is absent, into ROOT.tmp and then renamed, so an
    interrupted build is never taken for a finished one."""
    if root.is_dir():
        return
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    root.parent.mkdir(parents=True, exist_ok=True)
    log(f"vm: building the Debian {SUITE} root {root} with debootstrap (about a minute, 750 MB)")
    started = time.monotonic()
    log_file = root.parent / "debootstrap.log"
    with log_file.open("w") as out:
        status = subprocess.call(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={DEBIAN_PACKAGES}",
                SUITE,
                str(tmp),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if status != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"debootstrap failed ({status}); {log_file} ends:\n" + "\n".join(tail))
    tmp.rename(root)
    log(f"vm: built {root} in {time.monotonic() - started:.0f} s")


# --- Networking ------------------------------------------------------------------------


@dataclass
class Network:
    """One host bridge per scenario (192.168.1.254/24) and one namespace per node."""

    scenario: str
    bridge: str = ""
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge = short("aisbr", self.scenario)

    def netns(self, node: str) -> str:
        return f"aistack-{self.scenario}-{node}"

    def veth(self, node: str) -> str:
        return short("aisv", self.scenario, node)

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_node(self, node: str, index: int) -> str:
        """Namespace `aistack-SCENARIO-NODE` with eth0 = 192.168.1.INDEX/24 and loopback up;
        returns the namespace's path for `--network-namespace-path`."""
        netns, veth = self.netns(node), self.veth(node)
        sh("ip", "netns", "add", netns)
        self.namespaces.append(netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", netns, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        return f"/run/netns/{netns}"

    def down(self, nodes: Iterable[str] = ()) -> None:
        """Delete the namespaces (which deletes their veths) and the bridge; also those of
        `nodes` left behind by an earlier run that was killed."""
        for netns in [*self.namespaces, *(self.netns(node) for node in nodes)]:
            if Path("/run/netns", netns).exists():
                quietly(f"netns {netns}", lambda n=netns: sh("ip", "netns", "del", n))
        self.namespaces.clear()
        if Path("/sys/class/net", self.bridge).exists():
            quietly(f"bridge {self.bridge}", lambda: sh("ip", "link", "del", self.bridge))


# --- Containers ------------------------------------------------------------------------


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass
class Container:
    """One node: an overlay over the Debian root, booted with systemd-nspawn."""

    name: str  # machine name, aistack-SCENARIO-NODE
    directory: Path  # holds upper/, work/, root/ (the merged tree) and console.log
    netns_path: str = ""
    binds: list[tuple[str, str]] = field(default_factory=list)  # read-only: host, container
    lower: Path = ROOT
    process: subprocess.Popen[bytes] | None = None
    leader: int | None = None

    @property
    def merged(self) -> Path:
        return self.directory / "root"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    def mount(self) -> None:
        for sub in ("upper", "work", "root"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        options = (
            f"lowerdir={self.lower},upperdir={self.directory / 'upper'},"
            f"workdir={self.directory / 'work'}"
        )
        sh("mount", "-t", "overlay", "overlay", "-o", options, str(self.merged))

    def boot(self) -> None:
        """Start systemd-nspawn in the background (use wait_booted to wait for it)."""
        for hierarchy in CGROUP_HIERARCHIES:
            Path("/sys/fs/cgroup", hierarchy, self.name).mkdir(exist_ok=True)
        # Inside a private mount namespace, replace the host's hybrid cgroup mounts with a
        # pure cgroup2 view: systemd 252 then runs with the unified hierarchy, which it
        # needs for the hardening directives to be enforced.
        inner = (
            "for m in $(awk '$2 ~ /^\\/sys\\/fs\\/cgroup\\// {print $2}' /proc/self/mounts"
            " | sort -r); do umount $m; done;"
            " umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "
            + " ".join(self.nspawn_argv())
        )
        outer = (
            "".join(
                f"echo $$ > /sys/fs/cgroup/{h}/{self.name}/cgroup.procs; "
                for h in CGROUP_HIERARCHIES
            )
            + f"exec setsid unshare -m --propagation private sh -c {shlex.quote(inner)}"
        )
        with self.console_log.open("wb") as console:
            # setsid, unshare and both shells exec: the Popen pid ends up being nspawn's.
            self.process = subprocess.Popen(
                ["sh", "-c", outer], stdin=subprocess.DEVNULL, stdout=console, stderr=console
            )

    def nspawn_argv(self) -> list[str]:
        argv = [
            "systemd-nspawn",
            "-D",
            str(self.merged),
            "--boot",
            "--register=no",
            "--keep-unit",
            "-M",
            self.name,
            "--capability=CAP_NET_ADMIN,CAP_BPF",
            "--system-call-filter=bpf",
        ]
        if self.netns_path:
            argv.append(f"--network-namespace-path={self.netns_path}")
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds]
        return [shlex.quote(arg) for arg in argv]

    def wait_booted(self, timeout: float = 90) -> str:
        """Wait for the container's manager, then for startup to finish; returns the
        system state ("running", or "degraded" when a unit failed: that is for the test
        script to judge, as it would be on a VM)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self.leader = self.find_leader()
            if self.leader is None:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: no systemd after {timeout} s{self.tail()}")
                time.sleep(0.05)
        while not Path(f"/proc/{self.leader}/root/run/systemd/private").exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no manager bus after {timeout} s{self.tail()}")
            time.sleep(0.05)
        left = max(1, int(deadline - time.monotonic()))
        state = self.run("systemctl is-system-running --wait", timeout=left).stdout.strip()
        if state not in ("running", "degraded"):
            log(f"vm: {self.name}: system state {state or 'unknown'} after boot")
        return state

    def find_leader(self) -> int | None:
        """The container's PID 1 seen from the host: nspawn's child named systemd."""
        assert self.process is not None
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return None

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name}: systemd-nspawn exited ({self.process.returncode}){self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.console_log.read_text(errors="replace").splitlines()[-lines:]
            return "; its console ends:\n" + "\n".join(text)
        return ""

    def run(self, command: str, timeout: float | None = None) -> Result:
        """Run `bash -c COMMAND` as root inside the node (all its namespaces) and capture
        stdout, stderr and the exit status. A timeout kills the command (status 124, as
        coreutils' timeout reports it, which is what the nixpkgs driver does too)."""
        if self.leader is None:
            raise RuntimeError(f"{self.name} is not running")
        argv = ["nsenter", "-t", str(self.leader), "-a"]
        if timeout is not None:
            argv += ["timeout", str(int(max(1, timeout)))]
        argv += ["bash", "-c", command]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=COMMAND_ENV,
            # Its own process group, so a timeout or an interrupt can end the command and
            # everything it started inside the node, not just nsenter.
            start_new_session=True,
        )
        try:
            # The in-node timeout normally fires first; this one catches a command that
            # ignores SIGTERM or keeps stdout open from a background child.
            out, err = process.communicate(timeout=None if timeout is None else timeout + 15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            return Result(124, out.decode(errors="replace"), err.decode(errors="replace"))
        except BaseException:  # an interrupt: do not leave the command running in the node
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        return Result(
            process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def poweroff(self, timeout: float = 30) -> None:
        """`systemctl poweroff` and wait; nspawn forwards SIGTERM as a clean shutdown
        request, so that is the fallback, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.leader is not None:
            with contextlib.suppress(Exception):
                self.run("systemctl poweroff", timeout=10)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout if sig is None else 10)
                break
            except subprocess.TimeoutExpired:
                log(f"vm: {self.name} did not power off, sending {sig or 'SIGTERM'}")
        self.leader = None

    def cleanup(self) -> None:
        """Power off, unmount the overlay, remove the run directory and cgroup directories.
        Also reaps what an earlier, killed run of the same name left behind."""
        quietly(f"{self.name} poweroff", self.poweroff)
        kill_cgroup(self.name)
        if os.path.ismount(self.merged):
            quietly(f"umount {self.merged}", lambda: umount(self.merged))
        if self.directory.exists() and not os.path.ismount(self.merged):
            quietly(f"rm {self.directory}", lambda: shutil.rmtree(self.directory))
        for hierarchy in CGROUP_HIERARCHIES:
            quietly(f"cgroup {hierarchy}/{self.name}", lambda h=hierarchy: rmdir_tree(h, self.name))


def umount(path: Path) -> None:
    if sh("umount", str(path), check=False).returncode != 0:
        # Something still holds it (a shell of someone debugging): detach it lazily.
        sh("umount", "-l", str(path))


def kill_cgroup(name: str) -> None:
    """SIGKILL whatever is left in the node's cgroups (a container that would not stop)."""
    for hierarchy in CGROUP_HIERARCHIES:
        top = Path("/sys/fs/cgroup", hierarchy, name)
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)


def rmdir_tree(hierarchy: str, name: str) -> None:
    """cgroup directories hold only kernel files: remove them deepest first with rmdir."""
    top = Path("/sys/fs/cgroup", hierarchy, name)
    if not top.is_dir():
        return
    deadline = time.monotonic() + 5
    while True:
        try:
            for directory in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                directory.rmdir()
            top.rmdir()
            return
        except OSError:
            # A process that was just killed leaves its cgroup a moment later.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def boot_all(containers: list[Container], timeout: float = 90) -> dict[str, float]:
    """Start every container, then wait for each; returns seconds to booted, per name."""
    started = time.monotonic()
    for container in containers:
        container.boot()
    seconds = {}
    for container in containers:
        container.wait_booted(timeout)
        seconds[container.name] = time.monotonic() - started
    return seconds
