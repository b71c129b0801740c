"""``execbus run``: one command on an agent, attached to this terminal like ``docker exec``.

The session subscribes to the exec's output *before* sending the run, so no
chunk is missed, and writes each stream's chunks in ``seq`` order as they
arrive. The output stream ends at the exec's exit event, which the worker
publishes after the output on the same channel: once it has been seen,
every chunk has been written.

With ``--pool`` the agent is not known in advance: the session follows the
exec's output on every agent (``exec.*.<container>.output``, filtered by exec
id), and stdin, resizes and signals go to the agent the pool placed it on.

With ``--json`` nothing is streamed (no output subscription, no ``exec.output``
events): the final record, with its captured output, is printed at the end.
A run killed by its ``--timeout`` exits 124 with one line saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
from typing import Any

from execbus.agent.signals import ShutdownSignals, install_shutdown
from execbus.cli.common import EXIT_TIMEOUT
from execbus.cli.render import to_json
from execbus.cli.terminal import StdinReader, is_tty, raw_mode, terminal_size
from execbus.client import Client, Execution, OutputStream, RunResult
from execbus.errors import ExecbusError, StartFailed
from execbus.wire.events import OutputEvent
from execbus.wire.ids import new_exec_id

log = logging.getLogger("execbus.cli")

# After the exit, how long to wait for output still in flight (the exit event
# normally closes the stream at once; this bounds a lost event).
DRAIN_TIMEOUT = 5.0
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exec_options(args: argparse.Namespace) -> dict[str, Any]:
    """The exec's configuration from the command line."""
    return {
        "container_id": args.container,
        "env": [f"{key}={value}" for key, value in args.environment],
        "user": args.user,
        "working_dir": args.workdir,
        "tty": args.tty,
        "console_size": terminal_size() if args.tty else None,  # the first frame is never 0x0
        "attach_stdin": args.interactive,
        "privileged": args.privileged,
        "timeout": args.timeout,
        "output_limit": args.output_limit,
        "labels": dict(args.label),
    }


def write_chunk(chunk: OutputEvent) -> None:
    """Write one output chunk to our stdout or stderr, at once."""
    stream = sys.stdout if chunk.stream == "stdout" else sys.stderr
    with contextlib.suppress(BrokenPipeError):  # nobody reads it any more: drop it
        stream.buffer.write(chunk.data)
        stream.buffer.flush()


