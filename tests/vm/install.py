"""Install one rendered NixOS node (tests/vm/rendered/NAME.json) into a merged Debian tree.

What NixOS activation would do for the options the module touches is done here, before
boot: units and their wants/requires links in /etc/systemd/system, users and groups,
tmpfiles rules, the rendered store files, and a /nix/store in which each fake store path
the rendering names is the Debian program that provides that package. The Debian
packages' own units are masked so only the rendered units run.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any

from tests.vm.container import ROOT, SUITE, Container, log

CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout the rig runs from
HOST_SITE = Path(sysconfig.get_paths()["purelib"])  # the daemon's dependencies (cp311 wheels)
# Container paths of the read-only binds. Not under /root or /home: the units' ProtectHome
# would hide them.
SITE_IN_NODE = "/opt/aistack/site"
SOURCE_IN_NODE = "/opt/aistack/src"  # the checkout's tests/ (the Qdrant stand-in lives there)
# The root's Python is 3.11.2, the host's newer: dependencies the host's pip skipped by an
# environment marker that holds for 3.11.2 go here (redis needs async-timeout below 3.11.3).
NODE_SITE = ROOT.parent / "site-python3.11.2"
NODE_SITE_IN_NODE = "/opt/aistack/site-3.11.2"
NODE_REQUIREMENTS = ("async-timeout>=4.0.3",)
PYTHON_LIB = "lib/python3.11/site-packages"
SYSTEM = Path("etc/systemd/system")

# Debian units of the packages in the root that would run beside the rendered ones. A
# rendered unit of the same name in /etc/systemd/system replaces the Debian one; the others
# are masked. Their enablement links are removed either way: only the rendering's
# wantedBy/requiredBy decide what starts.
DEBIAN_UNITS = ("postgresql.service", "postgresql@.service", "nginx.service", "pebble.service")
# Debian package lists (var/lib/dpkg/info/P.list) whose programs make a NixOS package's bin/.
DPKG_PACKAGES = {
    "coreutils": ["coreutils"],
    "bash": ["bash"],
    "util-linux": ["util-linux", "mount", "bsdutils"],
    "gnugrep": ["grep"],
    "gnused": ["sed"],
    "findutils": ["findutils"],
    "systemd": ["systemd", "systemd-sysv"],
    "sudo": ["sudo"],
    "curl": ["curl"],
    "openssl": ["openssl"],
    "python3": ["python3-minimal", "python3.11-minimal", "python3"],
    "pebble": ["pebble"],
}
# Programs nixpkgs' package has that Debian ships in another package: GNU coreutils builds
# kill and uptime (NixOS units run ${coreutils}/bin/kill), Debian takes them from procps.
EXTRA_PROGRAMS = {"coreutils": {"kill": "/usr/bin/kill", "uptime": "/usr/bin/uptime"}}
# Other parts of a package, as its NixOS store path has them: store subpath -> Debian path.
PACKAGE_LINKS = {
    "systemd": {"lib": "/usr/lib"},
    "postgresql": {"lib": "/usr/lib/postgresql/15/lib", "share": "/usr/share/postgresql/15"},
    # nixpkgs' nginx.conf includes ${nginx}/conf/fastcgi.conf and uwsgi_params.
    "nginx": {"conf": "/etc/nginx"},
    # ... and ${mailcap}/etc/nginx/mime.types (Debian's nginx-common ships the same file).
    "mailcap": {
        "etc/nginx/mime.types": "/etc/nginx/mime.types",
        "etc/mime.types": "/etc/mime.types",
    },
}
# qdrant-web-ui: the static_content_dir nixpkgs' qdrant module names; the stand-in serves
# no web UI, so it is an empty directory.
PACKAGES = (*DPKG_PACKAGES, "nginx", "postgresql", "qdrant", "qdrant-web-ui", "mailcap", "aistack")
GENERATED = ("acme-test-ca-cert", "acme-test-ca-key", "acme-test-cert", "acme-test-key")

Bind = tuple[str, str]  # host path, container path (read-only)
SITE_BINDS: tuple[Bind, ...] = ((str(HOST_SITE), SITE_IN_NODE), (str(NODE_SITE), NODE_SITE_IN_NODE))


# --- Run-wide assets -------------------------------------------------------------------


def make_assets() -> dict[str, bytes]:
    """The `generate` kinds, made once per run and shared by its nodes: a CA and the
    `acme.test` certificate it signed (nixpkgs commits the same pair as
    nixos/tests/common/acme/server/{ca,acme.test}.{cert,key}.pem; `caCert` is the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aistack VM test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("acme.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "acme-test-ca-cert": ca_cert.public_bytes(serialization.Encoding.PEM),
        "acme-test-ca-key": pem_key(ca_key),
        "acme-test-cert": cert.public_bytes(serialization.Encoding.PEM),
        "acme-test-key": pem_key(key),
    }


def host_python_mismatch() -> str | None:
    """Why the host's site-packages cannot run in the root's Python 3.11, or None."""
    if sys.version_info[:2] == (3, 11):
        return None
    found = ".".join(map(str, sys.version_info[:3]))
    return (
        f"the rig runs the host's installed packages in Debian {SUITE}'s Python 3.11, "
        f"but the host's is {found}: run it with a Python 3.11 environment"
    )


def ensure_node_site() -> None:
    """Install NODE_REQUIREMENTS for the root's Python once (into NODE_SITE.tmp, then
    renamed), with the host's pip; pure-Python packages, so the host can install them."""
    if NODE_SITE.is_dir():
        return
    tmp = NODE_SITE.with_name(NODE_SITE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"vm: pip install {' '.join(NODE_REQUIREMENTS)} for the nodes' Python into {NODE_SITE}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            "--python-version=3.11.2",
            "--only-binary=:all:",
            f"--target={tmp}",
            *NODE_REQUIREMENTS,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install for the nodes failed:\n{result.stdout}{result.stderr}")
    tmp.rename(NODE_SITE)


def hosts_file(nodes: dict[str, Any], node: dict[str, Any]) -> str:
    """/etc/hosts: loopback, every node as `192.168.1.N NAME NAME.DOMAIN` (N in node order,
    as the nixpkgs driver numbers them), then this node's extraHosts."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    for index, other in enumerate(nodes.values(), start=1):
        names = [other["hostName"]]
        if other.get("domain"):
            names.append(f"{other['hostName']}.{other['domain']}")
        lines.append(f"192.168.1.{index} {' '.join(names)}")
    lines += [line for entry in node.get("extraHosts", []) for line in entry.splitlines()]
    return "\n".join(lines) + "\n"


# --- Installing ------------------------------------------------------------------------


def inside(root: Path, path: str) -> Path:
    """The host path of an absolute container path within the merged tree."""
    if not path.startswith("/"):
        raise ValueError(f"not an absolute path: {path}")
    return root / path.lstrip("/")


def write(target: Path, data: bytes, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(data)
    target.chmod(mode)


def symlink(target: Path, points_to: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(points_to)


def chroot(root: Path, *argv: str) -> None:
    """Run Debian's own tools (useradd, ...) on the merged tree."""
    result = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def check_configs(node: dict[str, Any], root: Path) -> None:
    """`aistack config check` on each file marked `check: aistack-config`, on the host, as
    the module's build step runs it; a refused config fails the scenario with its output."""
    for path, spec in node.get("files", {}).items():
        if spec.get("check") is None:
            continue
        if spec["check"] != "aistack-config":
            raise ValueError(f"{path}: unknown check {spec['check']!r}")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from aistack.cli import main; sys.exit(main(sys.argv[1:]))",
                "config",
                "check",
                "--config",
                str(inside(root, path)),
            ],
            capture_output=True,
            text=True,
            # The daemon from this checkout, whatever the host's Python has installed.
            env={**os.environ, "PYTHONPATH": str(CHECKOUT / "daemon")},
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"aistack config check --config {path} failed ({result.returncode}):\n"
                + result.stdout
                + result.stderr
            )


