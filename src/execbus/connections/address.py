"""Agent addresses: ``NAME=ADDRESS`` specs and the address forms a worker can reach.

=========================  =========================================
``local``                  an in-process agent on the worker's host
``unix:///path.sock``      an execbus agent on a Unix socket
``tcp://host:port``        an execbus agent over TCP (token required)
``tls://host:port``        the same over TLS
``vsock://cid:port``       an execbus agent over AF_VSOCK
``qga+unix:///path.sock``  QEMU's guest agent on a Unix socket
=========================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from execbus.errors import ConfigError
from execbus.wire.ids import is_valid_name

Scheme = Literal["local", "unix", "tcp", "tls", "vsock", "qga+unix"]
_SCHEMES = ("unix", "tcp", "tls", "vsock", "qga+unix")


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """Where an agent listens."""

    scheme: Scheme
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "local":
            return "local"
        if self.scheme in ("unix", "qga+unix"):
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_address(text: str) -> AgentAddress:
    """Parse one address; :class:`ConfigError` with the reason when it is not valid."""
    if text == "local":
        return AgentAddress("local")
    parts = urlsplit(text)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"agent address {text!r}: scheme must be one of local, {', '.join(_SCHEMES)}"
        )
    scheme: Scheme = parts.scheme  # type: ignore[assignment]
    if scheme in ("unix", "qga+unix"):
        path = parts.netloc + parts.path
        if not path.startswith("/"):
            raise ConfigError(f"agent address {text!r}: needs an absolute path, {scheme}:///path")
        return AgentAddress(scheme, path=path)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"agent address {text!r}: needs {scheme}://HOST:PORT")
    return AgentAddress(scheme, host=parts.hostname, port=port)


def parse_agent_spec(spec: str) -> tuple[str, AgentAddress]:
    """Parse ``NAME=ADDRESS`` (``NAME`` alone means ``NAME=local``)."""
    name, sep, address = spec.partition("=")
    name = name.strip()
    if not is_valid_name(name):
        raise ConfigError(
            f"agent name {name!r} is not valid: use letters, digits, '_' and '-' (max 64)"
        )
    return name, parse_address(address.strip() if sep else "local")
