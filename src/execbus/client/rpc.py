"""Requests out, replies back: confirmed publishing and correlation of replies.

Every request goes to ``<ns>.requests`` with routing key ``agent.<agent>``
(``pool.<pool>`` for a run or create sent to a pool of agents), a fresh
``correlation_id`` and ``message_id``, and ``reply_to`` set to the
client's private queue (see :mod:`execbus.client.inbox`). A request is not
sent until the broker confirmed it. The publishing channel is separate from
the inbox's, so a channel error on publish never disturbs the consumer; it is
a :class:`~execbus.publishing.ConfirmChannel`: a request the broker nacks, or
one that finds the channel closed, fails with
:class:`~execbus.errors.PublishFailed` after a fresh channel took its place,
so the caller's retry goes out on the fresh one (a RabbitMQ 3.10 channel that
was once refused by a quorum queue whose leader was down stays refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel

from execbus.client.target import Target
from execbus.errors import ExecTimeout
from execbus.publishing import Basic, ConfirmChannel
from execbus.wire.codec import dump
from execbus.wire.replies import Reply
from execbus.wire.requests import RequestBase
from execbus.wire.routing import Names

log = logging.getLogger("execbus.client")
JSON = "application/json"


@dataclass(eq=False, slots=True)
class PendingReply:
    """The reply a published request is waiting for."""

    correlation_id: str
    request_type: str
    target: Target
    future: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Rpc:
    """Publishes requests and matches replies to them by ``correlation_id``."""

    def __init__(
        self,
        channel: ConfirmChannel,
        names: Names,
        reply_to: str,
        publish_timeout: float,
        user_id: str | None = None,
    ) -> None:
        self._channel = channel
        # RabbitMQ checks user_id against the connection's user, so workers can trust
        # it as the caller's identity (authorization policies key on it).
        self._user_id = user_id
        self._names = names
        self._reply_to = reply_to
        self._publish_timeout = publish_timeout
        self._pending: dict[str, PendingReply] = {}

    @property
    def channel(self) -> ConfirmChannel:
        """The publishing channel (a fresh one after a nack or a close)."""
        return self._channel

    async def send(self, target: Target, request: RequestBase) -> PendingReply:
        """Publish ``request`` (confirmed) to ``target``; the caller awaits, then
        :meth:`discard`\\ s it."""
        request_type = str(getattr(request, "type", "?"))
        pending = PendingReply(uuid.uuid4().hex, request_type, target)
        self._pending[pending.correlation_id] = pending  # before publishing: replies can be fast
        try:
            await self._publish(request, pending)
        except BaseException:
            self.discard(pending)
            raise
        return pending

    async def call(self, target: Target, request: RequestBase, timeout: float | None) -> Reply:
        """Publish ``request``; its reply within ``timeout`` seconds (``None``: no limit)."""
        pending = await self.send(target, request)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see loops.wait_event
                return await asyncio.shield(pending.future)
        except TimeoutError:
            raise ExecTimeout(
                f"no reply to {pending.request_type} from {pending.target.describe()}"
                f" within {timeout:g} s"
            ) from None
        finally:
            self.discard(pending)

    def discard(self, pending: PendingReply) -> None:
        """Stop waiting for ``pending``'s reply (a late reply is then ignored)."""
        self._pending.pop(pending.correlation_id, None)
        if not pending.future.done():
            pending.future.cancel()

    def resolve(self, correlation_id: str | None, reply: Reply) -> None:
        """Hand a reply from the inbox to the request waiting for it."""
        pending = self._pending.get(correlation_id or "")
        if pending is None:
            log.debug("ignoring a reply nobody waits for (correlation id %s)", correlation_id)
        elif not pending.future.done():
            pending.future.set_result(reply)

    def fail_all(self, exc: BaseException) -> None:
        """Wake every waiting request with ``exc`` (the client is closing)."""
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(exc)
                # Mark retrieved: a waiter that was already cancelled never reads it.
                pending.future.exception()
        self._pending.clear()

    async def _publish(self, request: RequestBase, pending: PendingReply) -> None:
        props = Basic.Properties(
            content_type=JSON,
            correlation_id=pending.correlation_id,
            message_id=uuid.uuid4().hex,
            reply_to=self._reply_to,
            user_id=self._user_id,
            message_type=pending.request_type,
            delivery_mode=2,
        )
        await self._channel.publish(
            self._names.requests_exchange,
            pending.target.routing_key(),
            dump(request),
            props,
            timeout=self._publish_timeout,
            mandatory=True,
            what=pending.request_type,
        )


async def close_quietly(channel: AbstractChannel) -> None:
    """Close a channel, ignoring a broker or connection that is already gone."""
    with contextlib.suppress(Exception):
        await channel.close()