def install(
    name: str, node: dict[str, Any], nodes: dict[str, Any], root: Path, assets: dict[str, bytes]
) -> list[Bind]:
    """Install the node into the merged tree `root`; returns the read-only binds its
    packages need (for systemd-nspawn)."""
    neutralise_debian(root, set(node.get("units", {})))
    install_users(root, node.get("users", {}), node.get("groups", {}))
    binds = install_packages(root, node.get("packages", {}))
    install_files(root, node.get("files", {}), assets)
    adapt_tls_groups_to_debian_openssl(name, root, node.get("files", {}))
    install_units(root, node)
    tmpfiles = [*node.get("tmpfiles", []), *NIXOS_PATHS]
    write(root / "etc/tmpfiles.d/nixos.conf", ("\n".join(tmpfiles) + "\n").encode(), 0o644)
    install_system_packages(root, node.get("systemPackages", []))
    trust_certificates(root, node.get("certificateFiles", []))
    write(root / "etc/hosts", hosts_file(nodes, node).encode(), 0o644)
    write(root / "etc/hostname", f"{node['hostName']}\n".encode(), 0o644)
    # Each node its own machine id (the root's would be shared by all nodes).
    write(root / "etc/machine-id", f"{uuid.uuid4().hex}\n".encode(), 0o444)
    check_configs(node, root)
    if node.get("firewall"):
        log(f"vm: {name}: firewall ports {node['firewall']} noted, not enforced (no iptables)")
    return binds


