"""Declare the exchanges and queues of a namespace (idempotent; every worker may run it).

Request queues are quorum queues: durable, replicated, with a delivery limit
(poison messages end in ``<ns>.dead``) and single active consumer for agent
queues (one worker at a time applies an agent's requests, in order). The
requests exchange has ``<ns>.unrouted`` as alternate exchange, so a request
for an agent no worker ever declared is still answered.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from execbus.wire.routing import Names

TOPIC = aio_pika.ExchangeType.TOPIC
FANOUT = aio_pika.ExchangeType.FANOUT


def request_queue_arguments(
    names: Names, delivery_limit: int, single_active: bool
) -> dict[str, Any]:
    """Arguments of an agent or pool queue (must be identical on every declare)."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": names.dead_exchange,
    }
    if single_active:
        args["x-single-active-consumer"] = True
    return args


async def declare_base(channel: AbstractChannel, names: Names) -> None:
    """Exchanges plus the dead-letter and unrouted queues."""
    dead = await channel.declare_exchange(names.dead_exchange, FANOUT, durable=True)
    dead_q = await channel.declare_queue(
        names.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_q.bind(dead, routing_key="#")
    unrouted = await channel.declare_exchange(names.unrouted_exchange, FANOUT, durable=True)
    unrouted_q = await channel.declare_queue(
        names.unrouted_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await unrouted_q.bind(unrouted, routing_key="#")
    await channel.declare_exchange(
        names.requests_exchange,
        TOPIC,
        durable=True,
        arguments={"alternate-exchange": names.unrouted_exchange},
    )
    await channel.declare_exchange(names.events_exchange, TOPIC, durable=True)


async def declare_agent_queue(
    channel: AbstractChannel, names: Names, agent: str, delivery_limit: int
) -> AbstractQueue:
    """The quorum queue of one agent, bound to ``agent.<name>``."""
    queue = await channel.declare_queue(
        names.agent_queue(agent),
        durable=True,
        arguments=request_queue_arguments(names, delivery_limit, single_active=True),
    )
    await queue.bind(names.requests_exchange, routing_key=names.agent_routing_key(agent))
    return queue


async def declare_pool_queue(
    channel: AbstractChannel, names: Names, pool: str, delivery_limit: int
) -> AbstractQueue:
    """The shared quorum queue of one pool, bound to ``pool.<name>``."""
    queue = await channel.declare_queue(
        names.pool_queue(pool),
        durable=True,
        arguments=request_queue_arguments(names, delivery_limit, single_active=False),
    )
    await queue.bind(names.requests_exchange, routing_key=names.pool_routing_key(pool))
    return queue
