"""TTY execs: a real PTY, its size, resizes, EOF on stdin close, timeouts."""

from __future__ import annotations

import re
import uuid

import pytest

from execbus.testing.agent_peer import AgentPeer, AgentRequestError, split_captures
from tests.system.agent.harness import wait_group_gone


async def test_tty_is_a_pts_and_streams_merge(client: AgentPeer) -> None:
    state, out, err = await client.run(["sh", "-c", "tty; echo to-stderr >&2"], tty=True)
    assert re.fullmatch(rb"/dev/pts/\d+\r\nto-stderr\r\n", out), out
    assert err == b""
    assert state["tty"] is True
    assert state["exit"]["stderr_len"] == 0


async def test_initial_console_size(client: AgentPeer) -> None:
    _, out, _ = await client.run(
        ["stty", "size"], tty=True, console_size={"width": 123, "height": 45}
    )
    assert out == b"45 123\r\n"
    _, out, _ = await client.run(["stty", "size"], tty=True)
    assert out == b"24 80\r\n"


async def test_resize_while_running(client: AgentPeer) -> None:
    exec_id = uuid.uuid4().hex
    await client.call(
        "start",
        exec_id=exec_id,
        cmd=["sh", "-c", "read x; stty size"],
        tty=True,
        stdin=True,
        console_size={"width": 80, "height": 24},
    )
    await client.call("resize", exec_id=exec_id, width=132, height=50)
    await client.call("stdin", b"go\n", exec_id=exec_id)
    frame = await client.request("wait", exec_id=exec_id)
    out, _ = split_captures(frame.header["result"], frame.payload)
    assert out.endswith(b"50 132\r\n"), out
    with pytest.raises(AgentRequestError) as err:
        await client.call("resize", exec_id=exec_id, width=10, height=10)
    assert err.value.code == "not_running"


async def test_closing_tty_stdin_sends_eof(client: AgentPeer) -> None:
    exec_id = uuid.uuid4().hex
    await client.call("start", exec_id=exec_id, cmd=["cat"], tty=True, stdin=True)
    await client.call("stdin", b"line\n", exec_id=exec_id, close=True)
    frame = await client.request("wait", exec_id=exec_id)
    state = frame.header["result"]
    out, _ = split_captures(state, frame.payload)
    assert state["exit"]["exit_code"] == 0
    assert out.count(b"line\r\n") == 2  # the terminal's echo, then cat's copy


async def test_resize_needs_a_tty(client: AgentPeer) -> None:
    exec_id = uuid.uuid4().hex
    await client.call("start", exec_id=exec_id, cmd=["sleep", "30"])
    try:
        with pytest.raises(AgentRequestError) as err:
            await client.call("resize", exec_id=exec_id, width=100, height=40)
        assert err.value.code == "not_tty"
    finally:
        await client.call("signal", exec_id=exec_id, signal="KILL")


async def test_tty_exec_timeout_kills_its_group(client: AgentPeer) -> None:
    state, _, _ = await client.run(["sh", "-c", "sleep 100 & sleep 100"], tty=True, timeout=0.3)
    assert state["exit"]["timed_out"] is True
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (137, "SIGKILL")
    wait_group_gone(state["pid"])
