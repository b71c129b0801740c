"""What a namespace holds: its queues and exchanges, and the AMQP probes that see them.

AMQP cannot list names, only answer for a given one (``queue.declare`` /
``exchange.declare`` with ``passive``): :func:`list_via_names` probes the names
every namespace has plus those of known agents and pools, and
:func:`refresh_counts` re-reads a listing's counts from the queues themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection

from execbus.wire.routing import Names

OP_TIMEOUT = 15.0
FIXED_EXCHANGES = ("requests", "events", "dead", "unrouted", "control")
FIXED_QUEUES = ("dead", "unrouted")


@dataclasses.dataclass
class QueueInfo:
    name: str
    messages: int | None = None
    consumers: int | None = None
    exclusive: bool = False


@dataclasses.dataclass
class Inventory:
    via: str
    queues: dict[str, QueueInfo]
    exchanges: list[str]
    complete: bool  # every name of the namespace (a listing), not only known names


class ListingFailed(Exception):
    """A listing method is not available; the message says why, in one line."""


def in_namespace(name: str, ns: str) -> bool:
    return name.startswith(ns + ".")


def is_lease(name: str, ns: str) -> bool:
    return name.startswith(f"{ns}.lease.")


async def probe_queue(connection: AbstractConnection, name: str) -> QueueInfo | None:
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return QueueInfo(name, result.message_count, result.consumer_count)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    except aiormq.exceptions.ChannelLockedResource:
        return QueueInfo(name, exclusive=True)  # exclusive to another, live, connection
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def probe_exchange(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.get_exchange(name, ensure=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def list_via_names(
    connection: AbstractConnection, names: Names, agents: set[str], pools: set[str]
) -> Inventory:
    ns = names.ns
    candidates = [f"{ns}.{q}" for q in FIXED_QUEUES]
    for agent in sorted(agents):
        candidates += [
            names.agent_queue(agent),
            names.lease_queue(agent),
            f"{ns}.holder.{agent}",
            f"{ns}.owner.{agent}",
        ]
    candidates += [names.pool_queue(pool) for pool in sorted(pools)]
    queues = {}
    for name in candidates:
        info = await probe_queue(connection, name)
        if info is not None:
            queues[name] = info
    exchanges = [
        f"{ns}.{suffix}"
        for suffix in FIXED_EXCHANGES
        if await probe_exchange(connection, f"{ns}.{suffix}")
    ]
    return Inventory("names", queues, sorted(exchanges), complete=False)


async def refresh_counts(connection: AbstractConnection, inventory: Inventory) -> None:
    """Ask each listed queue for its consumers and messages: listings lag.

    rabbitmqctl and the management API report a quorum queue's consumers and
    messages from statistics refreshed every few seconds, so a worker that has
    just stopped still looks alive there; queue.declare (passive) answers from
    the queue itself.
    """
    if inventory.via == "names":
        return  # already probed that way
    for name, info in list(inventory.queues.items()):
        if info.exclusive:
            continue
        fresh = await probe_queue(connection, name)
        if fresh is None:
            del inventory.queues[name]
        else:
            inventory.queues[name] = fresh