class RunSession:
    """Runs one command attached: output, stdin, window size and signals."""

    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.exec_id: str = args.exec_id or new_exec_id()
        self.raw = bool(args.tty and args.interactive and is_tty(sys.stdin.fileno()))
        self._tasks: list[asyncio.Task[None]] = []
        self._winch = asyncio.Event()
        self._abandon: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._signals: ShutdownSignals | None = None

    async def run(self) -> int:
        """Run the command; its exit status (128+n when killed by signal n, 124 when
        its timeout killed it)."""
        # Fail fast, before subscribing.
        if self.args.pool is not None:
            await self.client.check_pool(self.args.pool)
        else:
            await self.client.check_agent(self.args.agent)
        if self.args.json:  # nothing streamed: the output is in the record printed at the end
            return await self._attached(None)
        stream = self.client.output(
            self.args.agent, self.exec_id, container_id=self.args.container, existing=False
        )
        async with stream:
            with raw_mode(sys.stdin.fileno()) if self.raw else contextlib.nullcontext():
                return await self._attached(stream)

    async def _attached(self, stream: OutputStream | None) -> int:
        execution = await self.client.submit(
            self.args.agent,
            self.args.cmd,
            pool=self.args.pool,
            exec_id=self.exec_id,
            stream_output=stream is not None,
            **exec_options(self.args),
        )
        pump = asyncio.create_task(self._pump(stream)) if stream is not None else None
        self._start_helpers(execution)
        try:
            try:
                result = await self._result(execution)
            except StartFailed:
                if self.args.json:  # the failed record, for scripts; then the error line
                    await self._print_record(execution, None)
                raise
            if result is None:
                return self._abandoned(execution)
            if pump is not None and stream is not None:
                await self._drain(pump, stream)
            if self.args.json:
                await self._print_record(execution, result)
            if result.timed_out:
                self._say(f"timed out after {_timeout_of(self.args, result)} s; killed")
                return EXIT_TIMEOUT
            return result.exit_code
        finally:
            self._stop_helpers()
            if pump is not None:
                await _cancel(pump)

    async def _print_record(self, execution: Execution, result: RunResult | None) -> None:
        """``--json``: the exec's final record, with its captured output, on stdout.

        The run's reply carries it; when only the exit event arrived (the worker
        that ran it died), or for a start failure, it is asked for."""
        info = result.info if result is not None else None
        if info is None or info.exit is None or info.exit.stdout is None:
            agent = execution.agent or (result.agent if result is not None else None)
            if agent is None:
                return  # a pool run that failed before any agent took it: no record
            try:
                info = await self.client.inspect(agent, self.exec_id, include_output=True)
            except ExecbusError as exc:
                self._say(f"cannot read the record of exec {self.exec_id}: {exc.message}")
                return
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.write(to_json(info) + "\n")
            sys.stdout.flush()

    def _say(self, message: str) -> None:
        """One ``execbus: ...`` line on stderr (``\r\n``-safe in raw mode)."""
        prefix, newline = ("\r\n", "\r\n") if self.raw else ("", "\n")
        sys.stderr.write(f"{prefix}execbus: {message}{newline}")
        sys.stderr.flush()

    async def _result(self, execution: Execution) -> RunResult | None:
        """The exec's result, or ``None`` if the user gave up waiting (a second signal)."""
        result = asyncio.ensure_future(execution.result())
        waiting: list[asyncio.Future[Any]] = [result, self._abandon]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()
        await _cancel(result)
        return None

    def _abandoned(self, execution: Execution) -> int:
        agent = execution.agent
        if agent is not None:
            hint = f"stop it with `execbus kill {self.exec_id} --agent {agent}`"
        else:  # a pool run no worker has placed yet
            hint = f"it was sent to pool {self.args.pool!r}; no agent has taken it yet"
        self._say(f"stopped waiting; exec {self.exec_id} may still be running ({hint})")
        return self._abandon.result()

    @staticmethod
    async def _pump(stream: OutputStream) -> None:
        async for chunk in stream:
            write_chunk(chunk)

    @staticmethod
    async def _drain(pump: asyncio.Task[None], stream: OutputStream) -> None:
        """Let the output catch up with the exit (bounded), then end the stream."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await asyncio.shield(pump)
        if not pump.done():
            log.debug("output did not reach its end within %s s", DRAIN_TIMEOUT)
            await stream.close()
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await pump

    # -- stdin, window size, signals -----------------------------------

    def _start_helpers(self, execution: Execution) -> None:
        loop = asyncio.get_running_loop()
        if self.args.interactive:
            self._spawn(self._forward_stdin(execution))
        if self.args.tty and terminal_size() is not None:
            self._spawn(self._forward_resizes(execution))
            loop.add_signal_handler(signal.SIGWINCH, self._winch.set)
        forward = functools.partial(self._forward_first_signal, execution)
        self._signals = install_shutdown(
            loop, forward, on_second=self._give_up, signals=FORWARDED_SIGNALS
        )

    def _stop_helpers(self) -> None:
        if self._signals is not None:
            self._signals.remove()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGWINCH)
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _forward_stdin(self, execution: Execution) -> None:
        reader = StdinReader(sys.stdin.fileno())
        with _quietly("stdin"):
            while data := await reader.read():
                await execution.write_stdin(data)
            await execution.close_stdin()

    async def _forward_resizes(self, execution: Execution) -> None:
        while True:
            await self._winch.wait()
            self._winch.clear()
            size = terminal_size()
            if size is not None:
                with _quietly("resize"):
                    await execution.resize(*size)

    def _forward_first_signal(self, execution: Execution, sig: signal.Signals) -> None:
        """First signal: pass it on to the remote process."""
        self._spawn(_forward_signal(execution, sig.name))

    def _give_up(self, sig: signal.Signals) -> None:
        """A second signal: stop waiting (exit status 128+n)."""
        if not self._abandon.done():
            self._abandon.set_result(128 + sig)


def _timeout_of(args: argparse.Namespace, result: RunResult) -> str:
    """The timeout that killed it: ours, else the record's (a replayed exec id)."""
    timeout = args.timeout if args.timeout is not None else getattr(result.info, "timeout", None)
    return "?" if timeout is None else f"{timeout:g}"


async def _forward_signal(execution: Execution, name: str) -> None:
    with _quietly("signal"):
        await execution.signal(name)


@contextlib.contextmanager
def _quietly(what: str) -> Any:
    """Helpers are best effort: the exec may end under them (conflict, not found)."""
    try:
        yield
    except ExecbusError as exc:
        log.debug("%s not forwarded: %s", what, exc.message)


async def _cancel(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
