"""A raw AMQP test peer: publishes requests, collects replies, events and dead letters.

It uses aio-pika directly (not the execbus client), so worker tests check the
wire contract exactly as another language would see it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections import defaultdict
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue


class Bus:
    """Publish requests to ``<ns>.requests`` and watch ``<ns>.events``."""

    def __init__(self, amqp_url: str, ns: str, user_id: str | None = None) -> None:
        self.amqp_url = amqp_url
        self.ns = ns
        self.user_id = user_id  # AMQP user_id on every request (the broker verifies it)
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.late_replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.events: list[dict[str, Any]] = []
        self.event_keys: list[str] = []
        self.event_headers: list[dict[str, Any]] = []
        self._event_signal = asyncio.Event()
        self.reply_queue: AbstractQueue | None = None

    async def __aenter__(self) -> Bus:
        self.connection = await aio_pika.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.reply_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        events = await self.channel.declare_exchange(
            f"{self.ns}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        event_queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await event_queue.bind(events, "#")
        await event_queue.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        doc = json.loads(message.body)
        fut = self.replies.get(message.correlation_id or "")
        if fut is not None and not fut.done():
            fut.set_result(doc)
        else:
            self.late_replies[message.correlation_id or ""].append(doc)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        self.events.append(json.loads(message.body))
        self.event_keys.append(message.routing_key or "")
        self.event_headers.append(dict(message.headers or {}))
        self._event_signal.set()

    async def publish(
        self,
        routing_key: str,
        body: bytes | dict[str, Any],
        *,
        reply: bool = True,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        assert self.channel is not None and self.reply_queue is not None
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        corr = correlation_id or uuid.uuid4().hex
        self.replies[corr] = asyncio.get_running_loop().create_future()
        exchange = await self.channel.get_exchange(f"{self.ns}.requests", ensure=False)
        message = aio_pika.Message(
            raw,
            content_type="application/json",
            correlation_id=corr,
            message_id=message_id or uuid.uuid4().hex,
            reply_to=self.reply_queue.name if reply else None,
            user_id=self.user_id,
        )
        await exchange.publish(message, routing_key, timeout=10)
        return corr

    async def reply(self, corr: str, timeout: float = 15.0) -> dict[str, Any]:
        return await asyncio.wait_for(asyncio.shield(self.replies[corr]), timeout)

    async def call(self, agent: str, body: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        body = {"v": 1, **body}
        corr = await self.publish(f"agent.{agent}", body)
        return await self.reply(corr, timeout)

    async def wait_event(self, exec_id: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event["exec_id"] == exec_id and event["type"] == f"exec.{kind}":
                        return event
                self._event_signal.clear()
                await self._event_signal.wait()

    def events_of(self, exec_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["exec_id"] == exec_id]

    async def dead_letters(
        self, count: int, timeout: float = 10.0
    ) -> list[AbstractIncomingMessage]:
        """Get ``count`` messages from ``<ns>.dead`` (acked)."""
        assert self.connection is not None
        channel = await self.connection.channel()
        queue = await channel.get_queue(f"{self.ns}.dead", ensure=False)
        got: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                message = await queue.get(fail=False, no_ack=True)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                got.append(message)
        with contextlib.suppress(Exception):
            await channel.close()
        return got


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """Strict standard base64: a URL-safe alphabet on the wire is an error, not noise."""
    return base64.b64decode(text, validate=True)
