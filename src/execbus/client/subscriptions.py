"""Following events: :class:`Subscription` (any events) and :class:`OutputStream` (one exec).

Each subscription has its own exclusive, auto-delete queue bound to
``<ns>.events`` (so it vanishes with its channel or connection). Both are
async iterators and async context managers: enter the context to bind
*before* doing what produces the events (start an exec), or just iterate,
which binds on the first step. Leaving the context (or the end of the
stream) deletes the queue; the client closes whatever is still open.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity

from execbus.broker import broker_reason
from execbus.client.dedupe import SeenIds
from execbus.client.feed import Feed, QueueFeed
from execbus.client.rpc import close_quietly
from execbus.errors import BrokerError, InvalidRequest
from execbus.wire.codec import parse_event
from execbus.wire.events import Event, ExitedEvent, FailedEvent, OutputEvent
from execbus.wire.routing import Names

log = logging.getLogger("execbus.client")


async def check_events_exchange(connection: AbstractRobustConnection, names: Names) -> None:
    """Look ``<ns>.events`` up passively: callers need no right to create or delete
    shared exchanges (only workers declare them). A failed passive declare closes
    its channel, so it gets a throwaway one."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(names.events_exchange, passive=True, robust=False)
    except ChannelNotFoundEntity:
        raise BrokerError(
            f"{names.events_exchange} does not exist: no worker has run in namespace "
            f"{names.ns!r} yet"
        ) from None
    finally:
        await close_quietly(channel)


class Subscription(QueueFeed[Event]):
    """Events matching routing-key patterns, duplicates dropped, in arrival order."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        patterns: list[str],
        on_close: Callable[[Subscription], None] | None = None,
        user: str | None = None,
    ) -> None:
        super().__init__(connection, names, on_close, user)
        self._patterns = patterns
        self._seen = SeenIds()

    async def open(self) -> None:
        """Declare and bind the queue; events published from now on are received."""
        if self._opened:
            return
        self._opened = True
        try:
            await check_events_exchange(self._connection, self._names)
            await self._consume(self._names.events_exchange, self._patterns)
        except CONNECTION_EXCEPTIONS as exc:
            await self.close()
            raise BrokerError(f"cannot subscribe to events: {broker_reason(exc)}") from exc

    async def next_event(self) -> Event | None:
        """The next new event; ``None`` once closed."""
        return await self._next()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except InvalidRequest as exc:
            self.malformed += 1
            log.warning("ignoring a malformed event (%s): %s", message.routing_key, exc.message)
            return
        if self._seen.first_time(event.event_id):
            self._items.put_nowait(event)


class ChunkOrder:
    """Puts the output chunks of one exec in ``seq`` order per stream, dropping duplicates."""

    def __init__(self) -> None:
        self._next = {"stdout": 0, "stderr": 0}
        self._held: dict[str, dict[int, OutputEvent]] = {"stdout": {}, "stderr": {}}

    def add(self, chunk: OutputEvent) -> list[OutputEvent]:
        """Take a chunk; return the chunks now ready, in order."""
        held = self._held[chunk.stream]
        if chunk.seq < self._next[chunk.stream] or chunk.seq in held:
            return []
        held[chunk.seq] = chunk
        ready = []
        while self._next[chunk.stream] in held:
            ready.append(held.pop(self._next[chunk.stream]))
            self._next[chunk.stream] += 1
        return ready

    def rest(self) -> list[OutputEvent]:
        """Every chunk still held back (a gap was never filled), in ``seq`` order."""
        rest = [held[seq] for held in self._held.values() for seq in sorted(held)]
        for held in self._held.values():
            held.clear()
        return rest


class OutputStream(Feed[OutputEvent]):
    """The output chunks of one exec, per stream in ``seq`` order; ends at its exit.

    The worker publishes an exec's output before its exit on the same channel,
    and this stream's queue receives both, so when the exit arrives every
    chunk before it has arrived too.
    """

    def __init__(
        self,
        subscription: Subscription,
        exec_id: str,
        finished: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._subscription = subscription
        self._exec_id = exec_id
        self._finished = finished
        self._order = ChunkOrder()
        self._ready: deque[OutputEvent] = deque()
        self._ended = False
        self.end: ExitedEvent | FailedEvent | None = None

    async def open(self) -> None:
        """Bind now; if the exec has already finished, the stream is empty."""
        await self._subscription.open()
        if self._finished is not None and not self._ended:
            check, self._finished = self._finished, None
            try:
                finished = await check()
            except BaseException:
                await self.close()
                raise
            if finished:
                await self._finish()

    async def close(self) -> None:
        """Stop following (idempotent)."""
        self._ended = True
        await self._subscription.close()

    async def _finish(self) -> None:
        self._ready.extend(self._order.rest())
        await self.close()

    async def _step(self) -> None:
        """Take one event; the end of the stream when the exec ends or the queue closes."""
        event = await self._subscription.next_event()
        if event is None:
            await self._finish()
        elif event.exec_id != self._exec_id:
            return
        elif isinstance(event, OutputEvent):
            self._ready.extend(self._order.add(event))
        elif isinstance(event, ExitedEvent | FailedEvent):
            self.end = event
            await self._finish()

    async def _next(self) -> OutputEvent | None:
        await self.open()
        while not self._ready:
            if self._ended:
                return None
            await self._step()
        return self._ready.popleft()


async def close_all(items: list[Subscription]) -> None:
    """Close subscriptions, ignoring failures (used when the client closes)."""
    for item in items:
        with contextlib.suppress(Exception):
            await item.close()
