"""The worker's publisher with the broker's confirm replaced by a record.

See :mod:`execbus.testing.amqp`: :class:`RecordingPublisher` and what it
records, :class:`Published`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from execbus.publishing import publish_errors
from execbus.wire.routing import Names
from execbus.worker.publisher import Publisher


@dataclass(frozen=True, slots=True)
class Published:
    """One message the publisher sent: where to, and with which properties."""

    kind: str  # "event" | "reply" | "dead_letter" | "other"
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    type: str | None = None

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)


Failure = tuple[Callable[[Published], bool], Exception]


class RecordingPublisher(Publisher):
    """The worker's publisher, recording what it publishes instead of sending it.

    Also an :class:`~execbus.worker.context.Outbox` (events and replies), so
    it can stand for the broker under :class:`~execbus.worker.state.AgentState`.
    """

    def __init__(self, names: Names | str = "t", timeout: float = 1.0) -> None:
        names = Names(names) if isinstance(names, str) else names
        super().__init__(cast(AbstractChannel, None), names, timeout)
        self.published: list[Published] = []
        self.attempts: list[Published] = []  # failed ones too
        self._failures: list[Failure] = []
        self._open = asyncio.Event()
        self._open.set()

    # -- what the test reads -------------------------------------------------

    def of_kind(self, kind: str) -> list[Published]:
        return [p for p in self.published if p.kind == kind]

    @property
    def replies(self) -> list[Published]:
        return self.of_kind("reply")

    @property
    def events(self) -> list[Published]:
        return self.of_kind("event")

    @property
    def dead_letters(self) -> list[Published]:
        return self.of_kind("dead_letter")

    # -- what the test sets ----------------------------------------------------

    def fail(
        self, kind: str | None = None, error: Exception | None = None, *, routing_key: str = ""
    ) -> None:
        """From now on, publishes of ``kind`` (all: None) get no confirm.

        ``error`` defaults to :class:`TimeoutError` (no confirm within the
        timeout), which the real translation turns into ``PublishFailed``;
        ``routing_key``: only publishes whose key ends with it.
        """

        def matches(p: Published) -> bool:
            return (kind is None or p.kind == kind) and p.routing_key.endswith(routing_key)

        self._failures.append((matches, error or TimeoutError()))

    def heal(self) -> None:
        """Publishes are confirmed again."""
        self._failures.clear()

    def hold(self) -> None:
        """Publishes are recorded but their confirms wait for :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    # -- the broker's side ------------------------------------------------------

    async def _publish_raw(
        self, exchange: str, key: str, body: bytes, props: Basic.Properties, what: str
    ) -> None:
        with publish_errors(what, key, self._timeout):
            await self.record(
                exchange,
                key,
                body,
                headers=dict(props.headers or {}),
                message_id=props.message_id,
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                type=props.message_type,
            )

    async def record(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        """Record one publish; raise what :meth:`fail` set up; wait while held."""
        published = Published(self._kind(exchange), exchange, routing_key, body, **props)
        self.attempts.append(published)
        for matches, error in self._failures:
            if matches(published):
                raise error
        self.published.append(published)
        await self._open.wait()

    def _kind(self, exchange: str) -> str:
        if exchange == "":
            return "reply"
        if exchange == self.names.events_exchange:
            return "event"
        if exchange == self.names.dead_exchange:
            return "dead_letter"
        return "other"
