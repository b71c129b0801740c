"""Helpers of the security tests: test certificates and agent daemons (the raw agent
client is ``execbus.testing.agent_peer``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


# -- certificates (openssl CLI) -------------------------------------------


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate,
    and a second ("rogue") CA with a client certificate of its own."""

    dir: Path

    def pem(self, name: str) -> Path:
        """``ca``, ``server``, ``client``, ``rogue`` (a CA) or ``rogueclient``."""
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=execbus test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _make_leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n" + ext
    )
    _openssl(
        "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


def make_certs(d: Path) -> Certs:
    """Generate the test PKI in ``d`` with the ``openssl`` command."""
    d.mkdir(parents=True, exist_ok=True)
    _make_ca(d, "ca")
    _make_leaf(
        d,
        "server",
        "ca",
        "execbus-agent",
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    _make_leaf(d, "client", "ca", "worker-1", "extendedKeyUsage=clientAuth\n")
    _make_ca(d, "rogue")
    _make_leaf(d, "rogueclient", "rogue", "mallory", "extendedKeyUsage=clientAuth\n")
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return Certs(d)


# -- agent daemons ---------------------------------------------------------


class AgentDaemon:
    """``python -m execbus.agent`` with JSON logs, in its own temporary directory."""

    def __init__(self, *args: str, unix: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eb-sec-"))
        self.socket = self.dir / "agent.sock"
        self.log_path = self.dir / "agent.log"
        listen = ["--listen", f"unix://{self.socket}"] if unix else []
        self.args = [*listen, "--log-format", "json", "--grace", "0", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> AgentDaemon:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "execbus.agent", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready() is not None:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"agent not ready: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def ready(self) -> dict[str, Any] | None:
        return next((e for e in self.log_lines() if e.get("msg") == "agent ready"), None)

    def port(self, scheme: str) -> int:
        ready = self.ready()
        assert ready is not None
        url = next(u for u in ready["listen"] if u.startswith(f"{scheme}://"))
        return int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            for path in self.dir.iterdir():
                path.unlink()
            self.dir.rmdir()


def client_context(certs: Certs, *, cert: str | None = None) -> ssl.SSLContext:
    """A client TLS context trusting the test CA; ``cert``: "client" or "rogueclient"."""
    ctx = ssl.create_default_context(cafile=str(certs.pem("ca")))
    if cert is not None:
        ctx.load_cert_chain(str(certs.pem(cert)), str(certs.key(cert)))
    return ctx
