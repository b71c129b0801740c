"""What the request handlers, the exit path and the listener of one agent share.

An :class:`AgentState` per agent: its registry, its (current) connection, the
ordered event path, the per-exec lanes, the callers waiting for an exec's
end, and the hooks the runtime hangs its metrics on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from execbus.connections.base import AgentConnection
from execbus.connections.retry import RetryPolicy
from execbus.registry import ExecRecord, ExecRegistry
from execbus.wire.config import LIFECYCLE_EVENTS, ExecConfig
from execbus.wire.routing import Names
from execbus.worker.context import Outbox, ReplyTarget
from execbus.worker.event_path import ExecEvents
from execbus.worker.lanes import Lanes

REMEMBER_REMOVED = 4096


@dataclass(slots=True)
class Hooks:
    """Where the runtime counts things (all optional)."""

    on_retry: Callable[[], None] | None = None  # an agent call retried
    on_finished: Callable[[str, str, str], None] | None = None  # (agent, state, result)
    on_connect: Callable[[], None] | None = None  # each (re)connection to the agent
    on_link_down: Callable[[], None] | None = None  # each change of the link to "down"


@dataclass(eq=False)
class AgentState:
    """The shared state of one agent's execs in this worker."""

    agent: str
    registry: ExecRegistry
    connection: AgentConnection  # replaced by the runtime when it hands the agent over
    names: Names
    retry: RetryPolicy
    events: ExecEvents
    lifecycle: frozenset[str] = frozenset(LIFECYCLE_EVENTS)
    lanes: Lanes = field(default_factory=Lanes)
    waiters: dict[str, list[ReplyTarget]] = field(default_factory=dict)
    hooks: Hooks = field(default_factory=Hooks)
    # Execs removed here: a late exit notification must not resurrect them.
    removed: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @classmethod
    def build(
        cls,
        agent: str,
        registry: ExecRegistry,
        connection: AgentConnection,
        outbox: Outbox,
        retry: RetryPolicy,
        names: Names,
        lifecycle: Iterable[str] = LIFECYCLE_EVENTS,
    ) -> AgentState:
        events = ExecEvents(agent, names, outbox)
        return cls(agent, registry, connection, names, retry, events, frozenset(lifecycle))

    def publishes(self, config: ExecConfig, kind: str) -> bool:
        """Is lifecycle event ``kind`` published for an exec of ``config``? Both the
        worker (EXECBUS_LIFECYCLE_EVENTS) and the request may turn it off."""
        wanted = config.lifecycle_events
        return kind in self.lifecycle and (wanted is None or kind in wanted)

    def forget(self, exec_id: str) -> None:
        """``exec_id`` was removed: ignore its exit notification if one still comes."""
        self.waiters.pop(exec_id, None)
        self.removed[exec_id] = None
        while len(self.removed) > REMEMBER_REMOVED:
            self.removed.popitem(last=False)

    def log_ctx(self, exec_or_record: ExecRecord | str | None = None) -> dict[str, Any]:
        """Log context (``extra``): the agent, and the exec and container when known."""
        ctx: dict[str, Any] = {"agent": self.agent}
        if isinstance(exec_or_record, ExecRecord):
            ctx["exec_id"] = exec_or_record.exec_id
            if exec_or_record.container_id:
                ctx["container"] = exec_or_record.container_id
        elif exec_or_record is not None:
            ctx["exec_id"] = exec_or_record
        return ctx
