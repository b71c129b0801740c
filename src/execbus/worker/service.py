"""The worker daemon: broker sessions, agent ownership, graceful shutdown.

Shape (after arq): connect; declare the topology; for every agent it serves,
try to become its owner and consume its queue; on SIGTERM stop taking work,
drain in-flight requests within the grace period, then cancel and close.

Ownership of an agent is an exclusive, auto-delete queue
``<ns>.owner.<agent>``: the broker grants it to one connection at a time and
drops it the moment that connection dies, so a standby worker that polls
for it takes over as fast as the broker notices the dead owner. Only the
owner connects to the agent and consumes its queue; single active consumer
on the queue stays on as a safety net.

The worker manages its own broker reconnection (rather than aio-pika's
robust restore, which does not restore exclusive queues and consumers
reliably): a lost connection ends the session, every agent runtime gives up
ownership, and a new session starts from scratch with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelLockedResource
from pydantic import BaseModel

from execbus.connections.address import AgentAddress
from execbus.connections.base import AgentConnection
from execbus.connections.factory import ConnectOptions, make_connection
from execbus.connections.retry import RetryPolicy
from execbus.errors import BrokerUnavailable, ErrorCode, PublishFailed
from execbus.registry import ExecRegistry, RegistryLimits
from execbus.settings import Settings
from execbus.wire.replies import Reply
from execbus.wire.routing import Names
from execbus.worker.acks import Disposition, settle
from execbus.worker.consumer import RequestConsumer
from execbus.worker.execs import AgentExecs
from execbus.worker.metrics import WorkerMetrics
from execbus.worker.publisher import Publisher
from execbus.worker.topology import declare_agent_queue, declare_base

log = logging.getLogger("execbus.worker")
OWNER_POLL = 0.25


class SessionOutbox:
    """The outbox of the current broker session; fails fast between sessions."""

    def __init__(self) -> None:
        self.publisher: Publisher | None = None

    def _require(self) -> Publisher:
        if self.publisher is None:
            raise PublishFailed("not connected to the broker")
        return self.publisher

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
        await self._require().event(routing_key, event, event_id)

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        await self._require().reply(reply_to, correlation_id, reply)


@dataclass(slots=True)
class BrokerSession:
    """One live broker connection and what hangs off it."""

    connection: AbstractConnection
    publisher: Publisher
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class AgentRuntime:
    """One agent served by this worker: registry, connection, ownership, consumer."""

    def __init__(
        self,
        name: str,
        address: AgentAddress,
        settings: Settings,
        connect: ConnectOptions,
        outbox: SessionOutbox,
        metrics: WorkerMetrics,
    ) -> None:
        self.name = name
        self.address = address
        self.settings = settings
        self.names = Names(settings.namespace)
        self.metrics = metrics
        self.connection: AgentConnection = make_connection(name, address, connect)
        limits = RegistryLimits(
            settings.registry_max_records,
            settings.registry_retention,
            settings.registry_created_ttl,
        )
        retry = RetryPolicy(
            attempts=settings.agent_retry_attempts,
            max_elapsed=settings.agent_retry_max_elapsed,
            attempt_timeout=settings.agent_call_timeout,
        )
        self.execs = AgentExecs(
            name, ExecRegistry(name, limits), self.connection, outbox, retry, self.names
        )
        self.execs.on_retry = metrics.agent_retries.labels(name).inc
        self.execs.on_finished = metrics.observe_finished
        self.owner = False
        self._opened = False
        self._consumer: RequestConsumer | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def serve(self, session: BrokerSession) -> None:
        """Become the owner (waiting as long as needed), then consume until cancelled."""
        lock_channel = await self._acquire(session)
        try:
            await self._own(session)
            await asyncio.Future()  # until the session ends (cancelled)
        finally:
            self.owner = False
            self.metrics.owned.dec()
            self._consumer = None
            with contextlib.suppress(Exception):
                await lock_channel.close()

    async def _acquire(self, session: BrokerSession) -> AbstractChannel:
        queue_name = f"{self.names.ns}.owner.{self.name}"
        while True:
            channel = await session.connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
                return channel
            except ChannelLockedResource:
                await asyncio.sleep(OWNER_POLL * random.uniform(0.8, 1.2))

    async def _own(self, session: BrokerSession) -> None:
        self.owner = True
        self.metrics.owned.inc()
        log.info("agent %s: this worker is now the owner", self.name)
        if not self._opened:
            self._opened = True
            await self.connection.open(self.execs)  # its on_connected runs the sync
        elif self.connection.connected:
            await self.execs.sync()
        channel = await session.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        self._queue = await declare_agent_queue(
            channel, self.names, self.name, self.settings.delivery_limit
        )
        self._consumer = RequestConsumer(
            self.execs,
            session.publisher,
            self.settings.max_message_bytes,
            observe=self.metrics.observe_request,
        )
        self._tag = await self._queue.consume(self._consumer.on_message)

    async def stop_consuming(self) -> None:
        """Stop taking new requests (graceful shutdown)."""
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
            self._tag = None

    async def drain(self) -> None:
        """Wait for in-flight requests."""
        if self._consumer is not None and self._consumer.inflight:
            await asyncio.gather(*self._consumer.inflight, return_exceptions=True)

    def sweep(self) -> None:
        for exec_id in self.execs.registry.sweep():
            self.execs.waiters.pop(exec_id, None)
        for state, count in self.execs.registry.counts_by_state().items():
            self.metrics.registry_size.labels(self.name, state.value).set(count)

    def status(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "owner": self.owner,
            "connected": self.connection.connected if self._opened else None,
            "execs": len(self.execs.registry),
        }


class Worker:
    """The worker daemon. ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        agents: dict[str, AgentAddress],
        connect: ConnectOptions | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.worker_id = settings.worker_id or uuid.uuid4().hex[:12]
        self.metrics = WorkerMetrics()
        self.outbox = SessionOutbox()
        connect = connect or ConnectOptions(
            call_timeout=settings.agent_call_timeout, heartbeat=settings.agent_heartbeat
        )
        self.runtimes = {
            name: AgentRuntime(name, addr, settings, connect, self.outbox, self.metrics)
            for name, addr in agents.items()
        }
        self.session: BrokerSession | None = None
        self.last_broker_error = "not connected yet"

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reconnecting to the broker as needed."""
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    session = await self._connect()
                except BrokerUnavailable as exc:
                    self.last_broker_error = str(exc)
                    attempt += 1
                    delay = min(5.0, 0.2 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1)
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                attempt = 0
                await self._serve(session, stop)
        finally:
            await self._close_agents()

    async def _connect(self) -> BrokerSession:
        url = self.settings.amqp_url
        try:
            connection = await aio_pika.connect(
                url,
                timeout=10,
                client_properties={"connection_name": f"execbus-worker-{self.worker_id}"},
            )
        except Exception as exc:  # aio-pika raises a wide family here
            raise BrokerUnavailable(
                f"cannot connect to the broker at {_redact(url)}: {exc}"
            ) from exc
        try:
            channel = await connection.channel(publisher_confirms=True)
            await declare_base(channel, self.names)
            for name in self.runtimes:
                await declare_agent_queue(channel, self.names, name, self.settings.delivery_limit)
            publisher = Publisher(channel, self.names, self.settings.publish_timeout)
            await publisher.setup()
        except Exception as exc:
            await connection.close()
            raise BrokerUnavailable(f"broker session setup failed: {exc}") from exc
        self.metrics.broker_reconnects.inc()
        log.info("worker %s connected to %s", self.worker_id, _redact(url))
        return BrokerSession(connection, publisher)

    async def _serve(self, session: BrokerSession, stop: asyncio.Event) -> None:
        self.session = session
        self.outbox.publisher = session.publisher
        session.connection.close_callbacks.add(lambda *_: session.closed.set())
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(rt.serve(session)) for rt in self.runtimes.values()
        ]
        tasks.append(asyncio.create_task(self._consume_unrouted(session)))
        tasks.append(asyncio.create_task(self._sweep_loop()))
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(session.closed.wait()),
        ]
        await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("worker task failed: %r", task.exception())
        if stop.is_set() and not session.closed.is_set():
            await self._drain()
        for task in tasks + waiters:
            task.cancel()
        await asyncio.gather(*tasks, *waiters, return_exceptions=True)
        self.outbox.publisher = None
        self.session = None
        with contextlib.suppress(Exception):
            await session.connection.close()
        if not stop.is_set():
            self.last_broker_error = "connection to the broker lost"
            log.warning("lost the broker connection; reconnecting")

    async def _drain(self) -> None:
        log.info(
            "shutting down: no new requests, draining (grace %.0f s)", self.settings.shutdown_grace
        )
        for rt in self.runtimes.values():
            await rt.stop_consuming()
        drains = [rt.drain() for rt in self.runtimes.values()]
        try:
            async with asyncio.timeout(self.settings.shutdown_grace):
                await asyncio.gather(*drains)
        except TimeoutError:
            log.warning("grace period over; cancelling what is still in flight")

    async def _close_agents(self) -> None:
        for rt in self.runtimes.values():
            with contextlib.suppress(Exception):
                await rt.connection.close()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            for rt in self.runtimes.values():
                rt.sweep()

    async def _consume_unrouted(self, session: BrokerSession) -> None:
        channel = await session.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=16)
        queue = await channel.get_queue(self.names.unrouted_queue, ensure=False)
        await queue.consume(lambda m: self._unrouted(m, session.publisher))
        await asyncio.Future()

    async def _unrouted(self, message: AbstractIncomingMessage, publisher: Publisher) -> None:
        target = message.routing_key or "?"
        reason = f"no worker serves {target.replace('.', ' ', 1)!s} (routing key {target!r})"
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            doc = json.loads(message.body)
            if isinstance(doc, dict) and doc.get("agent"):
                reason = (
                    f"no worker serves agent {str(doc['agent'])[:64]!r} (routing key {target!r})"
                )
        if message.reply_to:
            reply = Reply.failure(ErrorCode.UNKNOWN_AGENT, reason)
            with contextlib.suppress(PublishFailed):
                await publisher.reply(message.reply_to, message.correlation_id, reply)
        self.metrics.dead_letters.labels("unknown_agent").inc()
        await settle(message, Disposition.dead_letter(f"unknown_agent: {reason}"), publisher)

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: connected to the broker, and every owned agent reachable."""
        agents = {name: rt.status() for name, rt in self.runtimes.items()}
        broker = self.session is not None and not self.session.closed.is_set()
        agents_ok = all(a["connected"] is not False for a in agents.values())
        detail = {
            "worker_id": self.worker_id,
            "broker": {"connected": broker, "error": None if broker else self.last_broker_error},
            "agents": agents,
        }
        return broker and agents_ok, detail


def _redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
