"""The worker's client for the execbus agent protocol (``docs/agent-protocol.md``).

One :class:`AgentClient` keeps one multiplexed connection to one agent: it
dials, handshakes, subscribes to events (``watch``) and reconnects in the
background with backoff; a heartbeat (``ping``) notices an agent that
stopped answering (the lifecycle and the link state are
:class:`~execbus.connections.supervised.SupervisedConnection`'s). A call while
the link is down waits briefly for it, then fails with the reason; a call that
times out on a live link raises :class:`~execbus.errors.AgentUnavailable`,
which the retry layer above may retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from execbus.agent import errors as codes
from execbus.agent.protocol import PROTOCOL_VERSION, FrameError, encode_frame, read_frame
from execbus.connections.base import AgentExec, AgentInfo
from execbus.connections.supervised import SupervisedConnection
from execbus.errors import (
    AgentAuthFailed,
    AgentDisconnected,
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    ErrorCode,
    agent_error,
)
from execbus.wire.config import ExecConfig
from execbus.wire.records import ErrorInfo, ExitInfo

log = logging.getLogger("execbus.agent_client")

Dialer = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
CLIENT_NAME = "execbus-worker/0.1"
MAX_FRAME = 64 * 1024 * 1024
_KNOWN_CODES = frozenset(ErrorCode)


def start_failure_info(err: dict[str, Any]) -> ErrorInfo:
    """An agent's start failure as a wire error; a code execbus does not know (a
    third-party agent's) becomes ``start_failed`` and is named in the message."""
    code = str(err.get("code", ErrorCode.START_FAILED))[:64]
    message = str(err.get("message", ""))
    exit_code = err.get("exit_code")
    if code not in _KNOWN_CODES:
        message = f"{message} (agent code {code!r})"
        code = ErrorCode.START_FAILED
    return ErrorInfo(
        code=code,
        message=message[:4096],
        exit_code=exit_code if isinstance(exit_code, int) else None,
    )


def decode_exec(state: dict[str, Any], payload: bytes = b"") -> AgentExec:
    """Build an :class:`AgentExec` from an exec-state header and its capture payload."""
    exit_info = None
    if state.get("exit"):
        exit_info = _decode_exit(state, payload)
    error = None
    if state.get("error"):
        error = start_failure_info(state["error"])
    return AgentExec(
        exec_id=state["exec_id"],
        state=state["state"],
        pid=state.get("pid"),
        tty=bool(state.get("tty", False)),
        container_id=state.get("container_id") or "",
        meta=state.get("meta") or {},
        started_at=state.get("started_at"),
        finished_at=state.get("finished_at"),
        exit=exit_info,
        error=error,
        new=bool(state.get("new", False)),
    )


def _decode_exit(state: dict[str, Any], payload: bytes) -> ExitInfo:
    from execbus.registry.records import utc

    ex = state["exit"]
    out_len = int(ex.get("stdout_len", 0))
    err_len = int(ex.get("stderr_len", 0))
    return ExitInfo(
        exit_code=ex["exit_code"],
        signal=ex.get("signal"),
        timed_out=bool(ex.get("timed_out", False)),
        started_at=utc(state.get("started_at")),
        finished_at=utc(state.get("finished_at")),
        stdout=payload[:out_len],
        stderr=payload[out_len : out_len + err_len],
        stdout_dropped=int(ex.get("stdout_dropped", 0)),
        stderr_dropped=int(ex.get("stderr_dropped", 0)),
    )


