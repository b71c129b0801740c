"""The execbus client: run commands on agents over RabbitMQ, from Python (asyncio).

::

    async with Client("amqp://guest:guest@localhost/") as client:
        result = await client.run("local", ["sh", "-c", "echo hi; exit 3"])
        assert result.exit_code == 3 and result.stdout == b"hi\\n"

Errors are the typed exceptions of :mod:`execbus.errors`, built from the
reply's error code (a missing executable raises ``CommandNotFound`` with
``exit_code`` 127). A pending ``run`` survives the death of the worker that
handles it: the exit event, published by whichever worker owns the agent,
completes it (see :mod:`execbus.client.exits`).

``run``, ``submit`` and ``create`` may go to a pool of agents instead
(``agent=None, pool="gpu"``): a worker serving the pool places the exec on
its least-loaded agent, and the result (``RunResult.agent``,
``Execution.agent``, ``ExecInfo.agent``) names that agent, which every
later call about the exec addresses.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, Self, Unpack, overload

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from execbus.client.agents import AgentDirectory
from execbus.client.cluster import Announcements, ClusterStatus, cluster_status
from execbus.client.config import ExecOptions, build_config, event_kind, model, signal_arg
from execbus.client.connection import connect, redact_url, scrub
from execbus.client.execution import Execution, first_of
from execbus.client.exits import ExitWatcher, Watch
from execbus.client.inbox import Inbox
from execbus.client.results import RunResult, info_of
from execbus.client.rpc import Rpc
from execbus.client.subscriptions import OutputStream, Subscription, close_all
from execbus.errors import (
    BrokerError,
    BrokerUnavailable,
    ErrorCode,
    ExecbusError,
    ExecTimeout,
    InternalError,
    InvalidRequest,
    NotFound,
    UnknownAgent,
)
from execbus.settings import Settings, load_settings
from execbus.wire.config import ExecConfig
from execbus.wire.events import Event
from execbus.wire.ids import new_exec_id
from execbus.wire.records import FINISHED_STATES, ExecInfo, ExecList
from execbus.wire.replies import Reply
from execbus.wire.requests import (
    MAX_STDIN_CHUNK,
    CreateRequest,
    InspectRequest,
    ListRequest,
    RemoveRequest,
    RequestBase,
    ResizeRequest,
    RunRequest,
    SignalRequest,
    StartRequest,
    StdinRequest,
    WaitRequest,
)
from execbus.wire.routing import Names

log = logging.getLogger("execbus.client")

RECHECK_ATTEMPTS = 5
RECHECK_DELAY = 1.0
# After a reconnect, how long to listen to worker announcements to find the
# agents of a pool whose run was placed while we were away.
PLACEMENT_LISTEN = 2.0


def check_destination(agent: str | None, pool: str | None) -> None:
    """Exactly one of ``agent`` and ``pool``; :class:`InvalidRequest` otherwise."""
    if agent is not None and pool is not None:
        raise InvalidRequest(
            f"name an agent or a pool, not both (got agent {agent!r} and pool {pool!r})"
        )
    if agent is None and pool is None:
        raise InvalidRequest("no agent and no pool: name the agent, or pass pool='NAME'")


def client_settings(
    settings: Settings | None, amqp_url: str | None, namespace: str | None, timeout: float | None
) -> Settings:
    """``settings`` (or the environment's) with the explicit arguments on top."""
    base = settings.model_dump(exclude_none=True) if settings is not None else {}
    overrides = {"amqp_url": amqp_url, "namespace": namespace, "request_timeout": timeout}
    return load_settings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def amqp_user(url: str) -> str:
    """The user an AMQP URL authenticates as (``guest`` when it names none)."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).username or "guest")


class Client:
    """A connection to execbus: requests to agents, their replies, and events."""

    def __init__(
        self,
        amqp_url: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.settings = client_settings(settings, amqp_url, namespace, request_timeout)
        self.names = Names(self.settings.namespace)
        self._connection: AbstractRobustConnection | None = None
        self._rpc: Rpc | None = None
        self._exits: ExitWatcher | None = None
        self._agents: AgentDirectory | None = None
        self._subscriptions: set[Subscription] = set()
        self._announcements: set[Announcements] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- connection -----------------------------------------------------

    async def connect(self) -> Self:
        """Connect to the broker and open the private queue (idempotent)."""
        if self._connection is not None:
            return self
        url = self.settings.amqp_url
        connection = await connect(url, settings=self.settings)
        try:
            await self._setup(connection)
        except CONNECTION_EXCEPTIONS as exc:
            await self._close_connection(connection)
            reason = scrub(str(exc) or type(exc).__name__, url)
            raise BrokerUnavailable(f"broker at {redact_url(url)}: setup failed: {reason}") from exc
        except BaseException:
            await self._close_connection(connection)
            raise
        self._connection = connection
        connection.reconnect_callbacks.add(self._on_reconnect)
        return self

    async def _setup(self, connection: AbstractRobustConnection) -> None:
        inbox_channel = await connection.channel(publisher_confirms=False)
        inbox = Inbox(
            inbox_channel,
            self.names,
            self._on_reply,
            self._on_event,
            self._follows,
            user=amqp_user(self.settings.amqp_url),
        )
        publish_channel = await connection.channel(publisher_confirms=True)
        rpc = Rpc(
            publish_channel,
            self.names,
            inbox.name,
            self.settings.publish_timeout,
            user_id=amqp_user(self.settings.amqp_url),
        )
        self._rpc, self._exits = rpc, ExitWatcher(inbox)
        self._agents = AgentDirectory(connection, self.names)
        await inbox.open()

    async def close(self) -> None:
        """Stop everything pending (it raises :class:`BrokerError`) and disconnect."""
        connection, self._connection = self._connection, None
        closed = BrokerError("the client was closed")
        if self._rpc is not None:
            self._rpc.fail_all(closed)
        if self._exits is not None:
            self._exits.fail_all(closed)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_all(list(self._subscriptions))
        for announcements in list(self._announcements):
            with contextlib.suppress(Exception):
                await announcements.close()
        if connection is not None:
            await self._close_connection(connection)

    @staticmethod
    async def _close_connection(connection: AbstractRobustConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the broker connection is up (it reconnects by itself after an
        outage; subscriptions come back with it, events published meanwhile are lost)."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    def _require(self) -> tuple[Rpc, ExitWatcher, AgentDirectory]:
        if self._rpc is None or self._exits is None or self._agents is None:
            raise BrokerError("the client is not connected; use `async with Client(...)`")
        if self._connection is None:
            raise BrokerError("the client was closed")
        return self._rpc, self._exits, self._agents

    def _on_reply(self, correlation_id: str | None, reply: Reply) -> None:
        if self._rpc is not None:
            self._rpc.resolve(correlation_id, reply)

    def _on_event(self, event: Event) -> None:
        if self._exits is not None:
            self._exits.deliver(event)

    def _follows(self, exec_id: str) -> bool:
        return self._exits is not None and self._exits.watching(exec_id)

    def _on_reconnect(self, *_: object) -> None:
        # Replies and events sent while we were away are lost (our queue was
        # gone): ask the agents' owners how the execs we wait for are doing.
        self._spawn(self._recheck())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self) -> None:
        _, exits, _ = self._require()
        for attempt in range(RECHECK_ATTEMPTS):
            failed = False
            unplaced: builtins.list[Watch] = []
            for watch in exits.pending():
                if watch.agent is None:
                    unplaced.append(watch)
                    continue
                try:
                    record = await self.inspect(watch.agent, watch.exec_id, include_output=True)
                    exits.deliver_record(record)
                except ExecbusError as exc:
                    log.info("re-check of exec %s failed: %s", watch.exec_id, exc.message)
                    failed = True
            if unplaced:
                failed = not await self._find_placements(exits, unplaced) or failed
            if not failed:
                return
            await asyncio.sleep(RECHECK_DELAY * (attempt + 1))

    async def _find_placements(self, exits: ExitWatcher, watches: builtins.list[Watch]) -> bool:
        """Pool runs not placed when we lost the connection: ask the agents of the workers
        serving their pool. An exec found nowhere is still queued (its events will come).
        False if some agent could not be asked."""
        if self._connection is None:
            return True
        try:
            user = amqp_user(self.settings.amqp_url)
            status = await cluster_status(self._connection, self.names, PLACEMENT_LISTEN, [], user)
        except (*CONNECTION_EXCEPTIONS, BrokerError) as exc:  # BrokerError: no read on control
            log.info("re-check of pool runs failed: %r", exc)
            return False
        complete = True
        for watch in watches:
            candidates = sorted(
                {a for w in status.workers if watch.pool in w.pools for a in w.owned}
            )
            for agent in candidates:
                try:
                    info = await self.inspect(agent, watch.exec_id, include_output=True)
                except (NotFound, UnknownAgent):
                    continue
                except ExecbusError as exc:
                    log.info("re-check of exec %s on %s failed: %s", watch.exec_id, agent, exc)
                    complete = False
                    continue
                exits.place(watch, agent)
                exits.deliver_record(info)
                break
        return complete

    # -- requests ---------------------------------------------------------

    async def cluster_status(
        self, listen: float = 2.5, agents: builtins.list[str] | None = None
    ) -> ClusterStatus:
        """Live workers (heard within ``listen`` seconds), who owns which agent, queue depths."""
        if self._connection is None:
            raise BrokerError("client is not connected")
        user = amqp_user(self.settings.amqp_url)
        return await cluster_status(self._connection, self.names, listen, agents or [], user)

    async def check_agent(self, agent: str) -> None:
        """Return if a worker serves ``agent``; :class:`~execbus.errors.UnknownAgent` if not."""
        _, _, agents = self._require()
        await agents.ensure_served(agent)

    async def check_pool(self, pool: str) -> None:
        """Return if a worker serves ``pool``; :class:`~execbus.errors.UnknownAgent` if not."""
        _, _, agents = self._require()
        await agents.ensure_pool_served(pool)

    async def _call(
        self, agent: str | None, request: RequestBase, pool: str | None = None
    ) -> Reply:
        rpc, _, agents = self._require()
        if pool is None:
            assert agent is not None
            await agents.ensure_served(agent)
        else:
            await agents.ensure_pool_served(pool)
        reply = await rpc.call(agent, request, self.settings.request_timeout, pool=pool)
        if reply.error is not None and reply.error.code == ErrorCode.UNKNOWN_AGENT:
            if pool is not None:
                agents.forget_pool(pool)
            if agent is not None:
                agents.forget(agent)
        return reply

    async def _exec_call(
        self, agent: str | None, request: RequestBase, pool: str | None = None
    ) -> ExecInfo:
        return info_of(await self._call(agent, request, pool))

    async def create(
        self,
        agent: str | None,
        cmd: Sequence[str] | ExecConfig,
        *,
        exec_id: str | None = None,
        pool: str | None = None,
        **options: Unpack[ExecOptions],
    ) -> ExecInfo:
        """Register an exec without starting it (idempotent by ``exec_id``).

        With ``pool`` (and ``agent=None``) a worker of the pool picks the agent:
        the record's ``agent`` names it; start it there.
        """
        check_destination(agent, pool)
        config = build_config(cmd, **options)
        exec_id = exec_id or new_exec_id()
        request = model(CreateRequest, agent=agent, pool=pool, exec_id=exec_id, config=config)
        return await self._exec_call(agent, request, pool)

    @overload
    async def start(
        self,
        agent: str,
        exec_id: str,
        *,
        detach: Literal[False] = False,
        console_size: tuple[int, int] | None = None,
    ) -> RunResult: ...

    @overload
    async def start(
        self,
        agent: str,
        exec_id: str,
        *,
        detach: Literal[True],
        console_size: tuple[int, int] | None = None,
    ) -> ExecInfo: ...

    async def start(
        self,
        agent: str,
        exec_id: str,
        *,
        detach: bool = False,
        console_size: tuple[int, int] | None = None,
    ) -> RunResult | ExecInfo:
        """Start a created exec: its :class:`RunResult` at exit, or its record at once if
        ``detach``. A repeated start never runs the command again: it gets the same
        outcome (``result.replayed`` is true)."""
        request = model(
            StartRequest, agent=agent, exec_id=exec_id, detach=detach, console_size=console_size
        )
        if detach:
            return await self._exec_call(agent, request)
        return await self._until_exit(agent, exec_id, request, None)

    @overload
    async def run(
        self,
        agent: str | None,
        cmd: Sequence[str] | ExecConfig,
        *,
        stdin: bytes | None = None,
        exec_id: str | None = None,
        detach: Literal[False] = False,
        pool: str | None = None,
        **options: Unpack[ExecOptions],
    ) -> RunResult: ...

    @overload
    async def run(
        self,
        agent: str | None,
        cmd: Sequence[str] | ExecConfig,
        *,
        stdin: bytes | None = None,
        exec_id: str | None = None,
        detach: Literal[True],
        pool: str | None = None,
        **options: Unpack[ExecOptions],
    ) -> ExecInfo: ...

    async def run(
        self,
        agent: str | None,
        cmd: Sequence[str] | ExecConfig,
        *,
        stdin: bytes | None = None,
        exec_id: str | None = None,
        detach: bool = False,
        pool: str | None = None,
        **options: Unpack[ExecOptions],
    ) -> RunResult | ExecInfo:
        """Run ``cmd`` on ``agent`` and return how it ended (its record at once if ``detach``).

        ``pool="NAME"`` (with ``agent=None``) sends it to a pool of agents
        instead: ``result.agent`` (or the record's ``agent``) names the agent
        it ran on.

        Options: ``container_id``, ``env`` (dict or ``K=V`` list), ``user``,
        ``working_dir``, ``tty``, ``console_size``, ``timeout`` (seconds; the
        process group is killed), ``output_limit`` (bytes per stream),
        ``labels``, ``stream_output`` (publish ``exec.output`` events, see
        :meth:`output`), ``attach_stdin`` (write it with :meth:`write_stdin`).
        ``stdin`` is written to the process and then closed. ``exec_id`` is
        the idempotency key (a fresh one by default). A start failure raises
        the :class:`~execbus.errors.StartFailed` subclass of its cause.
        """
        check_destination(agent, pool)
        if stdin is not None:
            options["attach_stdin"] = True
        config = build_config(cmd, detach=detach, **options)
        if stdin is not None and not config.attach_stdin:
            config = config.model_copy(update={"attach_stdin": True})
        exec_id = exec_id or new_exec_id()
        request = model(RunRequest, agent=agent, pool=pool, exec_id=exec_id, config=config)
        if not detach:
            return await self._until_exit(agent, exec_id, request, stdin, pool)
        info = await self._exec_call(agent, request, pool)
        if stdin is not None:
            await self.write_stdin(info.agent, exec_id, stdin, close=True)
        return info

    async def submit(
        self,
        agent: str | None,
        cmd: Sequence[str] | ExecConfig,
        *,
        exec_id: str | None = None,
        pool: str | None = None,
        **options: Unpack[ExecOptions],
    ) -> Execution:
        """Send a run and return once it is published: ``await execution.result()`` for the
        end. Subscribe to :meth:`output` first to stream its output.

        With ``pool`` (and ``agent=None``) ``execution.agent`` is ``None`` until a
        worker placed the run; ``await execution.placed()`` gives the agent."""
        check_destination(agent, pool)
        config = build_config(cmd, **options)
        exec_id = exec_id or new_exec_id()
        request = model(RunRequest, agent=agent, pool=pool, exec_id=exec_id, config=config)
        return await self._send_watched(agent, exec_id, request, pool)

    async def _send_watched(
        self, agent: str | None, exec_id: str, request: RequestBase, pool: str | None = None
    ) -> Execution:
        rpc, exits, agents = self._require()
        if pool is None:
            assert agent is not None
            await agents.ensure_served(agent)
        else:
            await agents.ensure_pool_served(pool)
        # Before the request: never miss the end (nor, for a pool, the placement).
        watch = await exits.watch(agent, exec_id, pool=pool)
        try:
            pending = await rpc.send(agent, request, pool=pool)
        except BaseException:
            exits.unwatch(watch)
            raise
        return Execution(self, agent, exec_id, rpc, exits, pending, watch, pool)

    async def _until_exit(
        self,
        agent: str | None,
        exec_id: str,
        request: RequestBase,
        stdin: bytes | None,
        pool: str | None = None,
    ) -> RunResult:
        execution = await self._send_watched(agent, exec_id, request, pool)
        feeder = asyncio.create_task(self._feed(execution, stdin)) if stdin is not None else None
        try:
            return await execution.result()
        finally:
            execution.forget()
            if feeder is not None:
                await _settle_feeder(feeder)

    async def _feed(self, execution: Execution, data: bytes) -> None:
        try:
            await execution.write_stdin(data, close=True)
        except ExecbusError as exc:  # e.g. the process exited without reading: harmless
            log.debug("stdin of exec %s not written: %s", execution.exec_id, exc.message)

    async def inspect(self, agent: str, exec_id: str, *, include_output: bool = False) -> ExecInfo:
        """One exec's record (:class:`~execbus.errors.NotFound` if unknown); its captured
        output (``exit.stdout``/``stderr``) only with ``include_output``."""
        request = model(InspectRequest, agent=agent, exec_id=exec_id, include_output=include_output)
        return await self._exec_call(agent, request)

    async def list(
        self, agent: str, container_id: str | None = None, include_finished: bool = True
    ) -> builtins.list[ExecInfo]:
        """The execs of ``agent`` (of one container, if given)."""
        request = model(
            ListRequest, agent=agent, container_id=container_id, include_finished=include_finished
        )
        reply = await self._call(agent, request)
        if not reply.ok:
            info_of(reply)  # raises the typed error
        if not isinstance(reply.result, ExecList):
            raise InternalError("the reply to exec.list carries no list")
        return reply.result.execs

    async def resize(self, agent: str, exec_id: str, width: int, height: int) -> ExecInfo:
        """Resize a running TTY exec's terminal."""
        request = model(ResizeRequest, agent=agent, exec_id=exec_id, width=width, height=height)
        return await self._exec_call(agent, request)

    async def signal(self, agent: str, exec_id: str, signal: str | int = "SIGKILL") -> ExecInfo:
        """Send a signal (``"SIGTERM"``, ``"TERM"`` or a number) to the exec's process group."""
        request = model(SignalRequest, agent=agent, exec_id=exec_id, signal=signal_arg(signal))
        return await self._exec_call(agent, request)

    async def write_stdin(
        self, agent: str, exec_id: str, data: bytes, *, close: bool = False
    ) -> ExecInfo:
        """Write ``data`` to the exec's stdin (in order, in chunks); ``close`` closes it after."""
        chunks = [data[i : i + MAX_STDIN_CHUNK] for i in range(0, len(data), MAX_STDIN_CHUNK)]
        chunks = chunks or [b""]
        info: ExecInfo | None = None
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            request = model(
                StdinRequest, agent=agent, exec_id=exec_id, data=chunk, close=close and last
            )
            info = await self._exec_call(agent, request)
        assert info is not None
        return info

    async def close_stdin(self, agent: str, exec_id: str) -> ExecInfo:
        """Close the exec's stdin (the process reads end-of-file)."""
        return await self.write_stdin(agent, exec_id, b"", close=True)

    async def wait(
        self,
        agent: str,
        exec_id: str,
        timeout: float | None = None,
        *,
        include_output: bool = True,
    ) -> ExecInfo:
        """The exec's record once it has finished, with its captured output unless
        ``include_output=False``; :class:`ExecTimeout` after ``timeout`` s."""
        rpc, exits, agents = self._require()
        await agents.ensure_served(agent)
        watch = await exits.watch(agent, exec_id)
        request = model(WaitRequest, agent=agent, exec_id=exec_id, include_output=include_output)
        try:
            pending = await rpc.send(agent, request)
            try:
                async with asyncio.timeout(timeout):
                    reply, final = await first_of(pending, watch)
            except TimeoutError:
                raise ExecTimeout(f"exec {exec_id} did not finish within {timeout:g} s") from None
            finally:
                rpc.discard(pending)
        finally:
            exits.unwatch(watch)
        if reply is not None:
            return info_of(reply)
        if isinstance(final, ExecInfo):
            return final
        return await self.inspect(agent, exec_id, include_output=include_output)

    async def remove(self, agent: str, exec_id: str, *, force: bool = False) -> ExecInfo:
        """Forget a finished exec (``force``: kill a running one first)."""
        request = model(RemoveRequest, agent=agent, exec_id=exec_id, force=force)
        return await self._exec_call(agent, request)

    # -- events -----------------------------------------------------------

    def events(
        self, agent: str | None = None, container_id: str | None = None, kind: str | None = None
    ) -> Subscription:
        """Follow events (all, or of one agent / container / kind such as ``"exited"``).

        ``async for event in client.events(...)``; enter it as a context
        (``async with``) to subscribe before doing what produces the events.
        """
        pattern = Names.event_binding(agent, container_id, event_kind(kind))
        return self._subscription([pattern])

    def announcements(self) -> Announcements:
        """Follow the workers' announcements on ``<ns>.control`` (who runs, owns which
        agent, its links and load), as they arrive: ``async for a in client.announcements()``.
        """
        if self._connection is None:
            raise BrokerError("the client is not connected; use `async with Client(...)`")
        follower = Announcements(
            self._connection,
            self.names,
            self._announcements.discard,
            user=amqp_user(self.settings.amqp_url),
        )
        self._announcements.add(follower)
        return follower

    def output(
        self,
        agent: str | None,
        exec_id: str,
        *,
        container_id: str | None = None,
        existing: bool = True,
    ) -> OutputStream:
        """The output chunks (``exec.output`` events) of one exec, in order; ends at its exit.

        Only execs run with ``stream_output=True`` publish output. With
        ``existing`` the exec must exist (:class:`~execbus.errors.NotFound`
        otherwise) and a finished one gives an empty stream (its captured
        output is in :meth:`inspect`); ``existing=False`` subscribes for an
        exec about to be created: enter the stream, then run it. ``agent=None``
        follows the exec on any agent (a run about to be sent to a pool; needs
        ``existing=False``).
        """
        if agent is None and existing:
            raise InvalidRequest("following an existing exec needs its agent (or existing=False)")
        patterns = [
            Names.event_binding(agent, container_id, k) for k in ("output", "exited", "failed")
        ]
        check = (lambda: self._finished(agent, exec_id)) if agent is not None and existing else None
        return OutputStream(self._subscription(patterns), exec_id, check)

    async def _finished(self, agent: str, exec_id: str) -> bool:
        return (await self.inspect(agent, exec_id)).state in FINISHED_STATES

    def _subscription(self, patterns: builtins.list[str]) -> Subscription:
        if self._connection is None:
            raise BrokerError("the client is not connected; use `async with Client(...)`")
        sub = Subscription(
            self._connection,
            self.names,
            patterns,
            self._subscriptions.discard,
            user=amqp_user(self.settings.amqp_url),
        )
        self._subscriptions.add(sub)
        return sub


async def _settle_feeder(feeder: asyncio.Task[None]) -> None:
    if not feeder.done():
        feeder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeder
