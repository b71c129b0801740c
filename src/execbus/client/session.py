"""What a connected client talks through: its inbox, requests, exit watches and directory.

One :class:`Session` per broker connection (the robust connection restores
its channels, queue and bindings after an outage, so the session outlives
reconnects). The inbox delivers replies to :class:`~execbus.client.rpc.Rpc`
and exit events to :class:`~execbus.client.exits.ExitWatcher`; the
:class:`~execbus.client.agents.AgentDirectory` answers "does a worker serve
this target?" before a request goes out.
"""

from __future__ import annotations

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from execbus.client.agents import AgentDirectory
from execbus.client.exits import ExitWatcher
from execbus.client.inbox import Inbox
from execbus.client.rpc import Rpc
from execbus.publishing import ConfirmChannel, open_confirm_channel
from execbus.wire.events import Event
from execbus.wire.replies import Reply
from execbus.wire.routing import Names


class Session:
    """The request machinery of one connection (see :meth:`open`)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        inbox_channel: AbstractChannel,
        publish_channel: AbstractChannel,
        *,
        user: str,
        publish_timeout: float,
        request_timeout: float | None,
    ) -> None:
        self.inbox = Inbox(
            inbox_channel, names, self._on_reply, self._on_event, self._follows, user=user
        )
        # Replaced after a nack or a close (see execbus.publishing.ConfirmChannel).
        publisher = ConfirmChannel(
            publish_channel,
            lambda: open_confirm_channel(connection),
            drain_timeout=publish_timeout,
            replace_closed=True,
        )
        self.rpc = Rpc(publisher, names, self.inbox.name, publish_timeout, user_id=user)
        self.exits = ExitWatcher(self.inbox)
        self.directory = AgentDirectory(connection, names)
        self.request_timeout = request_timeout

    @classmethod
    async def open(
        cls,
        connection: AbstractRobustConnection,
        names: Names,
        *,
        user: str,
        publish_timeout: float,
        request_timeout: float | None,
    ) -> Session:
        """Open the channels (the inbox's apart from the publishing one, so a channel
        error on publish never disturbs the consumer) and start consuming the inbox."""
        inbox_channel = await connection.channel(publisher_confirms=False)
        publish_channel = await connection.channel(publisher_confirms=True)
        session = cls(
            connection,
            names,
            inbox_channel,
            publish_channel,
            user=user,
            publish_timeout=publish_timeout,
            request_timeout=request_timeout,
        )
        await session.inbox.open()
        return session

    def fail_all(self, exc: BaseException) -> None:
        """Wake every pending request and exit watch with ``exc`` (the client is closing)."""
        self.rpc.fail_all(exc)
        self.exits.fail_all(exc)

    def _on_reply(self, correlation_id: str | None, reply: Reply) -> None:
        self.rpc.resolve(correlation_id, reply)

    def _on_event(self, event: Event) -> None:
        self.exits.deliver(event)

    def _follows(self, exec_id: str) -> bool:
        return self.exits.watching(exec_id)