def start_args(exec_id: str, config: ExecConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``start`` request arguments for an exec config."""
    size = config.console_size
    return {
        "exec_id": exec_id,
        "cmd": config.cmd,
        "env": config.env,
        "working_dir": config.working_dir,
        "user": config.user,
        "tty": config.tty,
        "console_size": None if size is None else {"width": size.width, "height": size.height},
        "stdin": config.attach_stdin,
        "attach_stdout": config.attach_stdout,
        "attach_stderr": config.attach_stderr,
        "stream_output": config.stream_output,
        "output_limit": config.output_limit,
        "timeout": config.timeout,
        "container_id": config.container_id,
        "privileged": config.privileged,
        "meta": meta,
    }


def handshake_error(agent: str, err: dict[str, Any]) -> AgentError:
    """Why the agent refused the handshake; a refused token is an authentication failure."""
    code, message = str(err.get("code", "?"))[:64], str(err.get("message", ""))[:512]
    if code == codes.UNAUTHORIZED:
        return AgentAuthFailed(f"agent {agent!r} refused our token ({message or code})")
    return AgentProtocolError(f"agent {agent!r} refused the handshake: {code}: {message}")


class _Session:
    """One live, handshaken connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self.write_lock = asyncio.Lock()
        self.ids = itertools.count(1)
        self.abort_reason = ""  # why we closed it ourselves (a missed heartbeat)

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        async with self.write_lock:
            self.writer.write(encode_frame(header, payload))
            await self.writer.drain()

    def fail_pending(self, reason: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(AgentUnavailable(reason))
        self.pending.clear()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class AgentClient(SupervisedConnection[_Session]):
    """An :class:`AgentConnection` to an execbus agent, over any byte stream."""

    kind = "agent"

    def __init__(
        self,
        name: str,
        dialer: Dialer,
        *,
        token: str | None = None,
        call_timeout: float = 10.0,
        heartbeat: float = 2.0,
        max_backoff: float = 2.0,
        closed_early: AgentError | None = None,
    ) -> None:
        super().__init__(
            name, call_timeout=call_timeout, heartbeat=heartbeat, max_backoff=max_backoff
        )
        self._dialer = dialer
        self._token = token
        # What it means when the agent hangs up before answering our hello (over
        # TLS 1.3, a refused client certificate shows only as that).
        self._closed_early = closed_early or AgentUnavailable(
            f"agent {name!r} closed the connection during the handshake"
        )

    # -- the session (SupervisedConnection's hooks) -----------------------

    async def _connect(self) -> tuple[_Session, AgentInfo]:
        async with asyncio.timeout(self._call_timeout):
            reader, writer = await self._dialer()
            session = _Session(reader, writer)
            try:
                info = await self._handshake(session)
            except BaseException:
                await session.close()
                raise
        return session, info

    async def _handshake(self, session: _Session) -> AgentInfo:
        hello = {"id": 0, "op": "hello", "versions": [PROTOCOL_VERSION], "token": self._token}
        hello["client"] = CLIENT_NAME
        await session.send(hello)
        frame = await read_frame(session.reader, MAX_FRAME)
        if frame is None:
            raise self._closed_early
        header = frame.header
        if not header.get("ok"):
            raise handshake_error(self.name, header.get("error") or {})
        result = header["result"]
        await session.send({"id": next(session.ids), "op": "watch"})
        return AgentInfo(
            boot_id=str(result.get("boot_id", "")),
            version=int(result.get("version", 1)),
            agent_version=str(result.get("agent_version", "")),
            capabilities=frozenset(result.get("capabilities", [])),
            hostname=str(result.get("hostname", "")),
        )

    async def _session_ended(self, session: _Session) -> str:
        return await self._read_loop(session)

    async def _ping(self, session: _Session) -> None:
        await self._request_on(session, "ping", {}, b"", self._heartbeat * 2)

    def _abort(self, session: _Session, reason: str) -> None:
        session.abort_reason = reason
        session.writer.close()

    async def _close_session(self, session: _Session, reason: str) -> None:
        session.fail_pending(reason)
        await session.close()

    async def _read_loop(self, session: _Session) -> str:
        while True:
            try:
                frame = await read_frame(session.reader, MAX_FRAME)
            except FrameError as exc:
                if exc.fatal:
                    return f"protocol error: {exc.message}"
                log.warning("agent %s sent a bad frame: %s", self.name, exc.message)
                continue
            except (OSError, ConnectionError) as exc:
                return session.abort_reason or f"connection error: {exc}"
            if frame is None:
                return session.abort_reason or "connection closed by the agent"
            await self._dispatch(session, frame.header, frame.payload)

    async def _dispatch(self, session: _Session, header: dict[str, Any], payload: bytes) -> None:
        if "re" in header:
            fut = session.pending.pop(header["re"], None) if header["re"] is not None else None
            if fut is not None and not fut.done():
                fut.set_result((header, payload))
            elif header["re"] is None:
                log.warning("agent %s reported: %s", self.name, header.get("error"))
            return
        event = header.get("event")
        if self._listener is None:
            return
        if event == "output":
            await self._listener.on_output(
                self.name, header["exec_id"], header["stream"], int(header["seq"]), payload
            )
        elif event == "exit":
            self._spawn(self._listener.on_exit(self.name, decode_exec(header, payload)))

    # -- requests ---------------------------------------------------------

    async def _request(
        self, op: str, args: dict[str, Any], payload: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        session = await self._live_session()
        return await self._request_on(session, op, args, payload, self._call_timeout)

    async def _request_on(
        self,
        session: _Session,
        op: str,
        args: dict[str, Any],
        payload: bytes,
        timeout: float | None,
    ) -> tuple[dict[str, Any], bytes]:
        req_id = next(session.ids)
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        session.pending[req_id] = fut
        try:
            await session.send({"id": req_id, "op": op, **args}, payload)
            async with asyncio.timeout(timeout):
                header, body = await fut
        except TimeoutError:
            raise AgentUnavailable(f"agent {self.name!r}: {op} timed out") from None
        except (OSError, ConnectionError) as exc:
            raise AgentUnavailable(f"agent {self.name!r}: {op} failed: {exc}") from exc
        finally:
            session.pending.pop(req_id, None)
        if not header.get("ok"):
            err = header.get("error") or {}
            raise agent_error(str(err.get("code", "internal")), str(err.get("message", "")))
        return header.get("result") or {}, body

    async def start(self, exec_id: str, config: ExecConfig, meta: dict[str, Any]) -> AgentExec:
        result, payload = await self._request("start", start_args(exec_id, config, meta))
        return decode_exec(result, payload)

    async def inspect(self, exec_id: str) -> AgentExec:
        result, payload = await self._request("inspect", {"exec_id": exec_id})
        return decode_exec(result, payload)

    async def wait(self, exec_id: str) -> AgentExec:
        session = self._session
        if session is None:
            raise AgentDisconnected(f"agent {self.name!r} is not connected: {self.last_error}")
        result, payload = await self._request_on(session, "wait", {"exec_id": exec_id}, b"", None)
        return decode_exec(result, payload)

    async def signal(self, exec_id: str, signal: str | int) -> None:
        await self._request("signal", {"exec_id": exec_id, "signal": signal})

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        await self._request("resize", {"exec_id": exec_id, "width": width, "height": height})

    async def write_stdin(self, exec_id: str, data: bytes, close: bool) -> None:
        await self._request("stdin", {"exec_id": exec_id, "close": close}, data)

    async def list(self) -> list[AgentExec]:
        result, _ = await self._request("list", {})
        return [decode_exec(state) for state in result.get("execs", [])]

    async def ack(self, exec_id: str) -> None:
        await self._request("ack", {"exec_id": exec_id})

    async def ping(self) -> None:
        await self._request("ping", {})
