"""Confirm-mode channels that answer as RabbitMQ 3.10 does with a stale quorum leader.

See :mod:`execbus.testing.amqp`: :class:`FakeConfirmBroker` and its
:class:`FakeChannel`\\ s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, cast

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.tools import CallbackCollection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import ConfirmationFrameType, TimeoutType
from aiormq.channel import Channel as ConcreteRawChannel
from aiormq.exceptions import ChannelClosed, ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic


class FakeConfirmBroker:
    """Confirm-mode channels of one connection, with RabbitMQ 3.10's stale quorum leader.

    Routing keys in :attr:`leader_down` stand for quorum queues whose recorded
    leader is down. A channel's first publish to one is nacked, and so is
    every later publish of that channel to it, whatever :attr:`leader_down`
    holds by then (``rabbit_fifo_client`` keeps asking the dead node); a
    channel whose first publish to a key found it led is acked. Confirmed
    publishes land in :attr:`published`. :meth:`hold` keeps confirms back
    until :meth:`release`; with :attr:`refuse_open` a channel fails to open,
    as on a connection that is down. :attr:`connection` opens the channels
    (``connection.channel(...)``, awaited), :meth:`open` is a
    :data:`~execbus.publishing.ChannelOpener`.
    """

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []  # every channel asked for, in order
        self.leader_down: set[str] = set()
        self.published: list[tuple[int, str, str, bytes]] = []  # channel, exchange, key, body
        self.refuse_open = False
        self.connection = cast(AbstractConnection, _FakeConnection(self))
        self._held: frozenset[str] | None = None
        self._released = asyncio.Event()
        self._released.set()

    async def open(self) -> AbstractChannel:
        """A new confirm-mode channel (the :data:`~execbus.publishing.ChannelOpener`)."""
        return await self.connection.channel(publisher_confirms=True)

    def hold(self, *keys: str) -> None:
        """Publishes (to ``keys``; all without) wait for their confirm until :meth:`release`."""
        self._held = frozenset(keys) if keys else None
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def confirm(self, channel: FakeChannel, exchange: str, key: str, body: bytes) -> None:
        """The broker's answer to one publish on ``channel``: return (ack) or raise."""
        if not self._released.is_set() and (self._held is None or key in self._held):
            await self._released.wait()
        if channel.is_closed:
            raise ChannelInvalidStateError(f"<Channel {channel.number}> closed")
        if key in channel.refused or (key not in channel.resolved and key in self.leader_down):
            channel.refused.add(key)
            raise DeliveryError(None, Basic.Nack(delivery_tag=len(self.published) + 1))
        channel.resolved.add(key)
        self.published.append((channel.number, exchange, key, body))


class _FakeConnection:
    """As much of an aio-pika connection as opening a channel uses."""

    transport = None
    is_closed = False

    def __init__(self, broker: FakeConfirmBroker) -> None:
        self._broker = broker

    def channel(
        self, channel_number: int | None = None, publisher_confirms: bool = True
    ) -> AbstractChannel:
        channel = FakeChannel(self._broker, len(self._broker.channels) + 1)
        self._broker.channels.append(channel)
        return cast(AbstractChannel, channel)


class FakeChannel:
    """One confirm-mode channel of a :class:`FakeConfirmBroker` (as much of aio-pika's
    channel as publishing uses: awaiting it opens it, ``get_underlay_channel``,
    ``close``, ``is_closed``, ``close_callbacks``, ``number``)."""

    def __init__(self, broker: FakeConfirmBroker, number: int) -> None:
        self.number = number
        self.close_callbacks: CallbackCollection[Any, Any] = CallbackCollection(self)
        self.closed_by: str | None = None  # "client" | "broker"
        self.opened = False
        self.refused: set[str] = set()  # keys this channel is stuck on (the defect)
        self.resolved: set[str] = set()  # keys whose leader it found
        self._broker = broker
        self._raw = _RawFakeChannel(self)

    def __await__(self) -> Generator[Any, None, FakeChannel]:
        return self._open().__await__()

    async def _open(self) -> FakeChannel:
        if self._broker.refuse_open:
            raise ChannelInvalidStateError("No active transport in channel")
        self.opened = True
        return self

    @property
    def is_closed(self) -> bool:
        return self.closed_by is not None

    async def get_underlay_channel(self) -> RawChannel:
        if self.is_closed or not self.opened:
            raise ChannelInvalidStateError(f"<Channel {self.number}> closed")
        return self._raw

    async def close(self, exc: BaseException | None = None) -> None:
        if not self.is_closed:
            self.closed_by = "client"
            await self.close_callbacks(exc)

    async def close_by_broker(self, reply_text: str = "NOT_FOUND - no exchange") -> None:
        """The broker closes the channel (a channel error)."""
        self.closed_by = "broker"
        await self.close_callbacks(ChannelClosed(404, reply_text))

    async def publish(self, exchange: str, key: str, body: bytes) -> None:
        await self._broker.confirm(self, exchange, key, body)


class _RawFakeChannel(ConcreteRawChannel):
    """The aiormq layer :func:`~execbus.publishing.publish_confirmed` publishes on."""

    def __init__(self, owner: FakeChannel) -> None:  # no connection: nothing to set up
        self._owner = owner

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Basic.Properties | None = None,
        mandatory: bool = False,
        immediate: bool = False,
        timeout: TimeoutType = None,
        wait: bool = True,
    ) -> ConfirmationFrameType | None:
        async with asyncio.timeout(timeout):
            await self._owner.publish(exchange, routing_key, body)
        return Basic.Ack()
