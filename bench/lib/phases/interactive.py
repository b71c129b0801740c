"""Interactive latency: one keystroke until its echo is back, through the whole bus.

``cli``: ``execbus run -it --agent a1 -- sh -c 'stty raw -echo; exec cat'``
runs under a pseudo-terminal made here; the benchmark writes one byte to the
pty and times until the byte comes back: the CLI reads it (raw mode), sends
a stdin request (client -> broker -> worker -> agent -> the exec's PTY),
``cat`` echoes it, and the output event goes back (agent -> worker -> broker
-> CLI), which writes it to the pty. ``sdk``: the same from this process
through the SDK (``write_stdin`` and ``client.output``), without the CLI.

The remote terminal is put in raw mode without echo, so that ``cat`` itself
answers every byte (the kernel's echo of a cooked terminal would fill its
line buffer); a shell with readline echoes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
import tty
from collections import Counter
from collections.abc import Awaitable, Callable

from bench.lib import say
from bench.lib.context import AGENT, Ctx
from bench.lib.measure import Latency
from bench.lib.sections import InteractiveSection

from execbus import Client
from execbus.errors import ExecbusError
from execbus.testing.processes import child_env
from execbus.wire.ids import new_exec_id

REMOTE = ["sh", "-c", "stty raw -echo; exec cat"]
KEY = b"x"
Key = Callable[[], Awaitable[None]]


class Echoes:
    """Bytes as they come back; :meth:`take` waits for the next ones."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.changed.set()

    async def take(self, timeout: float) -> bytes:
        """Wait (at most ``timeout`` s) until something came; return it all."""
        async with asyncio.timeout(timeout):
            while not self.buffer:
                self.changed.clear()
                await self.changed.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class PtyReader(Echoes):
    """The bytes coming out of a pty master, as the event loop sees them."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.feed(data)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)


async def _settle(reader: Echoes, probe: Key, seconds: float = 30.0) -> None:
    """Probe until an echo comes back, then let the terminal settle and drain it."""
    deadline = time.monotonic() + seconds
    while True:
        await probe()
        with contextlib.suppress(TimeoutError):
            await reader.take(0.3)
            break
        if time.monotonic() > deadline:
            raise TimeoutError("no echo from the interactive session")
    await asyncio.sleep(0.5)
    reader.buffer.clear()


async def _keystrokes(n: int, send: Key, reader: Echoes) -> tuple[list[float], Counter[str]]:
    samples: list[float] = []
    errors: Counter[str] = Counter()
    for _ in range(n):
        t0 = time.perf_counter()
        sent = asyncio.ensure_future(send())
        try:
            await reader.take(10)
            samples.append(time.perf_counter() - t0)
        except TimeoutError:
            errors["no_echo"] += 1
        with contextlib.suppress(ExecbusError):
            await sent  # the stdin request's reply (the CLI waits for it too)
    return samples, errors


def _run_it(ctx: Ctx, exec_id: str, tty_fd: int) -> subprocess.Popen[bytes]:
    """``execbus run -it`` with the pty as its terminal (stderr to a log)."""
    argv = [sys.executable, "-m", "execbus", "run", "-it", "--agent", AGENT]
    argv += ["--exec-id", exec_id, "--", *REMOTE]
    env = child_env(EXECBUS_AMQP_URL=ctx.amqp_url, EXECBUS_NAMESPACE=ctx.ns)
    with open(ctx.workdir / "run-it.log", "ab") as log:
        return subprocess.Popen(
            argv, stdin=tty_fd, stdout=tty_fd, stderr=log, env=env, start_new_session=True
        )


async def cli_path(ctx: Ctx, client: Client, n: int) -> tuple[Latency, Counter[str]]:
    master, slave = pty.openpty()
    tty.setraw(slave)  # no local echo, before the CLI puts it in raw mode itself
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    exec_id = new_exec_id()
    proc = _run_it(ctx, exec_id, slave)
    os.close(slave)
    reader = PtyReader(master)

    async def key() -> None:
        os.write(master, KEY)

    try:
        await _settle(reader, key)
        samples, errors = await _keystrokes(n, key, reader)
    finally:
        reader.close()
        with contextlib.suppress(ExecbusError):
            await client.signal(AGENT, exec_id, "SIGKILL")
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)
        os.close(master)
    return Latency.of(samples), errors


async def sdk_path(client: Client, n: int) -> tuple[Latency, Counter[str]]:
    exec_id = new_exec_id()
    chunks = Echoes()
    async with client.output(AGENT, exec_id, existing=False) as stream:
        execution = await client.submit(
            AGENT, REMOTE, exec_id=exec_id, tty=True, attach_stdin=True,
            stream_output=True, console_size=(80, 24),
        )  # fmt: skip

        async def pump() -> None:
            async for chunk in stream:
                chunks.feed(chunk.data)

        pumping = asyncio.create_task(pump())

        async def key() -> None:
            await execution.write_stdin(KEY)

        async def probe() -> None:
            with contextlib.suppress(ExecbusError):  # not running yet
                await key()

        try:
            await _settle(chunks, probe)
            samples, errors = await _keystrokes(n, key, chunks)
        finally:
            with contextlib.suppress(ExecbusError):
                await execution.signal("SIGKILL")
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping
    return Latency.of(samples), errors


async def interactive(ctx: Ctx) -> InteractiveSection:
    await ctx.worker(ctx.current.mode if ctx.current else "lean")
    client = await ctx.client()
    n = ctx.plan.keys_n
    say(f"interactive: {n} keystrokes through `execbus run -it` under a pty, then the SDK")
    cli, cli_errors = await cli_path(ctx, client, n)
    say(f"interactive (execbus run -it): p50 {cli.p50} ms, p99 {cli.p99} ms")
    sdk, sdk_errors = await sdk_path(client, n)
    say(f"interactive (SDK): p50 {sdk.p50} ms, p99 {sdk.p99} ms")
    errors = {f"cli_{k}": v for k, v in cli_errors.items()}
    errors |= {f"sdk_{k}": v for k, v in sdk_errors.items()}
    return InteractiveSection(REMOTE, cli, sdk, errors)