# NixOS paths units and scripts may name: /run/current-system/sw (the system path, which
# /usr/local models) and the setuid wrappers (Debian's programs are setuid themselves).
NIXOS_PATHS = (
    "d /run/current-system 0755 root root - -",
    "L+ /run/current-system/sw - - - - /usr/local",
    "d /run/wrappers/bin 0755 root root - -",
    "L+ /run/wrappers/bin/sudo - - - - /usr/bin/sudo",
    "L+ /run/wrappers/bin/su - - - - /usr/bin/su",
)


def neutralise_debian(root: Path, rendered: set[str]) -> None:
    for unit in DEBIAN_UNITS:
        for link in (root / SYSTEM).glob(f"*.wants/{unit}"):
            link.unlink()
        if unit not in rendered:
            symlink(root / SYSTEM / unit, "/dev/null")
    # Debian's cluster would make the rendered postgresql's initdb find a non-empty data
    # directory (NixOS uses /var/lib/postgresql/15 itself); its generator would add it back.
    for directory in ("var/lib/postgresql/15", "etc/postgresql/15"):
        shutil.rmtree(root / directory, ignore_errors=True)
    symlink(root / "etc/systemd/system-generators/postgresql-generator", "/dev/null")


def read_names(path: Path) -> set[str]:
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if line}


def install_users(root: Path, users: dict[str, Any], groups: dict[str, Any]) -> None:
    """users.users / users.groups with Debian's useradd and groupadd. An account Debian
    already has (postgres) is changed to what the rendering says; duplicate ids are allowed
    (-o) because NixOS' fixed ids can be taken by Debian ones (gid 60 is Debian's games)."""
    wanted_groups = dict(groups)
    for user in users.values():
        for group in [user.get("group"), *user.get("extraGroups", [])]:
            if group:
                wanted_groups.setdefault(group, {"members": [], "gid": None})
    existing = read_names(root / "etc/group")
    for group, spec in wanted_groups.items():
        gid = spec.get("gid")
        if group not in existing:
            chroot(
                root, "groupadd", *(["-o", "-g", str(gid)] if gid is not None else ["-r"]), group
            )
        elif gid is not None:
            chroot(root, "groupmod", "-o", "-g", str(gid), group)
    existing = read_names(root / "etc/passwd")
    for user, spec in users.items():
        system = bool(spec.get("isSystemUser"))
        home = spec.get("home") or (f"/home/{user}" if spec.get("isNormalUser") else "/var/empty")
        shell = spec.get("shell") or (
            "/bin/bash" if spec.get("isNormalUser") else "/usr/sbin/nologin"
        )
        options = ["-d", home, "-s", shell, "-c", spec.get("description") or ""]
        if spec.get("group"):
            options += ["-g", spec["group"]]
        options += ["-G", ",".join(spec.get("extraGroups", []))]
        if spec.get("uid") is not None:
            options += ["-o", "-u", str(spec["uid"])]
        if user in existing:
            chroot(root, "usermod", *options, user)
        else:
            chroot(root, "useradd", *(["-r"] if system else []), "-M", *options, user)
        if spec.get("createHome") or spec.get("isNormalUser"):
            # NixOS creates the home with homeMode 700, owned by the user and its group.
            chroot(
                root,
                "install",
                "-d",
                "-m",
                "0700",
                "-o",
                user,
                "-g",
                spec.get("group") or user,
                home,
            )
    for group, spec in groups.items():
        for member in spec.get("members", []):
            chroot(root, "gpasswd", "-a", member, group)


def dpkg_programs(root: Path, packages: list[str]) -> dict[str, str]:
    """Program name -> path for what the Debian packages install in bin and sbin dirs."""
    programs: dict[str, str] = {}
    for package in packages:
        listing = next((root / "var/lib/dpkg/info").glob(f"{package}.list"), None) or next(
            (root / "var/lib/dpkg/info").glob(f"{package}:*.list"), None
        )
        if listing is None:
            raise RuntimeError(f"Debian package {package} is not in the root")
        for line in listing.read_text().splitlines():
            if re.fullmatch(r"/(usr/)?s?bin/[^/]+", line) and (root / line.lstrip("/")).exists():
                programs.setdefault(line.rsplit("/", 1)[1], line)
    return programs


