"""Confirmed publishing: events, replies and dead letters, each with a timeout.

A result is not "sent" until the broker confirmed it. Publishes are
pipelined: callers run many at once and each awaits only its own confirm.
Events and replies (several per exec) take the lean path of
:mod:`execbus.publishing`; errors become :class:`~execbus.errors.PublishFailed`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from pydantic import BaseModel

from execbus.publishing import Basic, publish_confirmed, publish_errors
from execbus.wire.codec import dump
from execbus.wire.routing import EXEC_ID_HEADER, REASON_HEADER, Names

JSON = "application/json"


class Publisher:
    """Publishes on one confirm-mode channel."""

    def __init__(self, channel: AbstractChannel, names: Names, timeout: float) -> None:
        self._channel = channel
        self._names = names
        self._timeout = timeout
        self._dead: AbstractExchange | None = None

    async def setup(self) -> None:
        """Look up the exchanges (declared by the topology beforehand)."""
        self._dead = await self._channel.get_exchange(self._names.dead_exchange, ensure=False)

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
        """Publish an event on ``<ns>.events`` (persistent, ``message_id`` = event id,
        the exec id in the ``x-execbus-exec-id`` header)."""
        exec_id = getattr(event, "exec_id", None)
        props = Basic.Properties(
            content_type=JSON,
            message_id=event_id,
            message_type=getattr(event, "type", None),
            delivery_mode=2,
            timestamp=datetime.now(UTC),
            headers={EXEC_ID_HEADER: exec_id} if exec_id else None,
        )
        await self._publish_raw(self._names.events_exchange, routing_key, dump(event), props)

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        """Send an RPC reply through the default exchange."""
        props = Basic.Properties(
            content_type=JSON, correlation_id=correlation_id, message_type="reply"
        )
        await self._publish_raw("", reply_to, dump(reply), props)

    async def _publish_raw(
        self, exchange: str, key: str, body: bytes, props: Basic.Properties
    ) -> None:
        await publish_confirmed(self._channel, exchange, key, body, props, timeout=self._timeout)

    async def dead_letter(self, original: AbstractIncomingMessage, reason: str) -> None:
        """Copy ``original`` to ``<ns>.dead`` with the reason in a header."""
        assert self._dead is not None, "setup() first"
        headers = dict(original.headers or {})
        headers[REASON_HEADER] = reason[:1024]
        headers["x-execbus-routing-key"] = original.routing_key or ""
        message = aio_pika.Message(
            original.body,
            headers=headers,
            content_type=original.content_type,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        key = original.routing_key or ""
        with publish_errors("the dead letter", key, self._timeout):
            await self._dead.publish(message, key, mandatory=False, timeout=self._timeout)
