"""Confirmed publishing: events, replies and dead letters, each with a timeout.

A result is not "sent" until the broker confirmed it. Publishes are
pipelined: callers run many at once and each awaits only its own confirm.
Everything takes the lean path of :mod:`execbus.publishing`; errors become
:class:`~execbus.errors.PublishFailed`. The channel is a
:class:`~execbus.publishing.ConfirmChannel`: a nacked publish replaces it (once
the broker session has told the publisher how to open one, see
``worker/session.py``) before the caller hears of the failure, so a retry, or
the next publish, goes out on the fresh channel.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pamqp import encode
from pydantic import BaseModel

from execbus.publishing import Basic, ChannelOpener, ConfirmChannel
from execbus.wire.codec import dump
from execbus.wire.routing import EXEC_ID_HEADER, REASON_HEADER, Names

JSON = "application/json"
MAX_DEAD_HEADERS = 16 * 1024
DROPPED_HEADERS = "x-execbus-headers-dropped"


def dead_letter_headers(original: AbstractIncomingMessage, reason: str) -> dict[str, Any]:
    """The original's headers (or, when too large or not encodable, their size), the
    reason and the routing key."""
    headers: dict[str, Any] = dict(original.headers or {})
    try:
        size = len(encode.field_table(headers))
    except Exception:  # whatever the decoder let through, the encoder may refuse
        size = -1
    if not 0 <= size <= MAX_DEAD_HEADERS:
        headers = {DROPPED_HEADERS: size}
    headers[REASON_HEADER] = reason[:1024]
    headers["x-execbus-routing-key"] = _short(original.routing_key) or ""
    return headers


def _short(value: str | None) -> str | None:
    """``value`` cut to an AMQP short string's 255 bytes (on a character boundary)."""
    if value is None or len(value) <= 63:
        return value
    return value.encode()[:255].decode("utf-8", "ignore")


class Publisher:
    """Publishes on one confirm-mode channel (a fresh one after a nack)."""

    def __init__(self, channel: AbstractChannel, names: Names, timeout: float) -> None:
        self._out = ConfirmChannel(channel, drain_timeout=timeout)
        self._names = names
        self._timeout = timeout

    @property
    def names(self) -> Names:
        """The namespace's names."""
        return self._names

    @property
    def channel(self) -> AbstractChannel:
        """The confirm-mode channel everything is published on now (the callbacks added
        to its ``close_callbacks`` follow it when a nack replaces it)."""
        return self._out.channel

    @property
    def replacements(self) -> int:
        """How many times a nack replaced the channel."""
        return self._out.replacements

    def reopen_with(self, reopen: ChannelOpener) -> None:
        """How to open a fresh confirm-mode channel on the same connection."""
        self._out.reopen_with(reopen)

    async def setup(self) -> None:
        """Nothing to look up: every publish names its exchange (declared by the
        topology beforehand)."""

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
        await self._publish_raw(
            self._names.events_exchange, routing_key, dump(event), props, "the event"
        )

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        """Send an RPC reply through the default exchange."""
        props = Basic.Properties(
            content_type=JSON, correlation_id=correlation_id, message_type="reply"
        )
        await self._publish_raw("", reply_to, dump(reply), props, "the reply")

    async def _publish_raw(
        self, exchange: str, key: str, body: bytes, props: Basic.Properties, what: str
    ) -> None:
        await self._out.publish(exchange, key, body, props, timeout=self._timeout, what=what)

    async def dead_letter(self, original: AbstractIncomingMessage, reason: str) -> None:
        """Copy ``original`` to ``<ns>.dead`` with the reason in a header.

        The copy is always publishable, whatever the original carried: headers
        over :data:`MAX_DEAD_HEADERS` encoded bytes are replaced by a note of
        their size (the copy must fit the broker's frame size, or the broker
        closes the connection), and property strings are cut to AMQP's 255 bytes.
        """
        message = aio_pika.Message(
            original.body,
            headers=dead_letter_headers(original, reason),
            content_type=_short(original.content_type),
            correlation_id=_short(original.correlation_id),
            reply_to=_short(original.reply_to),
            message_id=_short(original.message_id),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        key = original.routing_key or ""
        dead = self._names.dead_exchange
        await self._publish_raw(dead, key, message.body, message.properties, "the dead letter")
