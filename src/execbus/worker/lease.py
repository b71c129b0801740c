"""Owning an agent: a lease the broker hands over by itself, with no polling.

Each agent has a lease queue ``<ns>.lease.<agent>``: a durable quorum queue
with *single active consumer*, holding a token message. The workers that may
own the agent (its designated owner and its standby) consume it with
prefetch 1 and never ack. The broker delivers to the active consumer only,
so the worker that receives the token owns the agent, for as long as it
keeps the token unacknowledged. When its connection dies the broker returns
the token and activates the next consumer in line, which receives it: a
failover pushed by the broker, in the time it takes to notice the dead
connection. Letting go is cancel, then nack with requeue.

Extra tokens are harmless: only the active consumer receives any, and with
prefetch 1 it holds exactly one. So a token is minted without coordination:
by a worker that finds the queue empty and unconsumed, and by the designated
owner when nobody has announced owning the agent for a while (a token lost
to an operator's purge, say).

Steady state costs the broker nothing: no declares, no polls, only the
consumers it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from execbus.worker.topology import Topology

if TYPE_CHECKING:
    from execbus.worker.session import BrokerSession

log = logging.getLogger("execbus.worker")

TOKEN = b"execbus lease token"


class Lease:
    """This worker's place in the line for one agent's lease."""

    def __init__(
        self,
        topology: Topology,
        agent: str,
        on_granted: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.queue_name = topology.names.lease_queue(agent)
        self._arguments = topology.quorum(**{"x-single-active-consumer": True})
        self.agent = agent
        self._on_granted = on_granted
        self._on_lost = on_lost
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._token: AbstractIncomingMessage | None = None
        self._busy = asyncio.Lock()

    @property
    def subscribed(self) -> bool:
        """In line for the lease (consuming its queue)."""
        return self._tag is not None

    @property
    def held(self) -> bool:
        """This worker holds the token: it owns the agent."""
        return self._token is not None

    async def subscribe(self, session: BrokerSession) -> None:
        """Get in line (idempotent); the token arrives through ``on_granted`` when it is ours."""
        async with self._busy:
            if self._tag is not None:
                return
            channel = await session.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.declare_queue(
                self.queue_name, durable=True, arguments=self._arguments
            )
            result = queue.declaration_result
            if not result.message_count and not result.consumer_count:
                await self._mint(channel)
            channel.close_callbacks.add(self._channel_closed)
            self._channel, self._queue = channel, queue
            self._tag = await queue.consume(self._received, no_ack=False)

    async def mint(self) -> None:
        """Add a token (the designated owner, when nobody has owned the agent for a while)."""
        async with self._busy:
            if self._channel is not None and not self._channel.is_closed:
                await self._mint(self._channel)

    async def _mint(self, channel: AbstractChannel) -> None:
        log.info("agent %s: minting a lease token", self.agent, extra={"agent": self.agent})
        message = aio_pika.Message(TOKEN, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, self.queue_name)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        if self._token is not None or self._tag is None:  # not ours to hold (any more)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        self._token = message
        self._on_granted()

    async def release(self) -> None:
        """Leave the line, and give the token back if held (the next in line gets it)."""
        async with self._busy:
            channel, queue, tag, token = self._channel, self._queue, self._tag, self._token
            self._channel = self._queue = self._tag = self._token = None
            if channel is None:
                return
            with contextlib.suppress(Exception):
                channel.close_callbacks.discard(self._channel_closed)
            # Cancel first: the broker then activates the next consumer, which gets
            # the token the moment we give it back.
            with contextlib.suppress(Exception):
                if queue is not None and tag is not None:
                    await queue.cancel(tag)
            with contextlib.suppress(Exception):
                if token is not None:
                    await token.nack(requeue=True)
            with contextlib.suppress(Exception):
                await channel.close()

    def forget(self) -> None:
        """The broker connection is gone, and with it the place in line and the token."""
        self._channel = self._queue = self._tag = self._token = None

    def _channel_closed(self, *_: Any) -> None:
        held = self._token is not None
        self.forget()
        if held:
            self._on_lost()
