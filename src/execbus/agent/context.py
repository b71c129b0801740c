"""What an op and a session may use of the agent: two narrow protocols.

The ops (:mod:`execbus.agent.ops`) run against an :class:`OpContext`, which the
session they arrived on provides; a session (:mod:`execbus.agent.session`)
runs against a :class:`CoreView`, which :class:`~execbus.agent.core.AgentCore`
implements. Both sit below the modules that use them (as aio-pika's ``abc``
does), so the ops never import the session and the session never imports the
core: the agent's imports run one way, ``TYPE_CHECKING`` ones included.
"""

from __future__ import annotations

from typing import Any, Protocol

from execbus.agent.execs import Exec
from execbus.agent.metrics import AgentMetrics
from execbus.agent.options import AgentOptions
from execbus.agent.supervisor import Supervisor

__all__ = ["CoreView", "OpContext"]


class OpContext(Protocol):
    """What an op sees: the exec table, the frame limit and its connection's slots."""

    @property
    def supervisor(self) -> Supervisor:
        """The agent's execs."""
        ...

    @property
    def max_frame(self) -> int:
        """The largest frame the agent accepts and sends."""
        ...

    def claim_exec(self, exec_id: str) -> bool:
        """Reserve the connection a slot for a new exec (raises ``limit_exceeded``);
        False when none is needed."""
        ...

    def settle_exec(self, exec_id: str, exe: Exec | None) -> None:
        """A claimed start ended: ``exe`` is what it started (None: nothing)."""
        ...

    def watch(self) -> None:
        """Send this connection the events of every exec from now on."""
        ...


class CoreView(Protocol):
    """What a session sees of the agent core that accepted its connection."""

    @property
    def options(self) -> AgentOptions:
        """The agent's settings."""
        ...

    @property
    def supervisor(self) -> Supervisor:
        """The agent's execs."""
        ...

    @property
    def metrics(self) -> AgentMetrics:
        """The agent's counters."""
        ...

    def hello(self, req: dict[str, Any], token: str | None) -> dict[str, Any]:
        """The handshake's result for ``req``; raises the handshake errors."""
        ...
