"""What the cluster looks like: live workers (from their announcements), owners, queue depths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from aiormq.exceptions import ChannelAccessRefused

from execbus.broker import broker_reason
from execbus.client.feed import QueueFeed
from execbus.client.inbox import client_queue_name
from execbus.errors import BrokerError
from execbus.wire.control import CONNECTED, Announcement
from execbus.wire.routing import Names

log = logging.getLogger("execbus.client")


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One live worker as it announced itself (``links``: agent -> its link state, for
    each agent it owns: ``connected``, and ``reason``/``code``/``since`` when down;
    workers announce only the links that are down, the others are connected)."""

    worker_id: str
    agents: list[str]
    owned: list[str]
    load: int
    pools: list[str] = field(default_factory=list)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str = ""
    started_at: float = 0.0

    @classmethod
    def from_announcement(cls, a: Announcement) -> WorkerStatus:
        return cls(
            worker_id=a.worker_id,
            agents=sorted(a.agents),
            owned=sorted(a.owned),
            load=a.load,
            pools=sorted(a.pools),
            links={name: (a.link_of(name) or CONNECTED).to_json() for name in sorted(a.owned)},
            version=a.version,
            started_at=a.started_at,
        )


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """An agent (or pool) queue: messages waiting and consumers."""

    name: str
    messages: int | None
    consumers: int | None


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    workers: list[WorkerStatus]
    queues: dict[str, QueueStatus]

    def owner_of(self, agent: str) -> str | None:
        return next((w.worker_id for w in self.workers if agent in w.owned), None)

    def link_of(self, agent: str) -> dict[str, Any] | None:
        """The owner's link state of ``agent`` (None: no owner)."""
        return next((w.links[agent] for w in self.workers if agent in w.links), None)


async def cluster_status(
    connection: AbstractConnection,
    names: Names,
    listen: float,
    extra_agents: list[str],
    user: str | None = None,
) -> ClusterStatus:
    """Listen to worker announcements for ``listen`` seconds, then read the queue depths.

    The listening queue is ``user``'s own (``<ns>.client.<user>.*``), a name the
    caller and observer permissions let it declare."""
    workers = await _listen(connection, names, listen, user)
    # Announcements carry the reachable set only now and then (its digest always):
    # the owned agents, always there, name the agents that are served.
    reachable = {a for w in workers.values() for a in (*w.agents, *w.owned)}
    agents = sorted(reachable | set(extra_agents))
    pools = sorted({p for w in workers.values() for p in w.pools})
    wanted = {a: names.agent_queue(a) for a in agents}
    wanted.update({f"pool:{p}": names.pool_queue(p) for p in pools})
    queues = await _queues(connection, wanted)
    return ClusterStatus(sorted(workers.values(), key=lambda w: w.worker_id), queues)


