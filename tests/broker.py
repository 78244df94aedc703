"""A real Mosquitto for the test suite and the benchmarks.

``Broker`` writes a mosquitto.conf into a directory of its own, starts
/usr/sbin/mosquitto on a free loopback port and waits until the port accepts
connections. ``stop()`` and ``start()`` restart it on the same port, for fault
tests. With ``tls=True`` a second listener speaks TLS with a throwaway CA,
server and client certificate made by the ``openssl`` command line.

Flow control, as mosquitto.conf(5) of Mosquitto 2.0 describes it:

- ``max_inflight_messages`` bounds the unacknowledged QoS 1/2 messages the
  broker sends to one MQTT 3.1.1 client (default 20); an MQTT 5 client sets
  that bound itself with the CONNECT property Receive Maximum. The broker also
  advertises it to MQTT 5 clients as its own Receive Maximum. 0 means none.
- ``max_queued_messages`` bounds the QoS 1/2 messages queued per client above
  those in flight (default 1000); beyond it the broker drops them silently, so
  the test broker raises it well above any test's message count.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

__all__ = ["Broker", "BrokerError", "TlsFiles", "mosquitto", "mosquitto_module"]


class BrokerError(RuntimeError):
    """Mosquitto did not start; the message carries its own output."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # A broker must not outlive a test run or benchmark that was killed.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_certificates(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if not have_openssl():
        raise BrokerError("the openssl command line is not installed")
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=gatewayd test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key",
                    d / "client.crt", d / "client.key")


class Broker:
    """One mosquitto process; restartable on the same ports."""

    def __init__(
        self,
        *,
        directory: Path | None = None,
        tls: bool = False,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        max_inflight_messages: int = 20,
        max_queued_messages: int = 200_000,
        queue_qos0_messages: bool = False,
    ) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if directory is None else directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port: int | None = None
        self.tls_files: TlsFiles | None = None
        if tls:
            self.tls_port = free_port()
            self.tls_files = make_certificates(self.dir)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if users else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            f"max_inflight_messages {max_inflight_messages}",
            f"max_queued_messages {max_queued_messages}",
            f"queue_qos0_messages {'true' if queue_qos0_messages else 'false'}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if users:
            passwd = self.dir / "passwd"
            passwd.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password],
                               check=True, capture_output=True)
            lines.append(f"password_file {passwd}")
        if self.tls_port is not None and self.tls_files is not None:
            f = self.tls_files
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {f.ca_file}",
                f"certfile {f.server_cert}",
                f"keyfile {f.server_key}",
                "require_certificate true",
            ]
        # Run as root, mosquitto would switch to its own user and lose access
        # to the files in this private directory.
        lines.append("user root")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self._log = self.dir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def passwd_available() -> bool:
        return Path(MOSQUITTO_PASSWD).exists()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The running mosquitto's process id."""
        if self._process is None:
            raise BrokerError("mosquitto is not running")
        return self._process.pid

    def start(self, timeout_s: float = 10.0) -> Broker:
        if self.running:
            return self
        log = self._log.open("ab")
        try:
            self._process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                             stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                             preexec_fn=_die_with_parent)
        finally:
            log.close()
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerError(f"mosquitto exited with status {self._process.returncode}:\n"
                                  f"{self.log_text()}")
            if all(self._accepts(p) for p in ports):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto did not listen on {ports} within {timeout_s:g} s:"
                                  f"\n{self.log_text()}")
            time.sleep(0.02)

    def _accepts(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex((self.host, port)) == 0

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Broker({self.host}:{self.port}, {state})"


@contextlib.contextmanager
def _broker(tmp: Path) -> Iterator[Broker]:
    broker = Broker(directory=tmp)
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A started broker of its own for one test, always stopped after it."""
    with _broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker shared by a module's tests; use distinct topics and client ids."""
    with _broker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker
