"""The client's private queue: replies to its requests and the exit events it watches.

The queue is exclusive and auto-delete, so the broker drops it with the
connection, and it has a fixed name (``<ns>.client.<user>.<uuid>``) so the
robust connection re-declares the very queue the workers reply to, bindings
and consumer included, after a reconnect. The ``<user>`` segment (the AMQP
user, percent-encoded) lets RabbitMQ permissions give each caller exactly its
own queues, and workers reply only to a caller's own queues.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from execbus.broker import broker_reason
from execbus.errors import BrokerError, InvalidRequest
from execbus.wire.codec import parse_event, parse_reply
from execbus.wire.events import Event
from execbus.wire.replies import Reply
from execbus.wire.routing import EXEC_ID_HEADER, Names

log = logging.getLogger("execbus.client")

ReplyHandler = Callable[[str | None, Reply], None]
EventHandler = Callable[[Event], None]
ExecFilter = Callable[[str], bool]


def client_queue_name(names: Names, user: str | None) -> str:
    """A fresh private queue name of ``user`` in this namespace."""
    return f"{names.client_prefix(user)}{uuid.uuid4().hex}"


class Inbox:
    """Consumes the private queue and routes each message to a handler."""

    def __init__(
        self,
        channel: AbstractChannel,
        names: Names,
        on_reply: ReplyHandler,
        on_event: EventHandler,
        wants: ExecFilter | None = None,
        user: str | None = None,
    ) -> None:
        self._channel = channel
        self._names = names
        self._on_reply = on_reply
        self._on_event = on_event
        # Events name their exec in a header: those of execs nobody here waits for
        # (other clients' runs on the same agent, a run already answered by its
        # reply) are dropped before their body is parsed.
        self._wants = wants
        self.name = client_queue_name(names, user)
        self._queue: AbstractQueue | None = None
        self._bound: set[str] = set()

    async def open(self) -> None:
        """Declare the queue and start consuming it."""
        self._queue = await self._channel.declare_queue(self.name, exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_message, no_ack=True)

    async def bind(self, pattern: str) -> None:
        """Also receive events matching ``pattern`` (once per pattern).

        Only done after a worker was seen serving the agent, so ``<ns>.events``
        exists: the inbox never creates durable entities in a namespace.
        """
        if pattern in self._bound or self._queue is None:
            return
        try:
            await self._queue.bind(self._names.events_exchange, routing_key=pattern)
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerError(
                f"cannot bind the client queue to {pattern!r}: {broker_reason(exc)}"
            ) from exc
        self._bound.add(pattern)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            if message.exchange == self._names.events_exchange:
                if self._unwanted(message):
                    return
                self._on_event(parse_event(message.body))
            else:
                self._on_reply(message.correlation_id, parse_reply(message.body))
        except InvalidRequest as exc:
            log.warning("ignoring a malformed message on %s: %s", self.name, exc.message)

    def _unwanted(self, message: AbstractIncomingMessage) -> bool:
        exec_id = (message.headers or {}).get(EXEC_ID_HEADER)
        return self._wants is not None and isinstance(exec_id, str) and not self._wants(exec_id)
