"""Deleting an inventory's queues and exchanges, and :func:`purge_namespace` for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection

from execbus.broker import broker_reason
from execbus.cli.purge.discovery import take_inventory
from execbus.cli.purge.inventory import OP_TIMEOUT, Inventory
from execbus.wire.routing import Names


async def delete_all(connection: AbstractConnection, inventory: Inventory) -> list[str]:
    """Delete the inventory's queues (not the exclusive ones), then its exchanges.

    Returns what could not be deleted, and why.
    """
    deletable = sorted(q.name for q in inventory.queues.values() if not q.exclusive)
    failures = []
    async with asyncio.timeout(OP_TIMEOUT + 0.5 * (len(deletable) + len(inventory.exchanges))):
        for name in deletable:
            if (why := await _delete(connection, "queue", name)) is not None:
                failures.append(f"queue {name}: {why}")
        for name in inventory.exchanges:
            if (why := await _delete(connection, "exchange", name)) is not None:
                failures.append(f"exchange {name}: {why}")
    return failures


async def _delete(connection: AbstractConnection, kind: str, name: str) -> str | None:
    """Delete a queue or exchange; ``None`` if it is gone, else why not."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        if kind == "queue":
            await channel.queue_delete(name)
        else:
            await channel.exchange_delete(name)
        return None
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None  # already gone
    except aiormq.exceptions.ChannelLockedResource:
        return "exclusive to a live connection"
    except aiormq.exceptions.ChannelAccessRefused:
        return "access refused (the user needs configure permission on it)"
    except aiormq.exceptions.AMQPError as exc:
        return broker_reason(exc)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclasses.dataclass
class PurgeReport:
    via: str
    queues: list[str]  # deleted, or attempted (see failures)
    exchanges: list[str]
    exclusive: list[str]  # left to the broker (their connection is still open)
    failures: list[str]
    complete: bool  # False: listed by known names only

    def summary(self) -> str:
        text = (
            f"purged namespace: {plural(len(self.queues), 'queue')} and "
            f"{plural(len(self.exchanges), 'exchange')} (found by {self.via})"
        )
        if self.exclusive:
            text += f"; left to the broker: {', '.join(self.exclusive)}"
        if self.failures:
            text += f"; NOT deleted: {'; '.join(self.failures)}"
        return text


async def purge_namespace(
    amqp_url: str,
    namespace: str,
    *,
    agents: Iterable[str] = (),
    pools: Iterable[str] = (),
    via: str = "auto",
    management_url: str | None = None,
) -> PurgeReport:
    """Delete every queue and exchange of ``namespace``, for scripts that stopped their own
    workers (benchmarks, tests): no liveness check, no confirmation.

    Raises :class:`~execbus.cli.purge.inventory.ListingFailed` (``via`` other
    than auto) and the broker's errors.
    """
    names = Names(namespace)
    connection = await aio_pika.connect(amqp_url, timeout=OP_TIMEOUT)
    try:
        inventory, _ = await take_inventory(
            amqp_url,
            connection,
            names,
            via=via,
            management_url=management_url,
            agents=set(agents),
            pools=set(pools),
        )
        failures = await delete_all(connection, inventory)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    queues = sorted(q.name for q in inventory.queues.values() if not q.exclusive)
    exclusive = sorted(q.name for q in inventory.queues.values() if q.exclusive)
    return PurgeReport(
        inventory.via, queues, inventory.exchanges, exclusive, failures, inventory.complete
    )
