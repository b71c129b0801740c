"""The one interface every kind of agent connection implements.

The worker drives agents only through :class:`AgentConnection` (the
reference's ``ExecAgentConnection``, grown): start, wait, inspect, signal,
resize, stdin, list and ack. An execbus agent (Unix, TCP, vsock or in
process) and QEMU's guest agent plug in behind it without touching the
worker. Events (output, exits, reconnects) flow back through an
:class:`AgentListener`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol

from execbus.errors import ErrorCode
from execbus.wire.config import ExecConfig
from execbus.wire.records import ErrorInfo, ExitInfo


@dataclass(slots=True)
class AgentExec:
    """An exec as the agent reports it."""

    exec_id: str
    state: str  # "running" | "exited" | "failed"
    pid: int | None = None
    tty: bool = False
    container_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitInfo | None = None
    error: ErrorInfo | None = None
    new: bool = False

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "failed")


class AgentListener(Protocol):
    """Receives what an agent pushes. Awaiting in a callback backpressures the agent."""

    async def on_output(self, agent: str, exec_id: str, stream: str, seq: int, data: bytes) -> None:
        """A chunk of output of an exec started with ``stream_output``."""

    async def on_exit(self, agent: str, state: AgentExec) -> None:
        """An exec finished (exited or failed)."""

    async def on_connected(self, agent: str, boot_changed: bool) -> None:
        """A (re)connection completed; ``boot_changed``: the agent restarted meanwhile."""

    async def on_disconnected(self, agent: str, reason: str) -> None:
        """The connection to the agent was lost."""


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What the agent told about itself at the handshake."""

    boot_id: str
    version: int = 1
    agent_version: str = ""
    capabilities: frozenset[str] = frozenset()
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class LinkState:
    """Is the agent connected; if not, why not (``code``: what calls fail with)."""

    connected: bool
    reason: str = ""
    code: str = ErrorCode.AGENT_UNAVAILABLE
    since: float = 0.0  # wall-clock time of the last change

    def as_dict(self) -> dict[str, Any]:
        """For /readyz, announcements and ``execbus status``."""
        doc: dict[str, Any] = {"connected": self.connected, "since": round(self.since, 3)}
        if not self.connected:
            doc.update(reason=self.reason, code=self.code)
        return doc


class AgentConnection(abc.ABC):
    """A connection to one guest agent. Errors are ``execbus.errors`` exceptions:
    :class:`~execbus.errors.AgentUnavailable` for transient faults (retryable),
    others for semantic errors (never retried)."""

    name: str

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while a live, handshaken connection exists."""

    @property
    @abc.abstractmethod
    def info(self) -> AgentInfo | None:
        """The handshake result of the current connection."""

    @property
    @abc.abstractmethod
    def state(self) -> LinkState:
        """Connected or not, and why not."""

    @abc.abstractmethod
    async def open(self, listener: AgentListener) -> None:
        """Start connecting (in the background, reconnecting as needed)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection and stop reconnecting."""

    @abc.abstractmethod
    async def start(self, exec_id: str, config: ExecConfig, meta: dict[str, Any]) -> AgentExec:
        """Spawn the exec (idempotent by ``exec_id``)."""

    @abc.abstractmethod
    async def inspect(self, exec_id: str) -> AgentExec:
        """The exec's current state, with captured output when finished."""

    @abc.abstractmethod
    async def wait(self, exec_id: str) -> AgentExec:
        """Block until the exec has finished."""

    @abc.abstractmethod
    async def signal(self, exec_id: str, signal: str | int) -> None:
        """Send a signal to the exec's process group."""

    @abc.abstractmethod
    async def resize(self, exec_id: str, width: int, height: int) -> None:
        """Resize the exec's TTY."""

    @abc.abstractmethod
    async def write_stdin(self, exec_id: str, data: bytes, close: bool) -> None:
        """Write to (and optionally close) the exec's stdin."""

    @abc.abstractmethod
    async def list(self) -> list[AgentExec]:
        """Every exec the agent holds (running, and finished but not acknowledged)."""

    @abc.abstractmethod
    async def ack(self, exec_id: str) -> None:
        """Tell the agent a finished exec's exit was published; it may forget it."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """A round trip; raises AgentUnavailable when the agent does not answer."""
