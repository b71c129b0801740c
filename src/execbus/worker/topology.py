"""Declare the exchanges and queues of a namespace (idempotent; every worker may run it).

Request queues are quorum queues: durable, replicated, with a delivery limit
(poison messages end in ``<ns>.dead``) and single active consumer for agent
queues (one worker at a time applies an agent's requests, in order). The
requests exchange has ``<ns>.unrouted`` as alternate exchange, so a request
for an agent no worker ever declared is still answered. Queue arguments must
be the same on every declare (RabbitMQ refuses a declare that differs), so
they are all made here, from the worker's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from execbus.settings import Settings
from execbus.wire.routing import Names

TOPIC = aio_pika.ExchangeType.TOPIC
FANOUT = aio_pika.ExchangeType.FANOUT


@dataclass(frozen=True, slots=True)
class Topology:
    """The namespace's names and how its queues are declared.

    ``replicas``: the quorum queues' initial group size
    (``x-quorum-initial-group-size``); None leaves it to the cluster's default.
    """

    names: Names
    delivery_limit: int
    replicas: int | None = None

    def quorum(self, **extra: Any) -> dict[str, Any]:
        """The arguments of a quorum queue of this namespace (plus ``extra``)."""
        args: dict[str, Any] = {"x-queue-type": "quorum", **extra}
        if self.replicas is not None:
            args["x-quorum-initial-group-size"] = self.replicas
        return args

    def request_queue_arguments(self, single_active: bool) -> dict[str, Any]:
        """Arguments of an agent or pool queue (identical on every declare)."""
        extra: dict[str, Any] = {
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.names.dead_exchange,
        }
        if single_active:
            extra["x-single-active-consumer"] = True
        return self.quorum(**extra)

    def lease_queue_arguments(self) -> dict[str, Any]:
        """Arguments of an agent's ownership lease queue (``worker/lease.py``)."""
        return self.quorum(**{"x-single-active-consumer": True})

    async def declare_lease_queue(self, channel: AbstractChannel, agent: str) -> AbstractQueue:
        """The lease queue of one agent (declared at connect, long before anyone
        consumes it: see ``worker/lease.py`` on new quorum queues)."""
        name = self.names.lease_queue(agent)
        return await channel.declare_queue(
            name, durable=True, arguments=self.lease_queue_arguments()
        )

    async def declare_base(self, channel: AbstractChannel) -> None:
        """Exchanges plus the dead-letter and unrouted queues."""
        names = self.names
        dead = await channel.declare_exchange(names.dead_exchange, FANOUT, durable=True)
        dead_q = await channel.declare_queue(
            names.dead_queue, durable=True, arguments=self.quorum()
        )
        await dead_q.bind(dead, routing_key="#")
        unrouted = await channel.declare_exchange(names.unrouted_exchange, FANOUT, durable=True)
        unrouted_q = await channel.declare_queue(
            names.unrouted_queue, durable=True, arguments=self.quorum()
        )
        await unrouted_q.bind(unrouted, routing_key="#")
        await channel.declare_exchange(
            names.requests_exchange,
            TOPIC,
            durable=True,
            arguments={"alternate-exchange": names.unrouted_exchange},
        )
        await channel.declare_exchange(names.events_exchange, TOPIC, durable=True)

    async def declare_agent_queue(self, channel: AbstractChannel, agent: str) -> AbstractQueue:
        """The quorum queue of one agent, bound to ``agent.<name>``."""
        names = self.names
        return await self._request_queue(
            channel, names.agent_queue(agent), names.agent_routing_key(agent), single_active=True
        )

    async def declare_pool_queue(self, channel: AbstractChannel, pool: str) -> AbstractQueue:
        """The shared quorum queue of one pool, bound to ``pool.<name>``."""
        names = self.names
        return await self._request_queue(
            channel, names.pool_queue(pool), names.pool_routing_key(pool), single_active=False
        )

    async def _request_queue(
        self, channel: AbstractChannel, name: str, routing_key: str, *, single_active: bool
    ) -> AbstractQueue:
        arguments = self.request_queue_arguments(single_active)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(self.names.requests_exchange, routing_key=routing_key)
        return queue


def topology_of(settings: Settings) -> Topology:
    """The worker's topology, from its settings."""
    return Topology(Names(settings.namespace), settings.delivery_limit, settings.quorum_replicas)
