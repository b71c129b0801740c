"""Build the right :class:`AgentConnection` for an address, with its dialer."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from execbus.broker import tls_context
from execbus.connections.address import AgentAddress
from execbus.connections.agent_client import AgentClient, Dialer
from execbus.connections.base import AgentConnection
from execbus.errors import AgentAuthFailed, AgentError, AgentUnavailable, ConfigError

STREAM_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How to reach agents: timeouts, the TCP token and TLS material."""

    call_timeout: float = 10.0
    heartbeat: float = 2.0
    token: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


def unix_dialer(path: str) -> Dialer:
    async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(path, limit=STREAM_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(f"cannot connect to unix://{path}: {exc.strerror}") from exc

    return dial


def tcp_dialer(host: str, port: int, tls: ssl.SSLContext | None = None) -> Dialer:
    async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(host, port, ssl=tls, limit=STREAM_LIMIT)
        except ConnectionRefusedError as exc:
            raise AgentUnavailable(f"cannot connect to {host}:{port}: connection refused") from exc
        except ssl.SSLCertVerificationError as exc:
            subject = await peer_subject(host, port)
            raise AgentAuthFailed(
                f"TLS: the certificate of {host}:{port}{subject} failed verification: "
                f"{exc.verify_message or exc.reason}"
            ) from exc
        except ssl.SSLError as exc:
            raise tls_error(host, port, exc) from exc

    return dial


def tls_error(host: str, port: int, exc: ssl.SSLError) -> AgentError:
    """A failed TLS handshake: the agent refusing our certificate is an authentication
    failure; anything else (a plain-TCP agent, no shared protocol) is not."""
    reason = str(exc.reason or exc)
    if "CERTIFICATE" in reason.upper():
        return AgentAuthFailed(f"TLS: {host}:{port} refused our client certificate ({reason})")
    return AgentUnavailable(f"TLS handshake with {host}:{port} failed: {reason}")


async def peer_subject(host: str, port: int) -> str:
    """`` (subject CN=...)`` of the certificate a peer presents, read without verifying
    it (only to say which certificate was refused); "" when it cannot be read."""
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        finally:
            writer.close()
        return f" (subject {describe_subject(der)})" if der else ""
    except (OSError, TimeoutError, ValueError, ssl.SSLError):
        return ""


def describe_subject(der: bytes) -> str:
    """``CN=agent,O=example`` from a DER certificate (CPython's own decoder)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
        pem.write(ssl.DER_cert_to_PEM_cert(der))
        pem.flush()
        decoded = ssl._ssl._test_decode_cert(pem.name)  # type: ignore[attr-defined]
    parts = [f"{_short(k)}={v}" for rdn in decoded.get("subject", ()) for k, v in rdn]
    return ",".join(parts) or "(empty)"


def _short(name: str) -> str:
    return {"commonName": "CN", "organizationName": "O", "countryName": "C"}.get(name, name)


def vsock_dialer(cid: int, port: int) -> Dialer:
    async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise ConfigError("this platform has no AF_VSOCK")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (cid, port))
        except OSError as exc:
            sock.close()
            raise AgentUnavailable(f"cannot connect to vsock://{cid}:{port}: {exc}") from exc
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)

    return dial


def client_tls_context(options: ConnectOptions) -> ssl.SSLContext:
    """A TLS context verifying the agent (and presenting a client cert for mTLS).

    The agent's certificate must be signed by ``tls_ca_file`` (default: the
    system's trust store) and name the host of the ``tls://`` address (DNS
    name or IP address in its subjectAltName). Unreadable files are a
    :class:`ConfigError`.
    """
    return tls_context("agent", options.tls_ca_file, options.tls_cert_file, options.tls_key_file)


def make_connection(name: str, address: AgentAddress, options: ConnectOptions) -> AgentConnection:
    """The connection for ``address`` (not opened yet)."""
    if address.scheme == "local":
        from execbus.connections.local import LocalAgentClient

        return LocalAgentClient(
            name, call_timeout=options.call_timeout, heartbeat=options.heartbeat
        )
    if address.scheme == "unix":
        return _client(name, unix_dialer(address.path), options, token=options.token)
    if address.scheme in ("tcp", "tls"):
        if options.token is None:
            raise ConfigError(f"agent {name!r} at {address}: tcp agents need a token file")
        if address.scheme == "tcp":
            return _client(name, tcp_dialer(address.host, address.port), options, options.token)
        dialer = tcp_dialer(address.host, address.port, client_tls_context(options))
        return _client(name, dialer, options, options.token, _tls_hangup(name, address, options))
    if address.scheme == "vsock":
        try:
            cid = int(address.host)
        except ValueError:
            raise ConfigError(f"agent {name!r}: vsock CID must be a number") from None
        return _client(name, vsock_dialer(cid, address.port), options, token=options.token)
    if address.scheme == "qga+unix":
        from execbus.connections.qga import QgaConnection

        return QgaConnection(name, address.path, call_timeout=options.call_timeout)
    raise ConfigError(f"unsupported agent address {address}")  # pragma: no cover


def _client(
    name: str,
    dialer: Dialer,
    options: ConnectOptions,
    token: str | None,
    closed_early: AgentError | None = None,
) -> AgentClient:
    return AgentClient(
        name,
        dialer,
        token=token,
        call_timeout=options.call_timeout,
        heartbeat=options.heartbeat,
        closed_early=closed_early,
    )


def _tls_hangup(name: str, address: AgentAddress, options: ConnectOptions) -> AgentError:
    """A TLS agent that hangs up before answering hello refused our certificate: over
    TLS 1.3 the client learns of it only this way (a bad token gets an answer)."""
    ours = (
        "this worker presents none (set EXECBUS_AGENT_TLS_CERT_FILE)"
        if options.tls_cert_file is None
        else f"this worker presents {options.tls_cert_file}"
    )
    return AgentAuthFailed(
        f"agent {name!r} at {address} hung up before the handshake: it requires a client "
        f"certificate it trusts (mTLS), and {ours}"
    )
