"""Listener addresses (``unix://``, ``tcp://``, ``tls://``, ``vsock://``) and their sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat
from urllib.parse import urlsplit

from execbus.agent.compat import slots_dataclass

VMADDR_CID_ANY = 0xFFFFFFFF
BACKLOG = 128


@slots_dataclass(frozen=True)
class ListenerSpec:
    """Where to listen. ``address`` is a path (unix), a host (tcp, tls) or a CID (vsock)."""

    kind: str
    address: str
    port: int = 0

    @property
    def url(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.kind == "vsock" and self.address == str(VMADDR_CID_ANY):
            host = "any"
        return f"{self.kind}://{host}:{self.port}"


def parse_listen_url(url: str) -> ListenerSpec:
    """``unix:///run/x.sock``, ``tcp://127.0.0.1:7000``, ``tls://0.0.0.0:7001``,
    ``vsock://any:7000``; ValueError."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"listen address {url!r} must look like unix:///path, tcp://HOST:PORT")
    if scheme == "unix":
        return ListenerSpec("unix", os.path.abspath(rest))
    if scheme not in ("tcp", "tls", "vsock"):
        raise ValueError(f"unknown listener scheme {scheme!r} in {url!r} (unix, tcp, tls or vsock)")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"listen address {url!r} needs a port")
    if scheme in ("tcp", "tls"):
        return ListenerSpec(scheme, parts.hostname or "0.0.0.0", port)
    return ListenerSpec("vsock", str(_vsock_cid(parts.hostname or "any", url)), port)


def _vsock_cid(host: str, url: str) -> int:
    if host in ("any", "-1"):
        return VMADDR_CID_ANY
    if not host.isdigit():
        raise ValueError(f"vsock CID in {url!r} must be a number or 'any'")
    return int(host)


def bind_unix(
    path: str, mode: int, owner: int | None = None, group: int | None = None
) -> socket.socket:
    """A listening Unix socket at ``path`` that never exists with a wider mode.

    The socket is bound under a temporary name, chown-ed to ``owner``/``group``
    (uid/gid; None keeps the agent's own), chmod-ed, then renamed into place,
    so no one else can connect in between. A stale socket file is replaced; a
    live one is an error.
    """
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    _remove_stale(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0)  # nobody in until owner, group and mode are final
        if owner is not None or group is not None:
            os.chown(tmp, -1 if owner is None else owner, -1 if group is None else group)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a killed agent
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")


def bind_vsock(cid: int, port: int) -> socket.socket:
    """A listening AF_VSOCK socket (a VM guest's host-facing channel)."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def server_tls_context(cert: str, key: str | None, client_ca: str | None) -> ssl.SSLContext:
    """The TLS context of ``tls://`` listeners (TLS 1.2 or later).

    ``client_ca`` turns on mutual TLS: a client must present a certificate
    signed by that CA, or the TLS handshake fails before any frame is read.
    Raises OSError/ssl.SSLError for unreadable or mismatched files.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx
