"""Request deliveries as the consumer receives them, recording their settlement.

See :mod:`execbus.testing.amqp`: :class:`FakeDelivery` and its
:class:`Settlement` values (:data:`ACKED`, :data:`REQUEUED`, :data:`REJECTED`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from aio_pika.abc import AbstractIncomingMessage, AbstractProcessContext, HeadersType
from aio_pika.exceptions import MessageProcessError
from aio_pika.message import IncomingMessage, Message, ProcessContext
from aiormq.abc import AbstractChannel as RawChannel
from pydantic import BaseModel

from execbus.wire.codec import dump

JSON = "application/json"


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
