"""The in-process agent: an execbus agent core running on the worker's own loop.

It speaks the same protocol as a remote agent, over a socket pair, so the
worker has one code path for every execbus agent. It is meant for
development and the quick start: processes run on the worker's host.
"""

from __future__ import annotations

import asyncio
import socket

from execbus.connections.agent_client import AgentClient
from execbus.errors import ConfigError

STREAM_LIMIT = 1024 * 1024


class LocalAgentHost:
    """Owns the in-process :class:`~execbus.agent.core.AgentCore` and its connections."""

    def __init__(self) -> None:
        from execbus.agent.config import ConfigError as AgentConfigError
        from execbus.agent.core import AgentCore
        from execbus.agent.options import AgentOptions

        try:  # the core validates its options, embedded or not
            self.core = AgentCore(AgentOptions())
        except AgentConfigError as exc:
            raise ConfigError(f"the in-process agent: {exc}") from None
        self._tasks: set[asyncio.Task[None]] = set()

    async def dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A fresh connection to the core (its server side served as a task)."""
        ours, theirs = socket.socketpair()
        server_reader, server_writer = await asyncio.open_connection(
            sock=theirs, limit=STREAM_LIMIT
        )
        task = asyncio.create_task(
            self.core.handle_stream(server_reader, server_writer, token=None)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.open_connection(sock=ours, limit=STREAM_LIMIT)

    async def aclose(self, grace: float = 0.0) -> None:
        """Stop the core: running execs are killed after ``grace`` seconds."""
        await self.core.aclose(grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class LocalAgentClient(AgentClient):
    """An :class:`AgentClient` that owns its in-process agent and stops it on close."""

    def __init__(self, name: str, *, call_timeout: float, heartbeat: float, grace: float = 0.0):
        self._host = LocalAgentHost()
        self._grace = grace
        super().__init__(name, self._host.dial, call_timeout=call_timeout, heartbeat=heartbeat)

    async def close(self) -> None:
        await super().close()
        await self._host.aclose(self._grace)
