"""The shape the SDK's streams share (events, one exec's output, worker announcements).

A :class:`Feed` is an async context manager (entering opens it: subscribes;
leaving closes it) and an async iterator that ends once :meth:`Feed._next`
gives ``None``. A :class:`QueueFeed` is fed by a private queue of its own:
exclusive and auto-delete (it vanishes with its channel or connection; the
robust connection re-declares it after a reconnect), named
``<ns>.client.<user>.*`` so the caller's own permissions cover it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from execbus.client.inbox import client_queue_name
from execbus.client.rpc import close_quietly
from execbus.wire.routing import Names

T = TypeVar("T")


class Feed(Generic[T]):
    """``async with`` opens and closes it; ``async for`` yields its items until the end."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _next(self) -> T | None:
        """The next item; ``None`` at the end."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        return item


class QueueFeed(Feed[T]):
    """Items that :meth:`_on_message` takes from the feed's private queue, in arrival order."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        on_close: Callable[[Any], None] | None,  # the subclass says with what
        user: str | None,
    ) -> None:
        self._connection = connection
        self._names = names
        self._on_close = on_close
        self._user = user
        self._channel: AbstractChannel | None = None
        self._items: asyncio.Queue[T | None] = asyncio.Queue()
        self._opened = False
        self._closed = False
        # Messages that were not valid items: skipped (logged), counted here.
        self.malformed = 0

    async def _consume(self, exchange: str, patterns: list[str]) -> None:
        """Declare the private queue, bind it to ``exchange`` by ``patterns``, consume it."""
        self._channel = await self._connection.channel(publisher_confirms=False)
        queue = await self._channel.declare_queue(
            client_queue_name(self._names, self._user), exclusive=True, auto_delete=True
        )
        for pattern in patterns:
            await queue.bind(exchange, routing_key=pattern)
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Delete the queue and end the iteration (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._items.put_nowait(None)
        if self._channel is not None:
            await close_quietly(self._channel)
        if self._on_close is not None:
            self._on_close(self)

    async def _next(self) -> T | None:
        await self.open()
        if self._closed and self._items.empty():
            return None
        return await self._items.get()
