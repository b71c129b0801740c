"""The worker daemon: broker sessions, membership, agent ownership, graceful shutdown.

Shape (after arq): connect; declare the topology; announce this worker and
learn the others (``worker/ownership.py``); own the agents the assignment
gives this worker and consume their queues (``worker/runtime.py``), and the
queues of pools it owns agents of (``worker/pools.py``); on SIGTERM tell the
others, stop taking work, drain in-flight requests within the grace period,
then cancel and close.

The worker manages its own broker reconnection (rather than aio-pika's
robust restore, which does not restore exclusive queues and consumers
reliably): a lost connection ends the session, every agent runtime loses its
ownership lock with it, and a new session starts from scratch with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
)
from aiormq.exceptions import ChannelAccessRefused

from execbus.backoff import backoff_delay
from execbus.broker import broker_reason, broker_tls_context, connect_plain, redact_url, scrub
from execbus.connections.address import AgentAddress
from execbus.connections.factory import ConnectOptions
from execbus.errors import BrokerRefused, BrokerUnavailable, ErrorCode, PublishFailed
from execbus.loops import wait_event
from execbus.settings import Settings
from execbus.wire.replies import Reply
from execbus.wire.routing import Names
from execbus.worker.acks import Disposition, settle
from execbus.worker.guard import RequestGuard
from execbus.worker.metrics import WorkerMetrics
from execbus.worker.ownership import OwnershipLoop
from execbus.worker.pools import PoolConsumer
from execbus.worker.publisher import Publisher
from execbus.worker.runtime import AgentRuntime
from execbus.worker.session import BrokerSession, SessionOutbox, open_channel
from execbus.worker.topology import topology_of

log = logging.getLogger("execbus.worker")
T = TypeVar("T")


# Bounds every step of a shutdown after the grace period (closing agents, the
# broker connection, cancelled tasks), so a worker exits within grace + a few s.
CLOSE_TIMEOUT = 1.0
# A session that lasted less than this ended for a reason that may recur: back off.
STABLE_SESSION = 10.0
# Refusals (credentials, vhost, permissions) tried before the worker gives up.
REFUSALS_TOLERATED = 3
#: Channels that declare agent queues side by side when a worker first connects.
DECLARE_CHANNELS = 8


class Worker:
    """The worker daemon. ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        agents: dict[str, AgentAddress],
        connect: ConnectOptions | None = None,
        pools: dict[str, list[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.topology = topology_of(settings)
        self.worker_id = settings.worker_id or uuid.uuid4().hex[:12]
        self.metrics = WorkerMetrics()
        self.outbox = SessionOutbox()
        connect = connect or ConnectOptions(
            call_timeout=settings.agent_call_timeout, heartbeat=settings.agent_heartbeat
        )
        # Authorization policy and request limits, shared by every agent (ConfigError).
        self.guard = RequestGuard.from_settings(settings)
        self._amqp_tls = broker_tls_context(
            settings.amqp_url,
            settings.amqp_ca_file,
            settings.amqp_cert_file,
            settings.amqp_key_file,
        )
        if (warning := self.guard.startup_warning()) is not None:
            log.warning("%s", warning)
        self.runtimes = {
            name: AgentRuntime(
                name, addr, settings, connect, self.outbox, self.metrics, guard=self.guard
            )
            for name, addr in agents.items()
        }
        self.pools = {
            pool: [a for a in members if a in self.runtimes]
            for pool, members in (pools or {}).items()
        }
        self.session: BrokerSession | None = None
        self.ownership: OwnershipLoop | None = None
        self._pool_consumers: dict[str, tuple[AbstractQueue, str]] = {}
        self.last_broker_error = "not connected yet"
        self.started_at = time.time()
        # Agents whose request queue this process declared (see _declare_agent_queues).
        self._declared_agents: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reconnecting to the broker as needed.

        Every way back to the broker backs off: a failed connection, and a
        session that ended soon after it began (a permission the worker lacks
        closes it at once). A refusal (credentials, vhost, permissions) is
        tried :data:`REFUSALS_TOLERATED` times, then raised: retrying forever
        would only fill the broker's log.
        """
        attempt = refusals = 0
        try:
            while not stop.is_set():
                try:
                    session = await _unless_stopped(self._connect(), stop)
                    if session is None:
                        break
                except BrokerUnavailable as exc:
                    self.last_broker_error = str(exc)
                    refusals = refusals + 1 if isinstance(exc, BrokerRefused) else 0
                    if refusals >= REFUSALS_TOLERATED:
                        raise
                    attempt += 1
                    delay = backoff_delay(attempt, cap=5.0, base=0.1)
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    await wait_event(stop, delay)
                    continue
                began = time.monotonic()
                failure = await self._serve(session, stop)
                if time.monotonic() - began >= STABLE_SESSION:
                    attempt = refusals = 0
                elif not stop.is_set():
                    if isinstance(failure, ChannelAccessRefused):
                        refusals += 1
                        if refusals >= REFUSALS_TOLERATED:
                            raise _setup_error(failure, self.settings.amqp_url)
                    attempt += 1
                    await wait_event(stop, backoff_delay(attempt, cap=5.0, base=0.1))
        finally:
            await self._close_agents()

    async def _connect(self) -> BrokerSession:
        url = self.settings.amqp_url
        name = f"execbus-worker-{self.worker_id}"
        connection = await connect_plain(url, name=name, tls=self._amqp_tls)
        try:
            channel = await open_channel(None, connection, publisher_confirms=True)
            await self.topology.declare_base(channel)
            for pool in self.pools:
                await self.topology.declare_pool_queue(channel, pool)
            publisher = Publisher(channel, self.names, self.settings.publish_timeout)
            await publisher.setup()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            raise _setup_error(exc, url) from exc
        session = BrokerSession(connection, publisher, _cursor=1)
        try:
            await self._declare_agent_queues(session)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            raise _setup_error(exc, url) from exc
        self.metrics.broker_reconnects.inc()
        log.info("worker %s connected to %s", self.worker_id, redact_url(url))
        return session

    async def _declare_agent_queues(self, session: BrokerSession) -> None:
        """Declare the request queue of every agent this process has not declared yet.

        Requests for an agent must be queued from the moment a worker serving it is
        up, even before its owner is settled. The queues are durable, so a later
        session (a reconnect, a broker restart) finds them: only the first session
        pays, and a few channels at once make it short.
        """
        todo = [name for name in self.runtimes if name not in self._declared_agents]
        if not todo:
            return
        lanes = [todo[i::DECLARE_CHANNELS] for i in range(DECLARE_CHANNELS)]
        started = time.monotonic()
        await asyncio.gather(*(self._declare_lane(session, lane) for lane in lanes if lane))
        took = time.monotonic() - started
        log.info("declared the request queues of %d agents in %.2f s", len(todo), took)

    async def _declare_lane(self, session: BrokerSession, names: list[str]) -> None:
        channel = await session.channel()
        try:
            for name in names:
                await self.topology.declare_agent_queue(channel, name)
                self._declared_agents.add(name)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _serve(self, session: BrokerSession, stop: asyncio.Event) -> BaseException | None:
        """Run one broker session until it ends; the error that ended it, if any."""
        self.session = session
        self.outbox.publisher = session.publisher
        session.connection.close_callbacks.add(lambda *_: session.closed.set())
        # A publishing channel the broker closed (a publish to an exchange someone
        # deleted) ends the session: a new one redeclares everything. Without
        # it no reply or event would go out again, while requests still ran.
        session.publisher.channel.close_callbacks.add(
            lambda *args: self._publisher_closed(session, args[-1] if args else None)
        )
        self.ownership = OwnershipLoop(
            self.worker_id,
            self.names,
            self.runtimes,
            self.settings.control_interval,
            self.settings.peer_expiry,
            frozenset(self.pools),
            on_change=lambda: self._spawn_pool_update(session),
            started_at=self.started_at,
        )
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(self.ownership.run(session))]
        tasks.append(asyncio.create_task(self._consume_unrouted(session)))
        tasks.append(asyncio.create_task(self._sweep_loop()))
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(session.closed.wait()),
        ]
        await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                failure = task.exception()
                log.error("worker task failed: %s", scrub(repr(failure), self.settings.amqp_url))
        if stop.is_set() and not session.closed.is_set():
            await self._drain()
        await _cancel_all([*tasks, *waiters])
        for rt in self.runtimes.values():
            rt.end_session()
        self._pool_consumers.clear()
        self.outbox.publisher = None
        self.session = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await session.connection.close()
        if not stop.is_set():
            self.last_broker_error = "connection to the broker lost"
            log.warning("lost the broker connection; reconnecting")
        return failure

    def _publisher_closed(self, session: BrokerSession, exc: object) -> None:
        if not session.closed.is_set():
            log.warning("the publishing channel closed (%s); starting a new broker session", exc)
            self.last_broker_error = f"the publishing channel closed: {exc}"
            session.closed.set()

    async def _drain(self) -> None:
        """Stop taking work, then, within the grace period, finish the requests in
        flight and serve the exits of running execs (their callers get results).

        What is still running when the grace is over stays with the agent: its
        exit is kept there until the next owner publishes it.
        """
        grace = self.settings.shutdown_grace
        running = sum(rt.watch.running() for rt in self.runtimes.values() if rt.owner)
        log.info(
            "shutting down: no new requests; draining %d running exec(s) (grace %.0f s)",
            running,
            grace,
        )
        try:
            async with asyncio.timeout(grace):
                await self._stop_taking_work()
                owned = [rt for rt in self.runtimes.values() if rt.owner]
                await asyncio.gather(*(rt.drain() for rt in owned))
                await asyncio.gather(*(rt.watch.wait_settled() for rt in owned))
        except TimeoutError:
            left = sum(rt.watch.running() for rt in self.runtimes.values() if rt.owner)
            log.warning(
                "grace period over with %d exec(s) still running: their exits stay with "
                "their agents for the next owner",
                left,
            )

    async def _stop_taking_work(self) -> None:
        if self.ownership is not None and self.session is not None:
            await self.ownership.announce_stopping(self.session)
        for queue, tag in self._pool_consumers.values():
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        for rt in self.runtimes.values():
            await rt.stop_consuming()

    def _spawn_pool_update(self, session: BrokerSession) -> None:
        if self.pools:
            asyncio.create_task(self._update_pools(session))  # noqa: RUF006

    async def _update_pools(self, session: BrokerSession) -> None:
        """Consume a pool's queue exactly while owning one of its agents."""
        for pool, members in self.pools.items():
            owns = any(self.runtimes[a].owner for a in members)
            current = self._pool_consumers.get(pool)
            if owns and current is None:
                channel = await session.channel()
                await channel.set_qos(prefetch_count=self.settings.prefetch)
                queue = await self.topology.declare_pool_queue(channel, pool)
                consumer = PoolConsumer(
                    pool,
                    [self.runtimes[a] for a in members],
                    session.publisher,
                    self.settings.max_message_bytes,
                )
                self._pool_consumers[pool] = (queue, await queue.consume(consumer.on_message))
            elif not owns and current is not None:
                del self._pool_consumers[pool]
                with contextlib.suppress(Exception):
                    await current[0].cancel(current[1])

    async def _close_agents(self) -> None:
        closing = [asyncio.ensure_future(rt.connection.close()) for rt in self.runtimes.values()]
        if closing:
            _, late = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            for task in closing:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.debug("closing an agent connection failed: %r", task.exception())

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            for rt in self.runtimes.values():
                rt.sweep()

    async def _consume_unrouted(self, session: BrokerSession) -> None:
        channel = await session.channel()
        await channel.set_qos(prefetch_count=16)
        queue = await channel.get_queue(self.names.unrouted_queue, ensure=False)
        await queue.consume(lambda m: self._unrouted(m, session.publisher))
        await asyncio.Future()

    async def _unrouted(self, message: AbstractIncomingMessage, publisher: Publisher) -> None:
        """A request for an agent no worker declared: answered and dead-lettered, whatever
        its body (it is only peeked at, for a better message)."""
        target = (message.routing_key or "?")[:255]
        reason = f"no worker serves {target.replace('.', ' ', 1)!s} (routing key {target!r})"
        try:
            agent = _named_agent(message.body)
            if agent is not None:
                reason = f"no worker serves agent {agent!r} (routing key {target!r})"
            reply_to, user = message.reply_to, message.user_id or None
            if reply_to and self.names.reply_queue_allowed(reply_to, user):
                reply = Reply.failure(ErrorCode.UNKNOWN_AGENT, reason)
                with contextlib.suppress(PublishFailed):
                    await publisher.reply(reply_to, message.correlation_id, reply)
        except Exception:
            log.exception("answering an unrouted request failed; dead-lettering it")
        self.metrics.dead_letters.labels("unknown_agent").inc()
        await settle(message, Disposition.dead_letter(f"unknown_agent: {reason}"), publisher)

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: connected to the broker, and every owned agent reachable."""
        agents = {name: rt.status() for name, rt in self.runtimes.items()}
        session = self.session
        broker = (
            session is not None
            and not session.closed.is_set()
            and not session.publisher.channel.is_closed
        )
        agents_ok = all(a["connected"] is not False for a in agents.values())
        detail = {
            "worker_id": self.worker_id,
            "pools": {p: p in self._pool_consumers for p in self.pools},
            "broker": {"connected": broker, "error": None if broker else self.last_broker_error},
            "agents": agents,
        }
        return broker and agents_ok, detail


def _named_agent(body: bytes) -> str | None:
    """The ``agent`` a request body names, if it is a JSON object that names one."""
    if len(body) > 64 * 1024:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    agent = doc.get("agent") if isinstance(doc, dict) else None
    return str(agent)[:64] if agent else None


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None (``work`` cancelled) once ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    await _cancel_all([task])
    return None


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, at most CLOSE_TIMEOUT: a task that does
    not end when cancelled must not hold the shutdown up."""
    for task in tasks:
        task.cancel()
    _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
    for task in late:
        log.error("task %s did not stop when cancelled; leaving it behind", task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: logged above when it mattered


def _setup_error(exc: BaseException, url: str) -> BrokerUnavailable:
    """A session setup (declares) that failed; a refused permission is permanent."""
    reason = scrub(broker_reason(exc), url)
    if isinstance(exc, ChannelAccessRefused):
        return BrokerRefused(
            f"the broker at {redact_url(url)} refused this worker's user an operation: "
            f"{reason} (see the worker permissions in docs/security.md)"
        )
    return BrokerUnavailable(f"broker session setup failed: {reason}")
