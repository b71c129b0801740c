"""An in-memory stand-in for the broker, for fast unit tests of the delivery layer.

Three pieces, the first two after faststream's ``TestRabbitBroker``/``build_message``:

* :class:`FakeDelivery` is a request delivery as the consumer receives it
  (an aio-pika message with the properties a publisher sets: ``body``,
  ``headers``, ``message_id``, ``correlation_id``, ``reply_to``,
  ``user_id``, ``type``, plus ``delivery_tag``, ``redelivered``,
  ``routing_key``, ...). ``ack``/``nack``/``reject`` are recorded as
  :class:`Settlement` values; settling twice raises like aio-pika does (and is
  recorded too, so a test sees it); :meth:`FakeDelivery.settled` waits for
  the first settlement. ``settle_error`` stands for a channel that died
  before the settle.
* :class:`RecordingPublisher` is the worker's real
  :class:`~execbus.worker.publisher.Publisher` (the same properties, headers
  and dead-letter copy) with the last step, the broker's confirm, replaced:
  every publish is recorded as a :class:`Published`. It can be told to fail
  (:meth:`RecordingPublisher.fail`: the real error translation turns the
  missing confirm into :class:`~execbus.errors.PublishFailed`) or to hold its
  confirms (:meth:`RecordingPublisher.hold`/:meth:`~RecordingPublisher.release`).
* :class:`FakeConfirmBroker` hands out confirm-mode :class:`FakeChannel`\\ s
  (on its fake ``connection``; :meth:`~FakeConfirmBroker.open` is a
  :data:`~execbus.publishing.ChannelOpener`) that answer publishes as
  RabbitMQ 3.10 does while a quorum queue's recorded leader is down: a
  channel's first publish to such a queue is nacked, and so is every later
  one of that channel to that queue, while a fresh channel is acked once the
  queue has a leader again. For :class:`~execbus.publishing.ConfirmChannel`
  and what publishes through it (the SDK's RPC, the worker's publisher).

Only the broker is replaced: the consumer, settle, lanes, pools and the use
cases under them are the real objects. Integration tests keep the real
RabbitMQ (``docs/architecture.md``, testing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractProcessContext,
    HeadersType,
)
from aio_pika.exceptions import MessageProcessError
from aio_pika.message import IncomingMessage, Message, ProcessContext
from aio_pika.tools import CallbackCollection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import ConfirmationFrameType, TimeoutType
from aiormq.channel import Channel as ConcreteRawChannel
from aiormq.exceptions import ChannelClosed, ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic
from pydantic import BaseModel

from execbus.publishing import publish_errors
from execbus.wire.codec import dump
from execbus.wire.routing import Names
from execbus.worker.publisher import Publisher

__all__ = [
    "ACKED",
    "REJECTED",
    "REQUEUED",
    "FakeChannel",
    "FakeConfirmBroker",
    "FakeDelivery",
    "Published",
    "RecordingPublisher",
    "Settlement",
]

JSON = "application/json"


# -- deliveries ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settlement:
    """One ``ack``, ``nack`` or ``reject`` of a delivery."""

    method: str  # "ack" | "nack" | "reject"
    requeue: bool = False


ACKED = Settlement("ack")
REQUEUED = Settlement("nack", requeue=True)
REJECTED = Settlement("reject", requeue=False)


class FakeDelivery(Message, AbstractIncomingMessage):
    """A delivered request message that records how it was settled."""

    def __init__(
        self,
        body: bytes | BaseModel,
        *,
        headers: HeadersType | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        user_id: str | None = None,
        type: str | None = None,
        content_type: str | None = JSON,
        app_id: str | None = None,
        delivery_tag: int = 1,
        redelivered: bool = False,
        routing_key: str | None = "agent.a1",
        exchange: str | None = "t.requests",
        consumer_tag: str | None = "ctag-1",
        settle_error: Exception | None = None,
    ) -> None:
        """``body``: raw bytes, or a request model (serialised as on the wire)."""
        super().__init__(
            body if isinstance(body, bytes) else dump(body),
            headers=headers,
            content_type=content_type,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id,
            type=type,
            user_id=user_id,
            app_id=app_id,
        )
        self.cluster_id = None
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.message_count = None
        self.routing_key = routing_key
        self.exchange = exchange
        self.settle_error = settle_error
        self.settlements: list[Settlement] = []
        self._settled = asyncio.Event()

    # -- what the test reads -------------------------------------------------

    @property
    def settlement(self) -> Settlement | None:
        """The one settlement (None while unsettled); AssertionError if settled twice."""
        assert len(self.settlements) <= 1, f"settled more than once: {self.settlements}"
        return self.settlements[0] if self.settlements else None

    async def settled(self, timeout: float = 5.0) -> Settlement:
        """Wait for the first settlement and return it."""
        async with asyncio.timeout(timeout):
            await self._settled.wait()
        return self.settlements[0]

    # -- AbstractIncomingMessage ------------------------------------------------

    async def ack(self, multiple: bool = False) -> None:
        self._settle(ACKED)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._settle(Settlement("nack", requeue))

    async def reject(self, requeue: bool = False) -> None:
        self._settle(Settlement("reject", requeue))

    def _settle(self, how: Settlement) -> None:
        if self.settle_error is not None:
            raise self.settle_error
        already = bool(self.settlements)
        self.settlements.append(how)
        self._settled.set()
        if already:
            raise MessageProcessError("Message already processed", self)
        if not self.locked:
            self.lock()

    @property
    def processed(self) -> bool:
        return bool(self.settlements)

    @property
    def channel(self) -> RawChannel:
        raise NotImplementedError("a FakeDelivery has no channel: settle it with ack/nack/reject")

    def process(
        self,
        requeue: bool = False,
        reject_on_redelivered: bool = False,
        ignore_processed: bool = False,
    ) -> AbstractProcessContext:
        return ProcessContext(
            cast(IncomingMessage, self),
            requeue=requeue,
            reject_on_redelivered=reject_on_redelivered,
            ignore_processed=ignore_processed,
        )


# -- publishing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One message the publisher sent: where to, and with which properties."""

    kind: str  # "event" | "reply" | "dead_letter" | "other"
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    type: str | None = None

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)


