"""A real ``qemu-ga`` on a Unix socket, a connection to it, and a cuttable proxy.

qemu-ga runs as a plain process here (``-m unix-listen``): the host side of a
virtio-serial channel behaves the same, one client at a time. Every process
and socket a fixture starts is killed or closed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from execbus.connections.base import AgentExec
from execbus.connections.qga import QgaConnection


def find_qemu_ga() -> str | None:
    """``qemu-ga`` on PATH (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("qemu-ga") or next(
        (p for p in ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga") if os.access(p, os.X_OK)), None
    )


@dataclass
class QemuGuestAgent:
    """One qemu-ga process; ``restart`` kills it like a crash and starts a new one."""

    binary: str
    workdir: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def socket_path(self) -> Path:
        return self.workdir / "qga.sock"

    @property
    def address(self) -> str:
        return f"qga+unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"qemu-ga-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a killed qemu-ga leaves its socket behind
        state = self.workdir / "state"
        state.mkdir(exist_ok=True)
        cmd = [
            self.binary, "-m", "unix-listen", "-p", str(self.socket_path),
            "-t", str(state), "-f", str(self.workdir / "qemu-ga.pid"), *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            # Its own session: killpg at teardown also reaps the guest-exec
            # children, which stay in qemu-ga's process group.
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        # The socket file appears after bind+listen; probing with connect would
        # occupy qemu-ga's only client slot, so only its existence is checked.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu-ga exited early:\n{self.log()}")
            if self.socket_path.exists():
                return
            time.sleep(0.005)
        raise AssertionError(f"qemu-ga did not start listening:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL qemu-ga and every guest-exec child (as systemd stops a unit)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@pytest.fixture
def qga_binary() -> str:
    binary = find_qemu_ga()
    if binary is None:
        pytest.skip("qemu-ga is not installed (apt-get install qemu-guest-agent)")
    return binary


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="qga-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_qga(qga_binary: str, short_tmp: Path) -> Iterator[Callable[..., QemuGuestAgent]]:
    """Start qemu-ga processes (``start_qga("-b", "guest-exec")``); all killed after."""
    agents: list[QemuGuestAgent] = []

    def start(*extra_args: str) -> QemuGuestAgent:
        workdir = short_tmp / f"a{len(agents)}"
        workdir.mkdir()
        agent = QemuGuestAgent(qga_binary, workdir, extra_args)
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        agent.kill()


@pytest.fixture
def qga(start_qga: Callable[..., QemuGuestAgent]) -> QemuGuestAgent:
    return start_qga()


@dataclass
class Recorder:
    """An :class:`AgentListener` that records what the connection pushes."""

    exits: dict[str, list[AgentExec]] = field(default_factory=dict)
    # (exec_id, stream, seq, data, exits seen so far): chunks must precede the exit.
    output: list[tuple[str, str, int, bytes, int]] = field(default_factory=list)
    connects: list[bool] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)

    async def on_output(self, agent: str, exec_id: str, stream: str, seq: int, data: bytes) -> None:
        self.output.append((exec_id, stream, seq, data, len(self.exits.get(exec_id, []))))

    async def on_exit(self, agent: str, state: AgentExec) -> None:
        self.exits.setdefault(state.exec_id, []).append(state)

    async def on_connected(self, agent: str, boot_changed: bool) -> None:
        self.connects.append(boot_changed)

    async def on_disconnected(self, agent: str, reason: str) -> None:
        self.disconnects.append(reason)

    async def wait_exit(self, exec_id: str, timeout: float = 10.0) -> AgentExec:
        async with asyncio.timeout(timeout):
            while exec_id not in self.exits:
                await asyncio.sleep(0.005)
        return self.exits[exec_id][0]

    async def wait_connects(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.connects) < count:
                await asyncio.sleep(0.005)


async def wait_connected(conn: QgaConnection, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not conn.connected:
        if time.monotonic() > deadline:
            raise AssertionError(f"not connected after {timeout} s: {conn.last_error}")
        await asyncio.sleep(0.002)


@dataclass
class Opened:
    """An open connection and its listener."""

    conn: QgaConnection
    events: Recorder


@pytest.fixture
async def open_conn() -> AsyncIterator[Callable[..., Awaitable[Opened]]]:
    """Open :class:`QgaConnection` objects (``await open_conn(path)``); all closed after."""
    opened: list[QgaConnection] = []

    async def open_(path: Path | str, wait: bool = True, **kwargs: float) -> Opened:
        options = {"call_timeout": 5.0, "heartbeat": 0.5, "max_backoff": 0.2, **kwargs}
        conn = QgaConnection("vm1", str(path), **options)
        events = Recorder()
        opened.append(conn)
        await conn.open(events)
        if wait:
            await wait_connected(conn)
        return Opened(conn, events)

    yield open_
    for conn in opened:
        await conn.close()


class UnixProxy:
    """A Unix-socket proxy whose connections can be cut (a flaky channel).

    A cut drops the client side abruptly but leaves qemu-ga's side
    gracefully (shut for writing, drained, closed): qemu-ga exits when a
    peer closes on it with answers unread, and the cut must break only the
    channel, not the agent.
    """

    def __init__(self, listen: Path, target: Path) -> None:
        self.listen = listen
        self.target = target
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, str(self.listen))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._clients.add(writer)
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            writer.close()
            self._clients.discard(writer)
            await _close_gracefully(up_reader, up_writer)
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()

    def cut(self) -> None:
        """Drop every proxied connection on the client's side."""
        for writer in list(self._clients):
            writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        await asyncio.gather(*self._handlers, return_exceptions=True)


async def _close_gracefully(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError, TimeoutError, RuntimeError):
        writer.write_eof()
        async with asyncio.timeout(2):
            while await reader.read(65536):
                pass
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


@pytest.fixture
async def proxy(qga: QemuGuestAgent) -> AsyncIterator[UnixProxy]:
    """A cuttable proxy in front of ``qga``."""
    p = UnixProxy(qga.workdir / "proxy.sock", qga.socket_path)
    await p.start()
    yield p
    await p.aclose()
