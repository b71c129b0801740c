"""A connection to QEMU's guest agent (``qemu-ga``), behind :class:`AgentConnection`.

qemu-ga speaks newline-delimited QMP-style JSON on one stream (a Unix socket
with ``qemu-ga -m unix-listen``, or the host side of a virtio-serial
channel): ``{"execute": cmd, "arguments": {...}}`` answered by
``{"return": ...}`` or ``{"error": {"class", "desc"}}``, one command at a
time and in order. It serves one client at a time; others wait in the
socket's backlog.

What qemu-ga cannot do, this class emulates or refuses (``docs/qga.md``):

- completion: qemu-ga pushes nothing, so every running exec is polled with
  ``guest-exec-status`` (backoff from ``poll_initial`` doubling to
  ``poll_max``). qemu-ga forgets a pid once it has answered ``exited``, so
  the exec table (pids, configs, exits until ``ack``) lives here, in the
  worker;
- signals and timeouts: qemu-ga cannot signal, so a ``/bin/sh`` helper run
  through ``guest-exec`` signals the process and its descendants (qemu-ga's
  children are not group leaders: they share qemu-ga's own process group,
  which must never be signalled);
- TTYs, streamed stdin, resize, users, containers and privileged execs are
  :class:`~execbus.errors.Unsupported`;
- ``stream_output``: qemu-ga hands out output only once the process has
  exited, so the captured output is pushed as output chunks at the exit,
  just before the exit itself (followers such as ``execbus run`` then
  print it); nothing arrives while the process runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from execbus.agent.errors import AgentError as AgentRequestError
from execbus.agent.signames import parse_signal, signal_name
from execbus.connections.base import AgentExec, AgentInfo, AgentListener
from execbus.connections.supervised import SupervisedConnection
from execbus.errors import (
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    Conflict,
    ErrorCode,
    ExecbusError,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    Unsupported,
)
from execbus.wire.config import ExecConfig
from execbus.wire.records import ErrorInfo, ExitInfo

log = logging.getLogger("execbus.qga")

# One answer may carry two 16 MiB captures in base64 (about 43 MiB) plus JSON.
MAX_LINE = 64 * 1024 * 1024
READ_CHUNK = 256 * 1024
SYNC_SENTINEL = b"\xff"
# qemu-ga's JSON lexer refuses tokens over 64 MiB; stay well below with base64.
MAX_INPUT_DATA = 16 * 1024 * 1024
# qemu-ga replaces the whole environment when ``env`` is given (and inherits
# its own otherwise), so execs always get a clean one, as with the execbus agent.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REQUIRED_COMMANDS = ("guest-exec", "guest-exec-status")
FILE_COMMANDS = frozenset({"guest-file-open", "guest-file-read", "guest-file-close"})
# A path that cannot exist: probing ``cwd`` with it never spawns anything.
CWD_PROBE_PATH = "/nonexistent/execbus-qga-cwd-probe"
HELPER_NAME = "execbus-qga-kill"
OUTPUT_CHUNK = 64 * 1024  # emulated output chunks, as large as the execbus agent's
# Signals a process and all its descendants. Walking /proc first and stopping
# each process found (for SIGKILL) keeps the tree from forking away while we
# collect it; descendants matter because qemu-ga reports ``exited`` only once
# every holder of the output pipes is gone. ``kill -- -PID`` covers execs that
# made themselves group leaders; qemu-ga's own group is never named.
KILL_TREE_SCRIPT = r"""
sig=$1 root=$2
kids() { cat /proc/"$1"/task/*/children 2>/dev/null || pgrep -P "$1" 2>/dev/null; }
[ "$sig" = 9 ] && kill -STOP "$root" 2>/dev/null
all= level=$root
while [ -n "$level" ]; do
  next=
  for p in $level; do
    for c in $(kids "$p"); do
      [ "$sig" = 9 ] && kill -STOP "$c" 2>/dev/null
      next="$next $c"
    done
  done
  all="$all$next" level=$next
done
kill -"$sig" "$root"; rc=$?
kill -"$sig" -- -"$root" 2>/dev/null
[ -n "$all" ] && kill -"$sig" $all 2>/dev/null
exit $rc
"""


class QgaCommandError(AgentError):
    """qemu-ga answered a command with ``{"error": {"class", "desc"}}``."""

    code = ErrorCode.INTERNAL

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"qemu-ga refused {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


# -- the stream -------------------------------------------------------------


class _Session:
    """One connected stream to qemu-ga; commands run strictly one at a time.

    Any command whose answer was not read completely (timeout, cancellation,
    a broken stream) aborts the session: a late answer would otherwise be
    taken for the next command's. The next connection resynchronises.

    Closing is graceful on purpose: qemu-ga (7.2, ``unix-listen``) *exits*
    when a client closes its socket with answers still unread ("error
    reading channel" on ECONNRESET). So a session is shut for writing, read
    until qemu-ga closes its side, and only then closed.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.reason = ""
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for a newline

    def abort(self, reason: str) -> None:
        """Mark the session dead (first reason wins) and stop sending: see :meth:`aclose`."""
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()
            with contextlib.suppress(OSError, RuntimeError):
                if self.writer.can_write_eof():
                    self.writer.write_eof()

    async def aclose(self, drain_timeout: float) -> None:
        """Shut down gracefully: drain what qemu-ga still sends until it closes, then close."""
        self.abort("closed")
        with contextlib.suppress(TimeoutError, OSError, ConnectionError):
            async with asyncio.timeout(drain_timeout), self.lock:
                while await self.reader.read(READ_CHUNK):
                    pass
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    async def call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """Run one command; ``timeout`` bounds each silence, not a long answer."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        async with self.lock:
            if self.closed.is_set():
                raise AgentUnavailable(f"qemu-ga connection lost: {self.reason}")
            reply = await self._guarded(command, self._exchange(data, timeout, on_sent), timeout)
        return _unwrap(command, reply)

    async def _guarded(self, command: str, work: Awaitable[Any], timeout: float) -> Any:
        """Await ``work``; on any failure abort the session and translate the error."""
        try:
            return await work
        except asyncio.CancelledError:
            self.abort(f"{command} was cancelled before its answer arrived")
            raise
        except TimeoutError:
            self.abort(f"no answer to {command} within {timeout:g} s")
            raise AgentUnavailable(
                f"qemu-ga did not answer {command} within {timeout:g} s"
            ) from None
        except (OSError, ConnectionError, EOFError) as exc:
            self.abort(f"connection error during {command}: {exc}")
            raise AgentUnavailable(f"qemu-ga connection lost during {command}: {exc}") from exc
        except AgentProtocolError as exc:
            self.abort(exc.message)
            raise
        except ValueError as exc:
            self.abort(f"unreadable answer to {command}")
            raise AgentProtocolError(f"qemu-ga sent an unreadable answer to {command}") from exc

    async def _exchange(
        self, data: bytes, timeout: float, on_sent: Callable[[], None] | None
    ) -> dict[str, Any]:
        if on_sent is not None:
            on_sent()  # from here on, qemu-ga may act on the command
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()
        while True:
            line = await self._read_line(timeout)
            if line.strip():
                return _parse_object(line)

    async def sync(self, timeout: float) -> None:
        """``guest-sync-delimited``: flush qemu-ga's parser and skip stale answers.

        The leading 0xFF makes qemu-ga drop any partial JSON a previous client
        left (it answers that with a parse error, which is skipped too); its
        answer to the sync is preceded by 0xFF, and only the one carrying our
        random id ends the stale stream.
        """
        token = random.getrandbits(62)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        data = SYNC_SENTINEL + json.dumps(request).encode() + b"\n"
        async with self.lock:
            await self._guarded("guest-sync-delimited", self._sync(data, token, timeout), timeout)

    async def _sync(self, data: bytes, token: int, timeout: float) -> None:
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()
            while True:
                await self._skip_past_sentinel(timeout)
                line = await self._read_line(timeout)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("return") == token:
                    return

    async def _skip_past_sentinel(self, timeout: float) -> None:
        while (index := self._buffer.find(SYNC_SENTINEL)) < 0:
            self._buffer.clear()
            self._scanned = 0
            await self._fill(timeout)
        del self._buffer[: index + 1]
        self._scanned = 0

    async def _read_line(self, timeout: float) -> bytes:
        while (end := self._buffer.find(b"\n", self._scanned)) < 0:
            self._scanned = len(self._buffer)
            if self._scanned > MAX_LINE:
                raise AgentProtocolError(f"qemu-ga sent a line longer than {MAX_LINE} bytes")
            await self._fill(timeout)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line

    async def _fill(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            chunk = await self.reader.read(READ_CHUNK)
        if not chunk:
            raise ConnectionResetError("qemu-ga closed the connection")
        self._buffer += chunk


def _parse_object(line: bytes) -> dict[str, Any]:
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise AgentProtocolError("qemu-ga sent a JSON value that is not an object")
    return doc


def _unwrap(command: str, reply: dict[str, Any]) -> Any:
    """The ``return`` value of an answer, or its ``error`` as :class:`QgaCommandError`."""
    if "return" in reply:
        return reply["return"]
    error = reply.get("error")
    if isinstance(error, dict):
        raise QgaCommandError(command, str(error.get("class", "")), str(error.get("desc", "")))
    raise AgentProtocolError(f"qemu-ga answered {command} with neither return nor error")


# -- execs ------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Exec:
    """One exec in the table: what qemu-ga forgets, we remember."""

    exec_id: str
    config: ExecConfig
    meta: dict[str, Any]
    state: str = "starting"  # starting | running | exited | failed
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None  # loop time at which the timeout kill is due
    sent: bool = False  # guest-exec was written: qemu-ga may have spawned it
    kill_done: bool = False  # the timeout kill ran (or cannot run)
    timed_out: bool = False
    exit: ExitInfo | None = None
    error: ErrorInfo | None = None
    spawned: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "failed")

    def mark_sent(self) -> None:
        self.sent = True

    def view(self, new: bool = False) -> AgentExec:
        return AgentExec(
            exec_id=self.exec_id,
            state="running" if self.state == "starting" else self.state,
            pid=self.pid,
            tty=False,
            container_id="",
            meta=self.meta,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit=self.exit,
            error=self.error,
            new=new,
        )


def unsupported_reason(config: ExecConfig) -> str | None:
    """Why qemu-ga cannot run ``config`` (``None``: it can; ``working_dir`` is probed)."""
    if config.tty:
        return "qemu-ga cannot allocate a TTY"
    if config.attach_stdin:
        return (
            "qemu-ga cannot stream stdin: guest-exec takes the whole input up front "
            "(attach_stdin is unsupported)"
        )
    if config.container_id:
        return "qemu-ga execs only in the guest itself (container_id must be empty)"
    if config.user is not None:
        return "qemu-ga cannot switch users: commands run as qemu-ga's own user"
    if config.privileged:
        return "qemu-ga cannot run privileged execs: commands get qemu-ga's own privileges"
    return None


def exec_environment(env: list[str]) -> list[str]:
    """The complete environment of an exec: a default PATH plus the configured entries."""
    if any(entry.startswith("PATH=") for entry in env):
        return list(env)
    return [f"PATH={DEFAULT_PATH}", *env]


def guest_exec_args(config: ExecConfig, input_data: bytes | None) -> dict[str, Any]:
    """The ``guest-exec`` arguments for an exec.

    ``input-data`` is always sent, empty if need be: stdin is then a pipe at
    end of file, never whatever qemu-ga's own stdin happens to be.
    """
    args: dict[str, Any] = {
        "path": config.cmd[0],
        "arg": config.cmd[1:],
        "env": exec_environment(config.env),
        "input-data": base64.b64encode(input_data or b"").decode("ascii"),
        "capture-output": True,
    }
    if config.working_dir is not None:
        args["cwd"] = config.working_dir
    return args


def start_failure(desc: str) -> ErrorInfo:
    """A ``guest-exec`` error as a failed start, with Docker's 126/127 conventions.

    glib (which qemu-ga spawns with) words these as ``Failed to execute child
    process "x" (No such file or directory)`` / ``(Permission denied)``.
    """
    message = f"qemu-ga: {desc}"[:4096]
    if "Failed to execute child process" in desc:
        if "(No such file or directory)" in desc:
            return ErrorInfo(code=ErrorCode.COMMAND_NOT_FOUND, message=message, exit_code=127)
        if "(Permission denied)" in desc:
            return ErrorInfo(code=ErrorCode.COMMAND_NOT_EXECUTABLE, message=message, exit_code=126)
    return ErrorInfo(code=ErrorCode.START_FAILED, message=message)


@dataclass(frozen=True, slots=True)
class Streams:
    """What qemu-ga captured of an exec, decoded (at most 16 MiB per stream)."""

    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Streams:
        return cls(
            decode_output(status.get("out-data")),
            decode_output(status.get("err-data")),
            bool(status.get("out-truncated")),
            bool(status.get("err-truncated")),
        )


def decode_output(encoded: object) -> bytes:
    try:
        return base64.b64decode(encoded if isinstance(encoded, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentProtocolError("qemu-ga sent output that is not valid base64") from exc


def capped(data: bytes, truncated: bool, limit: int, attached: bool) -> tuple[bytes, int]:
    """One stream capped at ``limit``; the rest counts as dropped.

    qemu-ga itself stops capturing at 16 MiB and only says ``truncated``:
    how much it threw away is unknown, so that adds 1 to the dropped count.
    """
    if not attached:
        return b"", 0
    dropped = max(0, len(data) - limit) + (1 if truncated else 0)
    return data[:limit], dropped


def exit_from_status(
    status: dict[str, Any], streams: Streams, entry: _Exec, finished_at: float
) -> ExitInfo:
    """An :class:`ExitInfo` from a ``guest-exec-status`` answer with ``exited: true``."""
    config = entry.config
    limit = config.output_limit
    stdout, stdout_dropped = capped(
        streams.stdout, streams.stdout_truncated, limit, config.attach_stdout
    )
    stderr, stderr_dropped = capped(
        streams.stderr, streams.stderr_truncated, limit, config.attach_stderr
    )
    signum = status.get("signal")
    if isinstance(signum, int) and signum > 0:
        exit_code, sig = min(128 + signum, 255), signal_name(signum)
    else:
        code = status.get("exitcode", 0)
        exit_code, sig = (code if isinstance(code, int) and 0 <= code <= 255 else 255), None
    return ExitInfo(
        exit_code=exit_code,
        signal=sig,
        timed_out=entry.timed_out,
        started_at=_utc(entry.started_at),
        finished_at=_utc(finished_at),
        stdout=stdout,
        stderr=stderr,
        stdout_dropped=stdout_dropped,
        stderr_dropped=stderr_dropped,
    )


def output_chunks(config: ExecConfig, streams: Streams) -> list[tuple[str, int, bytes]]:
    """``stream_output`` emulated at exit: the attached captures as (stream, seq, chunk)."""
    chunks: list[tuple[str, int, bytes]] = []
    for name, data, attached in (
        ("stdout", streams.stdout, config.attach_stdout),
        ("stderr", streams.stderr, config.attach_stderr),
    ):
        if attached:
            pieces = (data[i : i + OUTPUT_CHUNK] for i in range(0, len(data), OUTPUT_CHUNK))
            chunks.extend((name, seq, piece) for seq, piece in enumerate(pieces))
    return chunks


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def process_identity(stat: bytes) -> str:
    """``pid@starttime`` from a ``/proc/<pid>/stat`` line: one process, one boot."""
    pid = stat.split(b" ", 1)[0].decode("ascii", "replace")
    fields = stat.rpartition(b")")[2].split()
    start = fields[19].decode("ascii", "replace") if len(fields) > 19 else "?"
    return f"{pid}@{start}"


def restart_cause(old: str, new: str) -> str:
    """Why the agent identity changed: the kernel boot id part tells a reboot apart."""
    if old.partition("/")[0] != new.partition("/")[0]:
        return f"the guest rebooted (boot {old} -> {new})"
    return f"qemu-ga restarted (instance {old} -> {new})"


# -- the connection ---------------------------------------------------------


class QgaConnection(SupervisedConnection[_Session]):
    """An :class:`AgentConnection` to one qemu-ga on a Unix socket (``qga+unix://``)."""

    kind = "qemu-ga"

    def __init__(
        self,
        name: str,
        path: str,
        *,
        call_timeout: float = 10.0,
        heartbeat: float = 2.0,
        max_backoff: float = 2.0,
        poll_initial: float = 0.0005,
        poll_max: float = 0.05,
    ) -> None:
        super().__init__(
            name, call_timeout=call_timeout, heartbeat=heartbeat, max_backoff=max_backoff
        )
        self.path = path
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._drain_timeout = min(call_timeout, 2.0)
        self._execs: dict[str, _Exec] = {}
        # Used as boot id when qemu-ga's file commands are blocked: then a
        # restarted qemu-ga is noticed per pid, never as a boot change.
        self._fallback_boot_id = f"qga-{uuid.uuid4().hex}"
        self._cwd_supported: bool | None = None  # None: not probed yet
        self._unusable: str | None = None  # why this qemu-ga cannot run execs at all

    async def _before_close(self) -> None:
        """Running guest processes are left alone; pollers and callbacks stop first
        (the session drains only once no call reads)."""
        for entry in self._execs.values():
            if entry.poller is not None:
                entry.poller.cancel()
                self._tasks.add(entry.poller)

    # -- connection lifecycle -------------------------------------------

    async def _connect(self) -> tuple[_Session, AgentInfo]:
        """Dial, resynchronise, check qemu-ga, then settle the execs of the last session."""
        try:
            async with asyncio.timeout(self._call_timeout):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(exc.strerror or str(exc)) from exc
        session = _Session(reader, writer)
        try:
            # A second client waits in qemu-ga's backlog without an answer: the
            # sync timing out is how we notice another worker holds the agent.
            await session.sync(self._call_timeout)
            info = await self._handshake(session)
            boot_changed = self._info is not None and self._info.boot_id != info.boot_id
            await self._reconcile(session, boot_changed, info)
        except Unsupported as exc:
            # Reconfiguring qemu-ga (--block-rpcs) needs its restart: retried slowly.
            self._unusable = exc.message
            await session.aclose(self._drain_timeout)
            raise
        except BaseException:
            await session.aclose(self._drain_timeout)
            raise
        self._unusable = None
        return session, info

    async def _handshake(self, session: _Session) -> AgentInfo:
        guest = await session.call("guest-info", timeout=self._call_timeout)
        version = str(guest.get("version", "?"))
        enabled = {
            str(c.get("name"))
            for c in guest.get("supported_commands", [])
            if isinstance(c, dict) and c.get("enabled")
        }
        missing = [c for c in REQUIRED_COMMANDS if c not in enabled]
        if missing:
            raise Unsupported(
                f"qemu-ga {version} at {self.path} has {', '.join(missing)} disabled or missing "
                "(see its --block-rpcs/--allow-rpcs); execbus needs guest-exec and "
                "guest-exec-status"
            )
        self._cwd_supported = await self._probe_cwd(session)
        caps = {"signal", "timeout", "env"} | ({"cwd"} if self._cwd_supported else set())
        return AgentInfo(
            boot_id=await self._boot_identity(session, enabled),
            version=1,
            agent_version=f"qemu-ga {version}",
            capabilities=frozenset(caps),
            hostname=await self._hostname(session, enabled),
        )

    async def _probe_cwd(self, session: _Session) -> bool:
        """Does this qemu-ga's guest-exec take ``cwd``? (Newer versions do.)

        The probe names a path that cannot exist, so it never spawns anything:
        an old qemu-ga rejects the unknown parameter, a new one fails the spawn.
        """
        try:
            await session.call(
                "guest-exec", {"path": CWD_PROBE_PATH, "cwd": "/"}, timeout=self._call_timeout
            )
        except QgaCommandError as exc:
            return "'cwd'" not in exc.desc
        return True  # pragma: no cover - the probe path never exists

    async def _boot_identity(self, session: _Session, enabled: set[str]) -> str:
        """The guest's kernel boot id and qemu-ga's own pid@starttime.

        It changes when the guest reboots or qemu-ga restarts: exactly when
        qemu-ga has forgotten every pid we know. Read through guest-file-*
        (``/proc/self`` is qemu-ga itself); a per-object random id if blocked.
        """
        if not FILE_COMMANDS.issubset(enabled):
            return self._fallback_boot_id
        try:
            kernel = await self._read_guest_file(session, "/proc/sys/kernel/random/boot_id")
            stat = await self._read_guest_file(session, "/proc/self/stat")
        except QgaCommandError as exc:
            log.info("qemu-ga %s: no boot id (%s); using a random one", self.name, exc.desc)
            return self._fallback_boot_id
        return f"{kernel.decode('ascii', 'replace').strip()}/{process_identity(stat)}"

    async def _read_guest_file(self, session: _Session, path: str) -> bytes:
        timeout = self._call_timeout
        handle = await session.call("guest-file-open", {"path": path}, timeout=timeout)
        try:
            read = await session.call(
                "guest-file-read", {"handle": handle, "count": 4096}, timeout=timeout
            )
        finally:
            with contextlib.suppress(QgaCommandError):
                await session.call("guest-file-close", {"handle": handle}, timeout=timeout)
        return base64.b64decode(str(read.get("buf-b64", "")))

    async def _hostname(self, session: _Session, enabled: set[str]) -> str:
        if "guest-get-host-name" not in enabled:
            return ""
        try:
            result = await session.call("guest-get-host-name", timeout=self._call_timeout)
        except QgaCommandError:
            return ""
        return str(result.get("host-name", ""))

    async def _reconcile(self, session: _Session, boot_changed: bool, info: AgentInfo) -> None:
        """Settle every exec that was running when the last session ended.

        Done before the connection is ready, so no new exec can be spawned
        (and take a reused pid) before the old pids are checked.
        """
        old = self._info.boot_id if self._info else ""
        for entry in [e for e in self._execs.values() if e.state == "running"]:
            if boot_changed:
                self._lose(
                    entry,
                    f"{restart_cause(old, info.boot_id)}: the new qemu-ga does not know pid "
                    f"{entry.pid}, so the exit status and output are lost",
                )
                continue
            try:
                status = await session.call(
                    "guest-exec-status", {"pid": entry.pid}, timeout=self._call_timeout
                )
            except QgaCommandError as exc:
                self._lose(entry, self._forgotten(entry, exc))
                continue
            if status.get("exited"):
                self._complete(entry, status)

    async def _session_ended(self, session: _Session) -> str:
        await session.closed.wait()
        return session.reason

    async def _ping(self, session: _Session) -> None:
        # While idle too: a dead qemu-ga is otherwise noticed only by the next call.
        await session.call("guest-ping", timeout=self._heartbeat * 2)

    def _abort(self, session: _Session, reason: str) -> None:
        session.abort(reason)

    async def _close_session(self, session: _Session, reason: str) -> None:
        await session.aclose(self._drain_timeout)

    # -- commands ---------------------------------------------------------

    async def _call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """One command on the live session, waiting up to the call timeout for one."""
        session = await self._live_session()
        return await session.call(command, arguments, timeout=self._call_timeout, on_sent=on_sent)

    async def start(
        self,
        exec_id: str,
        config: ExecConfig,
        meta: dict[str, Any],
        *,
        input_data: bytes | None = None,
    ) -> AgentExec:
        """Spawn with ``guest-exec`` (idempotent by ``exec_id``).

        ``input_data`` (an extension for direct callers; the worker has no
        such field) is the whole stdin, given up front.
        """
        existing = self._execs.get(exec_id)
        if existing is not None:
            return await self._existing(existing)
        self._check_startable(config, input_data)
        args = guest_exec_args(config, input_data)
        entry = _Exec(exec_id, config, meta)
        self._execs[exec_id] = entry
        try:
            result = await self._call("guest-exec", args, on_sent=entry.mark_sent)
        except QgaCommandError as exc:
            return self._start_refused(entry, exc)
        except BaseException as exc:
            if not entry.sent:
                del self._execs[exec_id]  # qemu-ga never saw it: a retry is safe
                entry.spawned.set()
                raise
            self._start_lost(entry, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return entry.view(new=True)
        self._mark_running(entry, int(result["pid"]))
        return entry.view(new=True)

    async def _existing(self, entry: _Exec) -> AgentExec:
        """A repeated start: the recorded outcome, never a second process."""
        try:
            async with asyncio.timeout(self._call_timeout):
                await entry.spawned.wait()
        except TimeoutError:
            raise AgentUnavailable(f"exec {entry.exec_id!r} is still being started") from None
        if entry.state == "starting":  # that start gave up before qemu-ga saw it
            raise AgentUnavailable(f"exec {entry.exec_id!r} did not start; try again")
        return entry.view(new=False)

    def _check_startable(self, config: ExecConfig, input_data: bytes | None) -> None:
        reason = unsupported_reason(config)
        if reason is None and config.working_dir is not None and self._cwd_supported is False:
            reason = self._no_cwd_reason()
        if reason is None and not self.connected and self._unusable is not None:
            reason = self._unusable
        if reason is not None:
            raise Unsupported(reason)
        if input_data is not None and len(input_data) > MAX_INPUT_DATA:
            raise LimitExceeded(
                f"qemu-ga input data is limited to {MAX_INPUT_DATA} bytes, got {len(input_data)}"
            )

    def _no_cwd_reason(self) -> str:
        version = self._info.agent_version if self._info else "qemu-ga"
        return (
            f"{version} cannot set a working directory: its guest-exec has no 'cwd' "
            "argument (newer qemu-ga versions have it)"
        )

    def _start_refused(self, entry: _Exec, exc: QgaCommandError) -> AgentExec:
        """qemu-ga answered guest-exec with an error: nothing was spawned."""
        if "'cwd'" in exc.desc and "unexpected" in exc.desc:
            self._cwd_supported = False
            del self._execs[entry.exec_id]
            entry.spawned.set()
            raise Unsupported(self._no_cwd_reason()) from exc
        entry.error = start_failure(exc.desc)
        self._settle(entry, "failed", notify=False)  # the start's answer carries it
        return entry.view(new=True)

    def _start_lost(self, entry: _Exec, exc: BaseException) -> None:
        """guest-exec was sent but its answer lost: it may have run, so never resend it."""
        why = "the call was cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
        entry.error = ErrorInfo(
            code=ErrorCode.AGENT_LOST,
            message=(
                f"the answer to guest-exec was lost ({why}); the command may have started "
                "in the guest, but its pid is unknown, so it is not started again"
            )[:4096],
        )
        self._settle(entry, "failed", notify=False)

    def _mark_running(self, entry: _Exec, pid: int) -> None:
        entry.pid = pid
        entry.started_at = time.time()
        entry.state = "running"
        if entry.config.timeout is not None:
            entry.deadline = asyncio.get_running_loop().time() + entry.config.timeout
        entry.spawned.set()
        entry.poller = asyncio.create_task(self._poll(entry), name=f"qga-poll-{entry.exec_id}")

    # -- completion ---------------------------------------------------------

    async def _poll(self, entry: _Exec) -> None:
        """Poll ``guest-exec-status`` until the exec ends; kill it when its time is up."""
        delay = self._poll_initial
        while not entry.finished:
            try:
                status: dict[str, Any] | None = await self._call(
                    "guest-exec-status", {"pid": entry.pid}
                )
            except QgaCommandError as exc:
                self._lose(entry, self._forgotten(entry, exc))
                return
            except AgentError:
                status = None  # not connected; _reconcile or the next round settles it
            if entry.finished:
                return
            if status is not None and status.get("exited"):
                self._complete(entry, status)
                return
            if status is not None and self._overdue(entry):
                await self._kill_overdue(entry)
            await asyncio.sleep(self._next_sleep(entry, delay))
            delay = min(delay * 2, self._poll_max)

    def _overdue(self, entry: _Exec) -> bool:
        loop_time = asyncio.get_running_loop().time()
        return entry.deadline is not None and not entry.kill_done and loop_time >= entry.deadline

    def _next_sleep(self, entry: _Exec, delay: float) -> float:
        """The backoff delay, shortened so a timeout kill is not late."""
        if entry.deadline is None or entry.kill_done:
            return delay
        return max(0.0, min(delay, entry.deadline - asyncio.get_running_loop().time()))

    async def _kill_overdue(self, entry: _Exec) -> None:
        assert entry.pid is not None
        try:
            await self._signal_tree(entry.pid, int(signal.SIGKILL))
        except AgentUnavailable as exc:
            log.warning("exec %s: timeout kill failed, will retry: %s", entry.exec_id, exc)
            return
        except Conflict:
            entry.kill_done = True  # it was gone already: it ended on its own
            return
        except ExecbusError as exc:
            entry.kill_done = True
            log.error("exec %s: cannot enforce its timeout: %s", entry.exec_id, exc)
            return
        entry.kill_done = True
        entry.timed_out = True

    def _complete(self, entry: _Exec, status: dict[str, Any]) -> None:
        if entry.finished:
            return
        finished_at = time.time()
        try:
            streams = Streams.from_status(status)
        except AgentProtocolError as exc:
            entry.error = ErrorInfo(code=ErrorCode.INTERNAL, message=exc.message)
            entry.finished_at = finished_at
            self._settle(entry, "failed")
            return
        entry.exit = exit_from_status(status, streams, entry, finished_at)
        entry.finished_at = finished_at
        chunks = output_chunks(entry.config, streams) if entry.config.stream_output else []
        self._settle(entry, "exited", chunks)

    def _forgotten(self, entry: _Exec, exc: QgaCommandError) -> str:
        return (
            f"qemu-ga no longer knows pid {entry.pid} ({exc.desc}): it restarted, or its "
            "answer with the exit status was lost with the connection; the exit status and "
            "output are lost (the process may still run, orphaned, in the guest)"
        )

    def _lose(self, entry: _Exec, message: str) -> None:
        if entry.finished:
            return
        entry.error = ErrorInfo(code=ErrorCode.AGENT_LOST, message=message[:4096])
        entry.finished_at = time.time()
        self._settle(entry, "failed")

    def _settle(
        self,
        entry: _Exec,
        state: str,
        chunks: list[tuple[str, int, bytes]] | None = None,
        notify: bool = True,
    ) -> None:
        """Finish an exec; the listener hears of it in a task (never awaited here)."""
        entry.state = state
        entry.spawned.set()
        entry.done.set()
        if notify and self._listener is not None:
            self._spawn(self._deliver(self._listener, entry.view(), chunks or []))

    async def _deliver(
        self, listener: AgentListener, state: AgentExec, chunks: list[tuple[str, int, bytes]]
    ) -> None:
        """Output chunks first, then the exit: followers end their stream at the exit."""
        for stream, seq, data in chunks:
            await listener.on_output(self.name, state.exec_id, stream, seq, data)
        await listener.on_exit(self.name, state)

    # -- signals ------------------------------------------------------------

    async def _signal_tree(self, pid: int, signum: int) -> None:
        """Signal ``pid`` and its descendants from inside the guest.

        Raises :class:`Conflict` when the process is gone already.
        """
        argv = ["/bin/sh", "-c", KILL_TREE_SCRIPT, HELPER_NAME, str(signum), str(pid)]
        try:
            status = await self._run_helper(argv)
        except QgaCommandError as exc:
            if exc.command != "guest-exec":
                raise
            log.info("qemu-ga %s: no /bin/sh (%s); signalling the pid only", self.name, exc.desc)
            try:
                status = await self._run_helper(["kill", f"-{signum}", str(pid)])
            except QgaCommandError as exc2:
                if exc2.command != "guest-exec":
                    raise
                raise Unsupported(
                    "qemu-ga cannot signal processes, and the guest has neither /bin/sh nor "
                    f"kill to do it: {exc2.desc}"
                ) from exc2
        if status.get("exitcode") != 0:
            raise Conflict(f"pid {pid} is not running in the guest any more")

    async def _run_helper(self, argv: list[str]) -> dict[str, Any]:
        """Run a short helper through guest-exec and collect its status (qemu-ga keeps
        every child's status until it is read, so it is always read)."""
        args = {"path": argv[0], "arg": argv[1:], "capture-output": True, "input-data": ""}
        pid = int((await self._call("guest-exec", args))["pid"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._call_timeout
        delay = self._poll_initial
        while True:
            status: dict[str, Any] = await self._call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status
            if loop.time() >= deadline:
                raise AgentUnavailable(f"the signal helper (pid {pid}) did not finish in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_max)

    # -- the rest of the interface --------------------------------------

    def _get(self, exec_id: str) -> _Exec:
        entry = self._execs.get(exec_id)
        if entry is None:
            raise NotFound(f"qemu-ga {self.name!r} has no exec {exec_id!r}")
        return entry

    async def inspect(self, exec_id: str) -> AgentExec:
        return self._get(exec_id).view()

    async def wait(self, exec_id: str) -> AgentExec:
        entry = self._get(exec_id)
        await entry.done.wait()
        return entry.view()

    async def signal(self, exec_id: str, signal: str | int) -> None:
        """Emulated: ``kill`` run in the guest through guest-exec (see :func:`_signal_tree`)."""
        entry = self._get(exec_id)
        try:
            signum = parse_signal(signal)
        except AgentRequestError as exc:
            raise InvalidRequest(exc.message) from None
        if entry.state != "running" or entry.pid is None:
            raise Conflict(f"exec {exec_id!r} is not running")
        await self._signal_tree(entry.pid, signum)

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        raise Unsupported("qemu-ga cannot resize a TTY: it cannot allocate one")

    async def write_stdin(self, exec_id: str, data: bytes, close: bool) -> None:
        raise Unsupported("qemu-ga cannot stream stdin: guest-exec takes the whole input up front")

    async def list(self) -> list[AgentExec]:
        return [e.view() for e in self._execs.values() if e.state != "starting"]

    async def ack(self, exec_id: str) -> None:
        """Forget a finished exec (unknown ids are already forgotten)."""
        entry = self._execs.get(exec_id)
        if entry is None:
            return
        if not entry.finished:
            raise Conflict(f"exec {exec_id!r} has not finished")
        del self._execs[exec_id]

    async def ping(self) -> None:
        await self._call("guest-ping")
