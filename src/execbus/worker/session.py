"""One broker session of the worker: its connection, its publisher, and channels.

A session lives as long as its AMQP connection (or its publishing channel):
every lease, consumer and channel hangs off it, and a new session starts from
scratch (``worker/service.py``). Agent runtimes and the ownership loop get
the session they run in; they never see the worker itself. A publish the
broker nacks does not end the session: the publisher opens a fresh
publishing channel through the session (:meth:`BrokerSession.channel`) and
closes the nacked one (``execbus.publishing.ConfirmChannel``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractConnection
from pydantic import BaseModel

from execbus.errors import PublishFailed
from execbus.worker.publisher import Publisher

CHANNEL_NUMBERS = range(1, 2000)  # below RabbitMQ's default channel_max of 2047


class SessionOutbox:
    """The outbox of the current broker session; fails fast between sessions."""

    def __init__(self) -> None:
        self.publisher: Publisher | None = None

    def _require(self) -> Publisher:
        if self.publisher is None:
            raise PublishFailed("not connected to the broker")
        return self.publisher

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
        await self._require().event(routing_key, event, event_id)

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        await self._require().reply(reply_to, correlation_id, reply)


@dataclass(slots=True)
class BrokerSession:
    """One live broker connection and what hangs off it."""

    connection: AbstractConnection
    publisher: Publisher
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _cursor: int = 0

    def __post_init__(self) -> None:
        # A nacked publish replaces the publishing channel with one of this session's.
        self.publisher.reopen_with(self._publishing_channel)

    async def _publishing_channel(self) -> AbstractChannel:
        return await self.channel(publisher_confirms=True)

    async def channel(self, publisher_confirms: bool = False) -> AbstractChannel:
        """Open a channel, never reusing a recently closed channel number.

        Channels are opened and closed as agents change hands; aiormq may hand a
        number out again before the broker has finished closing it, and the
        broker then closes the whole connection ("second 'channel.open' seen").
        Cycling through the whole range keeps a number unused for thousands of
        opens.
        """
        return await open_channel(self, self.connection, publisher_confirms)


async def open_channel(
    session: BrokerSession | None, connection: AbstractConnection, publisher_confirms: bool
) -> AbstractChannel:
    """Open a channel with the next free number of the session's cycle."""
    underlay = getattr(connection.transport, "connection", None)
    used: set[int] = set(getattr(underlay, "channels", {}) or {})
    cursor = session._cursor if session is not None else 0
    for _ in range(len(CHANNEL_NUMBERS)):
        number = CHANNEL_NUMBERS[cursor % len(CHANNEL_NUMBERS)]
        cursor += 1
        if number not in used:
            break
    if session is not None:
        session._cursor = cursor
    return await connection.channel(number, publisher_confirms=publisher_confirms)