async def _listen(
    connection: AbstractConnection, names: Names, listen: float, user: str | None
) -> dict[str, WorkerStatus]:
    seen: dict[str, WorkerStatus] = {}

    def on_message(message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            announcement = Announcement.from_json(json.loads(message.body))
            if not announcement.stopping:
                seen[announcement.worker_id] = WorkerStatus.from_announcement(announcement)

    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            exchange = await channel.declare_exchange(names.control_exchange, passive=True)
            # Named: left unnamed, a robust channel names it amq_<uuid>, which no
            # caller or observer permission covers.
            queue = await channel.declare_queue(
                client_queue_name(names, user), exclusive=True, auto_delete=True
            )
            await queue.bind(exchange, "worker.#")
        except ChannelNotFoundEntity:
            return seen  # no worker ever ran in this namespace
        except ChannelAccessRefused as exc:
            raise BrokerError(
                f"cannot read {names.control_exchange} (the worker announcements): "
                f"{broker_reason(exc)}; this needs the observer permissions "
                "(`execbus permissions observer`, docs/security.md)"
            ) from None

        async def consume(message: AbstractIncomingMessage) -> None:
            on_message(message)

        await queue.consume(consume, no_ack=True)
        await asyncio.sleep(listen)
    finally:
        await channel.close()
    return seen


#: Channels probing queue depths side by side (a fleet of 1,000 agents is 1,000 probes).
PROBE_LANES = 16


async def _queues(connection: AbstractConnection, wanted: dict[str, str]) -> dict[str, QueueStatus]:
    """Each key's queue depth and consumers, probed over a few channels at once."""
    todo = list(wanted.items())
    found: dict[str, QueueStatus] = {}
    lanes = [todo[i::PROBE_LANES] for i in range(PROBE_LANES)]
    await asyncio.gather(*(_probe_lane(connection, lane, found) for lane in lanes if lane))
    return {key: found[key] for key in wanted}


async def _probe_lane(
    connection: AbstractConnection, lane: list[tuple[str, str]], found: dict[str, QueueStatus]
) -> None:
    channel: AbstractChannel | None = None
    try:
        for key, name in lane:
            if channel is None:
                channel = await connection.channel(publisher_confirms=False)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:  # the broker closed the channel: a new one next
                found[key] = QueueStatus(name, None, None)
                await _close_quietly(channel)
                channel = None
                continue
            result = queue.declaration_result
            found[key] = QueueStatus(name, result.message_count, result.consumer_count)
    finally:
        await _close_quietly(channel)


async def _close_quietly(channel: AbstractChannel | None) -> None:
    if channel is not None:
        with contextlib.suppress(Exception):
            await channel.close()


def parse_announcement(body: bytes) -> Announcement | None:
    """An announcement from a ``<ns>.control`` message body; None when it is not one."""
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            return None
        return Announcement.from_json(doc)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Announcements(QueueFeed[Announcement]):
    """Worker announcements as they arrive (``async for a in client.announcements()``).

    Like :class:`~execbus.client.subscriptions.Subscription`, it has its own
    exclusive, auto-delete queue (``<ns>.client.<user>.*``: observer
    permissions suffice), bound to ``<ns>.control`` with ``worker.#``; the
    robust connection re-declares it after a reconnect. Stopping workers'
    last words are delivered too (``Announcement.stopping``). Messages that
    are not announcements are skipped and counted in :attr:`malformed`.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        on_close: Callable[[Announcements], None] | None = None,
        user: str | None = None,
    ) -> None:
        super().__init__(connection, names, on_close, user)

    async def open(self) -> None:
        """Declare and bind the queue; :class:`BrokerError` if ``<ns>.control`` does not
        exist (no worker ran yet) or may not be read."""
        if self._opened:
            return
        self._opened = True
        exchange = self._names.control_exchange
        try:
            check = await self._connection.channel(publisher_confirms=False)
            try:
                await check.declare_exchange(exchange, passive=True, robust=False)
            finally:
                with contextlib.suppress(Exception):
                    await check.close()
            await self._consume(exchange, ["worker.#"])
        except ChannelNotFoundEntity:
            await self.close()
            raise BrokerError(
                f"{exchange} does not exist: no worker has run in namespace {self._names.ns!r} yet"
            ) from None
        except ChannelAccessRefused as exc:
            await self.close()
            raise BrokerError(
                f"cannot read {exchange} (the worker announcements): "
                f"{broker_reason(exc)}; this needs the observer permissions "
                "(`execbus permissions observer`, docs/security.md)"
            ) from None
        except CONNECTION_EXCEPTIONS as exc:
            await self.close()
            raise BrokerError(f"cannot follow {exchange}: {broker_reason(exc)}") from exc

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        announcement = parse_announcement(message.body)
        if announcement is None:
            self.malformed += 1
            log.warning("ignoring a malformed announcement (%s)", message.routing_key)
            return
        self._items.put_nowait(announcement)

    async def next_announcement(self) -> Announcement | None:
        """The next announcement; ``None`` once closed."""
        return await self._next()
