"""Where a request goes: one agent, or a pool of agents.

The SDK's public methods take ``agent`` and ``pool`` keyword arguments;
:meth:`Target.of` checks them once (exactly one of the two) and everything
below the facade (:mod:`~execbus.client.rpc`, :mod:`~execbus.client.agents`,
:mod:`~execbus.client.exits`) takes the resulting :class:`AgentTarget` or
:class:`PoolTarget`. A request to an agent is routed ``agent.<name>`` and
served from ``<ns>.agent.<name>``; one to a pool ``pool.<name>`` and
``<ns>.pool.<name>``, and a worker of the pool picks the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, final

from execbus.errors import InvalidRequest
from execbus.wire.routing import Names


@dataclass(frozen=True, slots=True)
class Target:
    """A named destination: an :class:`AgentTarget` or a :class:`PoolTarget`."""

    name: str
    kind: ClassVar[Literal["agent", "pool"]]

    @staticmethod
    def of(agent: str | None, pool: str | None) -> Target:
        """The target of ``agent`` or ``pool`` (exactly one); :class:`InvalidRequest` otherwise."""
        if agent is not None and pool is not None:
            raise InvalidRequest(
                f"name an agent or a pool, not both (got agent {agent!r} and pool {pool!r})"
            )
        if agent is not None:
            return AgentTarget(agent)
        if pool is not None:
            return PoolTarget(pool)
        raise InvalidRequest("no agent and no pool: name the agent, or pass pool='NAME'")

    @property
    def agent(self) -> str | None:
        """The agent's name; ``None`` for a pool (a worker of the pool picks the agent)."""
        return self.name if self.kind == "agent" else None

    @property
    def pool(self) -> str | None:
        """The pool's name; ``None`` for an agent."""
        return self.name if self.kind == "pool" else None

    def routing_key(self) -> str:
        """The routing key of a request on ``<ns>.requests``."""
        if self.kind == "pool":
            return Names.pool_routing_key(self.name)
        return Names.agent_routing_key(self.name)

    def queue(self, names: Names) -> str:
        """The queue the workers serving the target consume."""
        return names.pool_queue(self.name) if self.kind == "pool" else names.agent_queue(self.name)

    def describe(self) -> str:
        """For messages: ``agent 'a1'`` or ``pool 'gpu'``."""
        return f"{self.kind} {self.name!r}"


@final
@dataclass(frozen=True, slots=True)
class AgentTarget(Target):
    """One agent, by name."""

    kind: ClassVar[Literal["agent", "pool"]] = "agent"


@final
@dataclass(frozen=True, slots=True)
class PoolTarget(Target):
    """A pool of agents, by name: a worker serving the pool places the exec."""

    kind: ClassVar[Literal["agent", "pool"]] = "pool"
