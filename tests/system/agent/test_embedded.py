"""An in-process AgentCore over a socketpair, as the worker embeds it."""

from __future__ import annotations

import asyncio
import socket

from execbus.agent.core import AgentCore
from execbus.agent.options import AgentOptions
from execbus.testing.agent_peer import AgentPeer, split_captures


async def test_embedded_core_serves_a_socketpair_and_closes_cleanly() -> None:
    core = AgentCore(AgentOptions(runc=False))
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    serving = asyncio.ensure_future(core.handle_stream(reader, writer, token="t"))
    c = AgentPeer(*await asyncio.open_unix_connection(sock=theirs))
    try:
        assert (await c.call("hello", versions=[1], token="t"))["backends"] == ["host"]
        await c.call("watch")
        _state, out, _ = await c.run(["echo", "embedded"])
        assert out == b"embedded\n"
        await c.call("start", exec_id="sleeper", cmd=["sleep", "100"])
        await core.aclose(grace=0)
        events = []
        while not c.events.empty():
            events.append(c.events.get_nowait())
        exit_event = next(e for e in events if e.header["exec_id"] == "sleeper")
        assert exit_event.header["exit"]["signal"] == "SIGKILL"
        assert split_captures(exit_event.header, exit_event.payload) == (b"", b"")
        await asyncio.wait_for(serving, 5)
        await c.wait_closed()
    finally:
        await c.close()
