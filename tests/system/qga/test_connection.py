"""QgaConnection against a real qemu-ga: execs, emulated timeouts and signals,
unsupported operations, and qemu-ga restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from execbus.connections.qga import QgaConnection, QgaStream
from execbus.errors import (
    AgentUnavailable,
    Conflict,
    InvalidRequest,
    NotFound,
    Unsupported,
)
from execbus.testing.waiting import wait_until
from execbus.wire.config import ExecConfig
from tests.system.qga.conftest import Opened, QemuGuestAgent, UnixProxy, wait_connected

pytestmark = pytest.mark.qga

OpenConn = Callable[..., Awaitable[Opened]]


def cfg(*cmd: str, **kwargs: Any) -> ExecConfig:
    return ExecConfig(cmd=list(cmd), **kwargs)


def kernel_boot_id() -> str:
    # qemu-ga runs on this very host here, so its "guest" boot id is ours.
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


async def run(conn: QgaConnection, exec_id: str, config: ExecConfig, **kwargs: Any) -> Any:
    started = await conn.start(exec_id, config, {"test": exec_id}, **kwargs)
    assert started.new
    return await asyncio.wait_for(conn.wait(exec_id), 10)


async def test_stdout_stderr_exit_code_and_exit_event(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    o = await open_conn(qga.socket_path)
    config = cfg("sh", "-c", "echo out; echo err >&2; exit 3")
    state = await run(o.conn, "e1", config)
    assert state.state == "exited"
    assert state.exit.exit_code == 3
    assert state.exit.signal is None
    assert (state.exit.stdout, state.exit.stderr) == (b"out\n", b"err\n")
    assert state.meta == {"test": "e1"}
    pushed = await o.events.wait_exit("e1")
    assert pushed.exit is not None
    assert pushed.exit.exit_code == 3
    # Kept until acknowledged, then forgotten.
    assert [s.exec_id for s in await o.conn.list()] == ["e1"]
    await o.conn.ack("e1")
    assert await o.conn.list() == []
    with pytest.raises(NotFound):
        await o.conn.inspect("e1")


async def test_short_commands_return_fast(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    took = []
    for i in range(5):
        begin = time.perf_counter()
        state = await run(o.conn, f"t{i}", cfg("true"))
        took.append(time.perf_counter() - begin)
        assert state.exit.exit_code == 0
    # The polling backoff starts at 0.5 ms: a trivial command takes milliseconds.
    assert min(took) < 0.1, took


async def test_env_is_clean_with_a_default_path(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    state = await run(o.conn, "env", cfg("env", env=["FOO=bar baz", "EMPTY="]))
    lines = set(state.exit.stdout.decode().splitlines())
    assert {"FOO=bar baz", "EMPTY="} <= lines
    assert any(line.startswith("PATH=/usr/local/sbin:") for line in lines)
    state = await run(o.conn, "path", cfg("sh", "-c", 'echo "$PATH"', env=["PATH=/bin:/usr/bin"]))
    assert state.exit.stdout == b"/bin:/usr/bin\n"


async def test_input_data_up_front_and_stdin_at_eof(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    o = await open_conn(qga.socket_path)
    state = await run(o.conn, "in", cfg("cat"), input_data=b"hello\x00stdin\n")
    assert state.exit.stdout == b"hello\x00stdin\n"
    # Without input, stdin is an empty pipe: cat ends at once instead of hanging.
    state = await run(o.conn, "noin", cfg("cat"))
    assert (state.exit.exit_code, state.exit.stdout) == (0, b"")


async def test_timeout_kills_the_process(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    begin = time.monotonic()
    state = await run(o.conn, "slow", cfg("sleep", "30", timeout=0.5))
    assert 0.5 <= time.monotonic() - begin < 5
    assert state.exit.timed_out
    assert (state.exit.exit_code, state.exit.signal) == (137, "SIGKILL")


async def test_timeout_kills_descendants_too(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    # qemu-ga reports an exit only when every holder of the output pipes is
    # gone: a kill of the shell alone would leave this waiting for 30 s.
    o = await open_conn(qga.socket_path)
    begin = time.monotonic()
    state = await run(
        o.conn, "tree", cfg("sh", "-c", "sleep 30 & sleep 31; echo never", timeout=0.3)
    )
    assert time.monotonic() - begin < 5
    assert state.exit.timed_out
    assert state.exit.exit_code == 137
    assert b"never" not in state.exit.stdout


async def test_signal_is_emulated_with_kill(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    await o.conn.start("s", cfg("sleep", "30"), {})
    with pytest.raises(InvalidRequest):
        await o.conn.signal("s", "SIGNOPE")
    await o.conn.signal("s", "TERM")
    state = await asyncio.wait_for(o.conn.wait("s"), 10)
    assert state.exit is not None
    assert (state.exit.exit_code, state.exit.signal, state.exit.timed_out) == (
        143,
        "SIGTERM",
        False,
    )
    with pytest.raises(Conflict):
        await o.conn.signal("s", "KILL")
    with pytest.raises(NotFound):
        await o.conn.signal("nope", "KILL")


async def test_exit_by_signal_inside_the_guest(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    state = await run(o.conn, "self", cfg("sh", "-c", "kill -USR1 $$"))
    assert (state.exit.exit_code, state.exit.signal) == (138, "SIGUSR1")


async def test_start_failures_use_docker_exit_codes(
    qga: QemuGuestAgent, open_conn: OpenConn, short_tmp: Path
) -> None:
    o = await open_conn(qga.socket_path)
    missing = await o.conn.start("nf", cfg("no-such-command-xyz"), {})
    assert missing.state == "failed"
    assert missing.new
    assert missing.error is not None
    assert (missing.error.code, missing.error.exit_code) == ("command_not_found", 127)
    plain = short_tmp / "not-executable"
    plain.write_text("echo hi\n")
    denied = await o.conn.start("ne", cfg(str(plain)), {})
    assert denied.error is not None
    assert (denied.error.code, denied.error.exit_code) == ("command_not_executable", 126)
    # Failed starts stay listed until acknowledged, like exits.
    assert {s.exec_id for s in await o.conn.list()} == {"nf", "ne"}


async def test_start_is_idempotent_by_exec_id(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    first = await o.conn.start("same", cfg("sleep", "0.3"), {})
    again = await o.conn.start("same", cfg("sleep", "0.3"), {})
    assert first.new
    assert not again.new
    assert again.pid == first.pid
    with pytest.raises(Conflict):
        await o.conn.ack("same")  # still running
    await asyncio.wait_for(o.conn.wait("same"), 10)
    replay = await o.conn.start("same", cfg("sleep", "0.3"), {})
    assert (replay.state, replay.new, replay.pid) == ("exited", False, first.pid)
    await o.conn.ack("same")
    await o.conn.ack("same")  # acking what is forgotten already is fine


async def test_output_limit_counts_dropped_bytes(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    config = cfg("sh", "-c", "head -c 100 /dev/zero; printf abc >&2", output_limit=10)
    state = await run(o.conn, "cap", config)
    assert (state.exit.stdout, state.exit.stdout_dropped) == (b"\0" * 10, 90)
    assert (state.exit.stderr, state.exit.stderr_dropped) == (b"abc", 0)
    detached = cfg("sh", "-c", "echo out; echo err >&2", attach_stdout=False)
    state = await run(o.conn, "det", detached)
    assert (state.exit.stdout, state.exit.stderr) == (b"", b"err\n")


async def test_stream_output_is_emulated_at_exit(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    script = "head -c 100000 /dev/zero; echo oops >&2"
    state = await run(o.conn, "so", cfg("sh", "-c", script, stream_output=True, output_limit=10))
    await o.events.wait_exit("so")
    chunks = [(stream, seq, len(data), seen) for _, stream, seq, data, seen in o.events.output]
    # Everything captured, in 64 KiB chunks numbered per stream, all before the exit.
    assert chunks == [
        ("stdout", 0, 65536, 0),
        ("stdout", 1, 100000 - 65536, 0),
        ("stderr", 0, 5, 0),
    ]
    assert (len(state.exit.stdout), state.exit.stdout_dropped) == (10, 100000 - 10)
    # Without stream_output nothing is pushed but the exit.
    await run(o.conn, "quiet", cfg("echo", "hi"))
    await o.events.wait_exit("quiet")
    assert {c[0] for c in o.events.output} == {"so"}


async def test_qemu_ga_truncation_is_marked_as_dropped(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    # qemu-ga keeps 16 MiB per stream and says only "truncated": +1 marks the unknown rest.
    o = await open_conn(qga.socket_path)
    config = cfg("head", "-c", str(17 * 1024 * 1024), "/dev/zero", output_limit=1024)
    state = await run(o.conn, "big", config)
    assert len(state.exit.stdout) == 1024
    assert state.exit.stdout_dropped == 16 * 1024 * 1024 - 1024 + 1


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (cfg("true", tty=True), "TTY"),
        (cfg("cat", attach_stdin=True), "stdin"),
        (cfg("true", container_id="c1"), "guest itself"),
        (cfg("true", user="nobody"), "user"),
        (cfg("true", privileged=True), "privileged"),
    ],
)
async def test_unsupported_exec_options(
    qga: QemuGuestAgent, open_conn: OpenConn, config: ExecConfig, named: str
) -> None:
    o = await open_conn(qga.socket_path)
    with pytest.raises(Unsupported, match=named):
        await o.conn.start("u", config, {})
    assert await o.conn.list() == []


async def test_unsupported_operations(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    await o.conn.start("r", cfg("sleep", "30"), {})
    with pytest.raises(Unsupported, match="TTY"):
        await o.conn.resize("r", 80, 24)
    with pytest.raises(Unsupported, match="stdin"):
        await o.conn.write_stdin("r", b"data", close=True)
    assert "tty" not in o.conn.info.capabilities  # type: ignore[union-attr]
    await o.conn.signal("r", "KILL")


async def test_working_dir_where_qemu_ga_supports_it(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    o = await open_conn(qga.socket_path)
    info = o.conn.info
    assert info is not None
    config = cfg("pwd", working_dir="/tmp")
    if "cwd" in info.capabilities:
        state = await run(o.conn, "wd", config)
        assert state.exit.stdout == b"/tmp\n"
    else:
        with pytest.raises(Unsupported, match="working directory"):
            await o.conn.start("wd", config, {})


async def test_info_and_ping(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path)
    await o.conn.ping()
    info = o.conn.info
    assert info is not None
    kernel_boot = kernel_boot_id()
    assert info.boot_id.startswith(f"{kernel_boot}/{qga.proc.pid}@")  # type: ignore[union-attr]
    assert info.hostname == socket.gethostname()
    assert info.agent_version.startswith("qemu-ga ")
    assert {"signal", "timeout"} <= info.capabilities
    assert not {"tty", "stdin", "resize", "stream"} & info.capabilities
    await o.events.wait_connects(1)
    assert o.events.connects == [False]


async def test_qemu_ga_restart_mid_run_reports_the_exec_lost(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    o = await open_conn(qga.socket_path)
    await o.events.wait_connects(1)
    old_boot = o.conn.info.boot_id  # type: ignore[union-attr]
    await o.conn.start("lost", cfg("sleep", "30"), {})
    qga.restart()
    pushed = await o.events.wait_exit("lost")
    assert pushed.state == "failed"
    assert pushed.error is not None
    assert pushed.error.code == "agent_lost"
    assert "qemu-ga restarted" in pushed.error.message
    await o.events.wait_connects(2)
    assert o.events.connects == [False, True]
    assert o.events.disconnects
    assert o.conn.info.boot_id != old_boot  # type: ignore[union-attr]
    # The new qemu-ga serves new execs through the same connection object.
    state = await run(o.conn, "after", cfg("echo", "back"))
    assert state.exit.stdout == b"back\n"


async def test_connection_cut_keeps_running_execs(
    qga: QemuGuestAgent, proxy: UnixProxy, open_conn: OpenConn
) -> None:
    # Only the channel breaks: qemu-ga still knows the pid after the resync.
    o = await open_conn(proxy.listen)
    await o.conn.start("kept", cfg("sh", "-c", "sleep 0.5; echo done"), {})
    proxy.cut()
    state = await asyncio.wait_for(o.conn.wait("kept"), 10)
    assert state.state == "exited"
    assert state.exit is not None
    assert state.exit.stdout == b"done\n"
    assert o.events.disconnects
    await o.events.wait_connects(2)
    assert o.events.connects == [False, False]


async def test_resync_skips_what_a_previous_client_left(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    # A previous client left half a command in qemu-ga's parser.
    _reader, writer = await asyncio.open_unix_connection(str(qga.socket_path))
    writer.write(b'{"execute": "guest-ping", "argum')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    o = await open_conn(qga.socket_path)
    await o.conn.ping()
    state = await run(o.conn, "ok", cfg("echo", "in sync"))
    assert state.exit.stdout == b"in sync\n"


async def test_blocked_guest_exec_is_unsupported(start_qga: Any, open_conn: OpenConn) -> None:
    blocked = start_qga("-b", "guest-exec")
    o = await open_conn(blocked.socket_path, wait=False)
    async with asyncio.timeout(10):
        while "guest-exec" not in o.conn.last_error:
            await asyncio.sleep(0.01)
    assert not o.conn.connected
    with pytest.raises(Unsupported, match="guest-exec"):
        await o.conn.start("x", cfg("true"), {})


async def test_calls_while_disconnected_raise_agent_unavailable(
    short_tmp: Path, open_conn: OpenConn
) -> None:
    o = await open_conn(short_tmp / "missing.sock", wait=False, call_timeout=0.2)
    begin = time.monotonic()
    with pytest.raises(AgentUnavailable, match="not connected"):
        await o.conn.start("x", cfg("true"), {})
    assert time.monotonic() - begin < 2
    with pytest.raises(AgentUnavailable):
        await o.conn.ping()
    assert await o.conn.list() == []  # nothing was recorded: a retry is safe


async def test_a_second_client_waits_for_the_first(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    # qemu-ga serves one client at a time: the second one cannot even resync
    # until the first lets go (what a worker taking over an agent sees).
    first = await open_conn(qga.socket_path)
    second = await open_conn(qga.socket_path, wait=False, call_timeout=0.3)
    await wait_until(lambda: second.conn.last_error, what="the second client's first failure")
    assert first.conn.connected
    assert not second.conn.connected
    await first.conn.close()
    await wait_connected(second.conn)
    await second.conn.ping()


async def test_heartbeat_notices_a_frozen_qemu_ga(qga: QemuGuestAgent, open_conn: OpenConn) -> None:
    o = await open_conn(qga.socket_path, call_timeout=1.0, heartbeat=0.3)
    assert qga.proc is not None
    os.kill(qga.proc.pid, signal.SIGSTOP)
    try:
        async with asyncio.timeout(5):
            while not o.events.disconnects:
                await asyncio.sleep(0.01)
        assert "guest-ping" in o.events.disconnects[0]
        assert not o.conn.connected
    finally:
        os.kill(qga.proc.pid, signal.SIGCONT)
    await wait_connected(o.conn)
    await o.conn.ping()


async def test_an_abandoned_answer_does_not_kill_qemu_ga(
    qga: QemuGuestAgent, open_conn: OpenConn
) -> None:
    # qemu-ga exits when a client closes with answers unread; an aborted
    # session therefore drains before it closes.
    reader, writer = await asyncio.open_unix_connection(str(qga.socket_path))
    session = QgaStream(reader, writer)
    call = asyncio.create_task(session.call("guest-info", timeout=5))
    await asyncio.sleep(0)  # sent; the answer is on its way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert session.closed.is_set()
    await session.aclose(2.0)
    o = await open_conn(qga.socket_path)
    await o.conn.ping()
    assert qga.proc is not None
    assert qga.proc.poll() is None
