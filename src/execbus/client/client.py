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

import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Self, Unpack, overload

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from execbus.broker import broker_reason
from execbus.client.cluster import Announcements, ClusterStatus, cluster_status
from execbus.client.config import ExecOptions, event_kind, exec_request, model
from execbus.client.connection import amqp_user, client_settings, connect, redact_url, scrub
from execbus.client.execution import Execution, run_to_exit, send_watched
from execbus.client.recovery import Recovery
from execbus.client.requests import ExecRequests
from execbus.client.results import RunResult
from execbus.client.session import Session
from execbus.client.subscriptions import OutputStream, Subscription, close_all
from execbus.client.target import AgentTarget, PoolTarget
from execbus.errors import BrokerError, BrokerUnavailable, InvalidRequest
from execbus.settings import Settings
from execbus.wire.config import ExecConfig
from execbus.wire.records import ExecInfo
from execbus.wire.requests import CreateRequest, RunRequest, StartRequest
from execbus.wire.routing import Names

NOT_CONNECTED = "the client is not connected; use `async with Client(...)`"


class Client(ExecRequests):
    """A connection to execbus: requests to agents, their replies, and events.

    The requests about an existing exec (:meth:`inspect`, :meth:`list`,
    :meth:`resize`, :meth:`signal`, :meth:`write_stdin`, :meth:`close_stdin`,
    :meth:`wait`, :meth:`remove`) are those of
    :class:`~execbus.client.requests.ExecRequests`.
    """

    def __init__(
        self,
        amqp_url: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        request_timeout: float | None = None,
    ) -> None:
        super().__init__(self._require)
        self.settings = client_settings(settings, amqp_url, namespace, request_timeout)
        self.names = Names(self.settings.namespace)
        self._user = amqp_user(self.settings.amqp_url)
        self._connection: AbstractRobustConnection | None = None
        self._current: Session | None = None
        self._recovery: Recovery | None = None
        self._subscriptions: set[Subscription] = set()
        self._announcements: set[Announcements] = set()

    # -- connection -----------------------------------------------------

    async def connect(self) -> Self:
        """Connect to the broker and open the private queue (idempotent)."""
        if self._connection is not None:
            return self
        url = self.settings.amqp_url
        connection = await connect(url, settings=self.settings)
        try:
            session = await Session.open(
                connection,
                self.names,
                user=self._user,
                publish_timeout=self.settings.publish_timeout,
                request_timeout=self.settings.request_timeout,
            )
        except CONNECTION_EXCEPTIONS as exc:
            await _close_quietly(connection)
            reason = scrub(broker_reason(exc), url)
            raise BrokerUnavailable(f"broker at {redact_url(url)}: setup failed: {reason}") from exc
        except BaseException:
            await _close_quietly(connection)
            raise
        self._connection, self._current = connection, session
        # Replies and events sent while we are away are lost (our queue is gone):
        # after a reconnect, ask the agents' owners how the execs we wait for are doing.
        self._recovery = Recovery(self, session.exits, connection, self.names, self._user)
        connection.reconnect_callbacks.add(self._recovery.on_reconnect)
        return self

    async def close(self) -> None:
        """Stop everything pending (it raises :class:`BrokerError`) and disconnect."""
        connection, self._connection = self._connection, None
        if self._current is not None:
            self._current.fail_all(BrokerError("the client was closed"))
        if self._recovery is not None:
            await self._recovery.close()
        await close_all(list(self._subscriptions))
        for announcements in list(self._announcements):
            with contextlib.suppress(Exception):
                await announcements.close()
        if connection is not None:
            await _close_quietly(connection)

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

    def _require(self) -> Session:
        if self._current is None:
            raise BrokerError(NOT_CONNECTED)
        if self._connection is None:
            raise BrokerError("the client was closed")
        return self._current

    # -- requests ---------------------------------------------------------

    async def cluster_status(
        self, listen: float = 2.5, agents: list[str] | None = None
    ) -> ClusterStatus:
        """Live workers (heard within ``listen`` seconds), who owns which agent, queue depths."""
        if self._connection is None:
            raise BrokerError("client is not connected")
        return await cluster_status(self._connection, self.names, listen, agents or [], self._user)

    async def check_agent(self, agent: str) -> None:
        """Return if a worker serves ``agent``; :class:`~execbus.errors.UnknownAgent` if not."""
        await self._require().directory.ensure(AgentTarget(agent))

    async def check_pool(self, pool: str) -> None:
        """Return if a worker serves ``pool``; :class:`~execbus.errors.UnknownAgent` if not."""
        await self._require().directory.ensure(PoolTarget(pool))

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
        target, _, request = exec_request(CreateRequest, agent, pool, cmd, exec_id, options)
        return await self._exec_call(target, request)

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
        target = AgentTarget(agent)
        if detach:
            return await self._exec_call(target, request)
        execution = await send_watched(self, self._require(), target, exec_id, request)
        return await run_to_exit(execution, None)

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
        if stdin is not None:
            options["attach_stdin"] = True
        target, exec_id, request = exec_request(
            RunRequest, agent, pool, cmd, exec_id, options, detach=detach
        )
        if not detach:
            execution = await send_watched(self, self._require(), target, exec_id, request)
            return await run_to_exit(execution, stdin)
        info = await self._exec_call(target, request)
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
        target, exec_id, request = exec_request(RunRequest, agent, pool, cmd, exec_id, options)
        return await send_watched(self, self._require(), target, exec_id, request)

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
        Only the links that are down come: ``a.link_of(agent)`` reads an owned agent
        without one as connected.
        """
        if self._connection is None:
            raise BrokerError(NOT_CONNECTED)
        follower = Announcements(
            self._connection, self.names, self._announcements.discard, user=self._user
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

    def _subscription(self, patterns: list[str]) -> Subscription:
        if self._connection is None:
            raise BrokerError(NOT_CONNECTED)
        sub = Subscription(
            self._connection, self.names, patterns, self._subscriptions.discard, user=self._user
        )
        self._subscriptions.add(sub)
        return sub


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