Failure = tuple[Callable[[Published], bool], Exception]


class RecordingPublisher(Publisher):
    """The worker's publisher, recording what it publishes instead of sending it.

    Also an :class:`~execbus.worker.context.Outbox` (events and replies), so
    it can stand for the broker under :class:`~execbus.worker.state.AgentState`.
    """

    def __init__(self, names: Names | str = "t", timeout: float = 1.0) -> None:
        names = Names(names) if isinstance(names, str) else names
        super().__init__(cast(AbstractChannel, None), names, timeout)
        self.published: list[Published] = []
        self.attempts: list[Published] = []  # failed ones too
        self._failures: list[Failure] = []
        self._open = asyncio.Event()
        self._open.set()

    # -- what the test reads -------------------------------------------------

    def of_kind(self, kind: str) -> list[Published]:
        return [p for p in self.published if p.kind == kind]

    @property
    def replies(self) -> list[Published]:
        return self.of_kind("reply")

    @property
    def events(self) -> list[Published]:
        return self.of_kind("event")

    @property
    def dead_letters(self) -> list[Published]:
        return self.of_kind("dead_letter")

    # -- what the test sets ----------------------------------------------------

    def fail(
        self, kind: str | None = None, error: Exception | None = None, *, routing_key: str = ""
    ) -> None:
        """From now on, publishes of ``kind`` (all: None) get no confirm.

        ``error`` defaults to :class:`TimeoutError` (no confirm within the
        timeout), which the real translation turns into ``PublishFailed``;
        ``routing_key``: only publishes whose key ends with it.
        """

        def matches(p: Published) -> bool:
            return (kind is None or p.kind == kind) and p.routing_key.endswith(routing_key)

        self._failures.append((matches, error or TimeoutError()))

    def heal(self) -> None:
        """Publishes are confirmed again."""
        self._failures.clear()

    def hold(self) -> None:
        """Publishes are recorded but their confirms wait for :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    # -- the broker's side ------------------------------------------------------

    async def _publish_raw(
        self, exchange: str, key: str, body: bytes, props: Basic.Properties, what: str
    ) -> None:
        with publish_errors(what, key, self._timeout):
            await self.record(
                exchange,
                key,
                body,
                headers=dict(props.headers or {}),
                message_id=props.message_id,
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                type=props.message_type,
            )

    async def record(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        """Record one publish; raise what :meth:`fail` set up; wait while held."""
        published = Published(self._kind(exchange), exchange, routing_key, body, **props)
        self.attempts.append(published)
        for matches, error in self._failures:
            if matches(published):
                raise error
        self.published.append(published)
        await self._open.wait()

    def _kind(self, exchange: str) -> str:
        if exchange == "":
            return "reply"
        if exchange == self.names.events_exchange:
            return "event"
        if exchange == self.names.dead_exchange:
            return "dead_letter"
        return "other"


# -- channels ------------------------------------------------------------------


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
