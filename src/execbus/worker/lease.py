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

A new quorum queue is never used at once. RabbitMQ before 4.1 may answer a
declare of a queue another client is creating before the queue runs; a
consume or publish then crashes the channel, and the broker closes the whole
connection (INTERNAL_ERROR, rabbitmq-server#13625). So the ownership loop
declares an agent's queues one tick before it first gets in line for them,
and standbys get in line only behind an owner that announces holding the
lease (``worker/ownership.py``); the queues are durable, so this happens
once per worker process, not per reconnect.

Every broker call here is bounded (:data:`CALL_TIMEOUT`) and belongs to one
broker session: a call stuck on a connection that died (aiormq can wait
forever to write to a closed one) must not hold the lease's lock, or the
agent would never be taken again in the sessions that follow.
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
#: Seconds any one lease operation (get in line, mint, give back) may take.
CALL_TIMEOUT = 15.0


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
        self._topology = topology
        self.agent = agent
        self._on_granted = on_granted
        self._on_lost = on_lost
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._token: AbstractIncomingMessage | None = None
        self._busy = asyncio.Lock()
        # Bumped when the broker session is gone: work begun in an older one is void.
        self._generation = 0
        # Getting in line: the token may arrive before the consume call returns.
        self._joining = False

    @property
    def subscribed(self) -> bool:
        """In line for the lease (consuming its queue)."""
        return self._tag is not None

    @property
    def held(self) -> bool:
        """This worker holds the token: it owns the agent."""
        return self._token is not None

    async def subscribe(self, session: BrokerSession) -> None:
        """Get in line (idempotent); the token arrives through ``on_granted`` when it is ours.

        A failure is logged and leaves this worker out of line; the membership
        loop asks again at its next tick.
        """
        async with self._busy:
            if self._tag is not None:
                return
            generation = self._generation
            channel: AbstractChannel | None = None
            failure: Exception | None = None
            self._joining = True
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    # Confirms: a mint the broker refuses (RabbitMQ 3.10 nacks a
                    # quorum queue whose recorded leader is down) must fail loudly,
                    # not leave the line without a token.
                    channel = await session.channel(publisher_confirms=True)
                    queue, tag = await self._get_in_line(channel)
            except Exception as exc:
                failure = exc
            finally:
                self._joining = False
            if failure is not None or channel is None:
                why = str(failure) or type(failure).__name__
                log.warning("agent %s: could not get in line for its lease: %s", self.agent, why)
                await self._abandon(channel)
                return
            if generation != self._generation or channel.is_closed:  # the session ended
                await self._abandon(channel)
                return
            channel.close_callbacks.add(self._channel_closed)
            self._channel, self._queue, self._tag = channel, queue, tag
            if self._token is not None:  # it came while we were getting in line
                self._on_granted()

    async def _abandon(self, channel: AbstractChannel | None) -> None:
        """A failed or void attempt to get in line: a token it got goes back with its channel."""
        self._token = None
        await _close_quietly(channel)

    async def _get_in_line(self, channel: AbstractChannel) -> tuple[AbstractQueue, str]:
        await channel.set_qos(prefetch_count=1)
        queue = await self._topology.declare_lease_queue(channel, self.agent)
        result = queue.declaration_result
        if not result.message_count and not result.consumer_count:
            await self._mint(channel)
        return queue, await queue.consume(self._received, no_ack=False)

    async def mint(self) -> None:
        """Add a token (the designated owner, when nobody has owned the agent for a while)."""
        async with self._busy:
            if self._channel is not None and not self._channel.is_closed:
                try:
                    await self._mint(self._channel)
                except Exception as exc:
                    log.warning("agent %s: could not mint a lease token: %s", self.agent, exc)

    async def _mint(self, channel: AbstractChannel) -> None:
        log.info("agent %s: minting a lease token", self.agent, extra={"agent": self.agent})
        message = aio_pika.Message(TOKEN, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, self.queue_name, timeout=CALL_TIMEOUT)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        if self._token is not None or (self._tag is None and not self._joining):
            # Not ours to hold (any more): give it back.
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        self._token = message
        if not self._joining:  # else subscribe grants it once the line is joined for good
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
            # the token the moment we give it back. Closing the channel gives it back
            # too, should the nack not get through.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    if queue is not None and tag is not None:
                        await queue.cancel(tag)
                    if token is not None:
                        await token.nack(requeue=True)
            await _close_quietly(channel)

    def forget(self) -> None:
        """The broker connection is gone, and with it the place in line and the token."""
        self._generation += 1
        self._channel = self._queue = self._tag = self._token = None

    def _channel_closed(self, *_: Any) -> None:
        held = self._token is not None
        self.forget()
        if held:
            self._on_lost()


async def _close_quietly(channel: AbstractChannel | None) -> None:
    """Close a lease channel (bounded; a dead connection's channel is gone already)."""
    if channel is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CALL_TIMEOUT):
            await channel.close()
