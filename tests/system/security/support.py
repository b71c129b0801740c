"""Helpers of the security tests: test certificates and agent daemons (the raw agent
client is ``execbus.testing.agent_peer``)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from execbus.testing.processes import AgentProcess, child_env
from tests.conftest import ROOT

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


# -- agent daemons (execbus.testing.processes) ---------------------------------


class AgentDaemon(AgentProcess):
    """``python -m execbus.agent`` with JSON logs and ``--grace 0``, in its own temporary
    directory; ``unix=False``: only the listeners in ``args``."""

    def __init__(self, *args: str, unix: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eb-sec-"))
        super().__init__(
            "agent",
            self.dir,
            child_env(PYTHONPATH=str(SRC)),
            "--grace",
            "0",
            *args,
            unix=unix,
            json_logs=True,
        )

    @property
    def socket(self) -> Path:
        return self.sock

    def start(self, wait: bool = True) -> AgentDaemon:
        super().start()
        if wait:
            self.wait_ready()
        return self

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (SIGKILL to its group after ``grace``), then remove its directory."""
        if self.proc is not None:
            self.terminate(grace)
        shutil.rmtree(self.dir, ignore_errors=True)


def client_context(certs: Certs, *, cert: str | None = None) -> ssl.SSLContext:
    """A client TLS context trusting the test CA; ``cert``: "client" or "rogueclient"."""
    ctx = ssl.create_default_context(cafile=str(certs.pem("ca")))
    if cert is not None:
        ctx.load_cert_chain(str(certs.pem(cert)), str(certs.key(cert)))
    return ctx
