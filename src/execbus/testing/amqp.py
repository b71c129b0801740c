"""An in-memory stand-in for the broker, for fast unit tests of the worker's delivery layer.

Two pieces, after faststream's ``TestRabbitBroker``/``build_message``:

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

Only the broker is replaced: the consumer, settle, lanes, pools and the use
cases under them are the real objects. Integration tests keep the real
RabbitMQ (``docs/architecture.md``, testing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractMessage,
    AbstractProcessContext,
    HeadersType,
)
from aio_pika.exceptions import MessageProcessError
from aio_pika.message import IncomingMessage, Message, ProcessContext
from aiormq.abc import AbstractChannel as RawChannel
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


class RecordingExchange:
    """An exchange whose publishes go to a :class:`RecordingPublisher`'s record."""

    def __init__(self, name: str, sink: RecordingPublisher) -> None:
        self.name = name
        self._sink = sink

    async def publish(
        self,
        message: AbstractMessage,
        routing_key: str,
        *,
        mandatory: bool = True,
        immediate: bool = False,
        timeout: float | None = None,
    ) -> None:
        await self._sink.record(
            self.name,
            routing_key,
            message.body,
            headers=dict(message.headers or {}),
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            type=message.type,
        )


class RecordingPublisher(Publisher):
    """The worker's publisher, recording what it publishes instead of sending it.

    Also an :class:`~execbus.worker.context.Outbox` (events and replies), so
    it can stand for the broker under :class:`~execbus.worker.state.AgentState`.
    """

    def __init__(self, names: Names | str = "t", timeout: float = 1.0) -> None:
        names = Names(names) if isinstance(names, str) else names
        super().__init__(cast(AbstractChannel, None), names, timeout)
        self._dead = cast(AbstractExchange, RecordingExchange(names.dead_exchange, self))
        self.published: list[Published] = []
        self.attempts: list[Published] = []  # failed ones too
        self._failures: list[Failure] = []
        self._open = asyncio.Event()
        self._open.set()

    async def setup(self) -> None:
        """Nothing to look up: the dead-letter exchange is a :class:`RecordingExchange`."""

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
        self, exchange: str, key: str, body: bytes, props: Basic.Properties
    ) -> None:
        what = "the reply" if exchange == "" else "the event"
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