def install_packages(root: Path, packages: dict[str, str]) -> list[Bind]:
    """Make each fake store path the Debian program providing the package it names."""
    binds: list[Bind] = []
    for store_path, package in packages.items():
        binds += install_package(root, store_path, package)
        for sub, target in PACKAGE_LINKS.get(package, {}).items():
            symlink(inside(root, store_path) / sub, target)
    return binds


def install_package(root: Path, store_path: str, package: str) -> list[Bind]:
    store = inside(root, store_path)
    if package in DPKG_PACKAGES:
        programs = dpkg_programs(root, DPKG_PACKAGES[package])
        return link_bin(store, {**programs, **EXTRA_PROGRAMS.get(package, {})})
    if package == "nginx":
        # Debian's nginx is built with its temp paths in /var/lib/nginx (read-only under
        # ProtectSystem=strict), nixpkgs' with them in /tmp (the unit's PrivateTmp).
        shutil.rmtree(root / "var/lib/nginx", ignore_errors=True)
        symlink(root / "var/lib/nginx", "/tmp")
        return link_bin(store, {"nginx": "/usr/sbin/nginx"})
    if package == "postgresql":
        return link_bin(store, postgresql_programs(root))
    if package == "qdrant":
        return qdrant(store)
    if package == "aistack":
        return aistack(store, store_path)
    if package in ("qdrant-web-ui", "mailcap"):  # no programs: PACKAGE_LINKS, if anything
        store.mkdir(parents=True, exist_ok=True)
        return []
    raise ValueError(f"{store_path}: unknown package {package!r} (known: {', '.join(PACKAGES)})")


def postgresql_programs(root: Path) -> dict[str, str]:
    directory = "/usr/lib/postgresql/15/bin"
    return {entry.name: f"{directory}/{entry.name}" for entry in inside(root, directory).iterdir()}


def link_bin(store: Path, programs: dict[str, str]) -> list[Bind]:
    for program, target in programs.items():
        symlink(store / "bin" / program, target)
    return []


WRAPPER = """#!/usr/bin/python3
# The aistack of the checkout the rig runs from, with the host's site-packages (read-only
# binds set up by tests/vm/install.py), as the Nix package's bin/aistack would run it.
import site
import sys

sys.path.insert(0, {package!r})
site.addsitedir({site!r})
site.addsitedir({extra!r})
from aistack.cli import main

sys.exit(main())
"""

QDRANT = """#!/usr/bin/python3
# The Qdrant REST stand-in of the checkout (tests/vm/qdrant_standin.py), with the real
# `qdrant --config-path FILE` command line.
import runpy
import site
import sys

sys.path.insert(0, {source!r})
site.addsitedir({site!r})
site.addsitedir({extra!r})
sys.argv[0] = "qdrant"
runpy.run_module("tests.vm.qdrant_standin", run_name="__main__", alter_sys=True)
"""


def aistack(store: Path, store_path: str) -> list[Bind]:
    """bin/aistack, and the checkout's daemon/aistack bound (not linked) at
    lib/python3.11/site-packages/aistack, so `find /nix/store -path '*aistack/demo/...'`
    finds the package's files as on NixOS."""
    package = f"{store_path}/{PYTHON_LIB}"
    write(
        store / "bin/aistack",
        WRAPPER.format(package=package, site=SITE_IN_NODE, extra=NODE_SITE_IN_NODE).encode(),
        0o555,
    )
    (store / PYTHON_LIB / "aistack").mkdir(parents=True, exist_ok=True)
    return [
        (str(CHECKOUT / "daemon/aistack"), f"{package}/aistack"),
        *SITE_BINDS,
    ]


def qdrant(store: Path) -> list[Bind]:
    script = QDRANT.format(source=SOURCE_IN_NODE, site=SITE_IN_NODE, extra=NODE_SITE_IN_NODE)
    write(store / "bin/qdrant", script.encode(), 0o555)
    return [(str(CHECKOUT / "tests"), f"{SOURCE_IN_NODE}/tests"), *SITE_BINDS]


def install_files(root: Path, files: dict[str, Any], assets: dict[str, bytes]) -> None:
    for path, spec in files.items():
        if "text" in spec:
            data = spec["text"].encode()
        elif "generate" in spec:
            if spec["generate"] not in assets:
                raise ValueError(f"{path}: unknown generate kind {spec['generate']!r}")
            data = assets[spec["generate"]]
        else:
            raise ValueError(f"{path}: neither text nor generate: {sorted(spec)}")
        target = inside(root, path)
        write(target, data, int(spec.get("mode", "0444"), 8))
        if spec.get("user") or spec.get("group"):
            owner = f"{spec.get('user', 'root')}:{spec.get('group', 'root')}"
            chroot(root, "chown", owner, path)


# nixpkgs' recommendedTlsSettings offer the hybrid post-quantum group X25519MLKEM768, which
# OpenSSL has from 3.5 (nixpkgs' nginx links a current OpenSSL). Debian bookworm's nginx, the
# stand-in, links OpenSSL 3.0, where `nginx -t` refuses the whole line. Only that group is
# dropped, and the run says so; the rest of the rendered configuration is unchanged.
PQ_GROUP = "X25519MLKEM768:"
TLS_GROUPS_LINE = re.compile(r'^(\s*ssl_conf_command Groups ")' + PQ_GROUP, re.MULTILINE)


def openssl_version(root: Path) -> tuple[int, int]:
    result = subprocess.run(
        ["chroot", str(root), "openssl", "version"], capture_output=True, text=True, check=True
    )
    match = re.match(r"OpenSSL (\d+)\.(\d+)", result.stdout)
    if match is None:
        raise RuntimeError(f"openssl version: unexpected {result.stdout!r}")
    return int(match[1]), int(match[2])


def adapt_tls_groups_to_debian_openssl(name: str, root: Path, files: dict[str, Any]) -> None:
    for path, spec in files.items():
        if not TLS_GROUPS_LINE.search(spec.get("text", "")):
            continue
        version = openssl_version(root)
        if version >= (3, 5):
            return
        target = inside(root, path)
        mode = target.stat().st_mode & 0o7777
        target.chmod(0o644)
        target.write_text(TLS_GROUPS_LINE.sub(r"\1", target.read_text()))
        target.chmod(mode)
        log(
            f"vm: {name}: {path}: dropped {PQ_GROUP.rstrip(':')} from ssl_conf_command Groups"
            f" (the stand-in nginx links OpenSSL {version[0]}.{version[1]}; it needs 3.5)"
        )


# What every NixOS system has: its scripted networking links network.target to
# multi-user.target (nixos/modules/tasks/network-interfaces-scripted.nix), and
# network-online.target is wanted by multi-user.target too. Units wantedBy network.target
# (nixpkgs' pebble) start at boot because of it.
NIXOS_WANTS = {"multi-user.target": ["network.target", "network-online.target"]}


def install_units(root: Path, node: dict[str, Any]) -> None:
    rendered = node.get("units", {})
    for unit, text in rendered.items():
        write(root / SYSTEM / unit, text.encode(), 0o644)
    wants = {target: list(units) for target, units in NIXOS_WANTS.items()}
    for target, units in node.get("wants", {}).items():
        wants.setdefault(target, []).extend(units)
    for suffix, links in (("wants", wants), ("requires", node.get("requires", {}))):
        for target, units in links.items():
            for unit in units:
                # systemd only uses the link's name; it points at the unit's file.
                home = SYSTEM if unit in rendered else Path("lib/systemd/system")
                symlink(root / SYSTEM / f"{target}.{suffix}" / unit, f"/{home}/{unit}")


def install_system_packages(root: Path, paths: list[str]) -> None:
    """environment.systemPackages: their bin/ and sbin/ entries linked into /usr/local,
    which is first on the commands' PATH as /run/current-system/sw/bin is on NixOS."""
    for path in paths:
        for sub in ("bin", "sbin"):
            directory = inside(root, path) / sub
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                symlink(root / "usr/local/bin" / entry.name, f"{path}/{sub}/{entry.name}")


def trust_certificates(root: Path, paths: list[str]) -> None:
    """security.pki.certificateFiles: appended to the system bundle curl and openssl use."""
    if not paths:
        return
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    extra = b"".join(inside(root, path).read_bytes() for path in paths)
    write(bundle, bundle.read_bytes() + b"\n" + extra, 0o644)


# --- After boot ------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
IGNORED = re.compile(r"(/etc/systemd/system/\S+:\d+: .*(?:[Uu]nknown|ignoring).*)")


def ignored_keys(container: Container) -> list[str]:
    """What systemd 252 ignored in the rendered units (NixOS targets a newer systemd),
    from the boot console (units are parsed before journald runs) and the journal."""
    # The console carries the terminal colours systemd writes there.
    text = ANSI.sub("", container.console_log.read_text(errors="replace"))
    text += container.run("journalctl -b -o cat --no-pager", timeout=30).stdout
    return sorted({match.group(1).strip() for match in IGNORED.finditer(text)})
