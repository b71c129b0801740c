"""One raw client of the agent protocol, for tests that talk to an agent frame by frame.

``docs/agent-protocol.md`` is the specification; the framing is
:mod:`execbus.agent.protocol`'s. :class:`AgentPeer` connects to an agent's
Unix or TCP (optionally TLS) socket, says ``hello`` (or not: a test of the
handshake sends what it likes), sends requests and matches responses by
``id`` (several may be outstanding), queues events and the frames that
answer no request (``re: null`` errors, such as a refused connection), and
notices when the agent closes the connection. :func:`raw_frame` and
:func:`announce` build frames the protocol module would refuse to build
(an unknown kind, a header that is not JSON, a length prefix alone).

The worker's production client is ``execbus.connections.agent_client``;
this one exists so tests can do what a well-behaved client never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import struct
import uuid
from collections.abc import Sequence
from typing import Any

from execbus.agent.protocol import KIND_MSG, Frame, FrameError, encode_frame, read_frame

__all__ = ["MAX_FRAME", "AgentPeer", "AgentRequestError", "announce", "raw_frame", "result_of"]

MAX_FRAME = 64 * 1024 * 1024


class AgentRequestError(Exception):
    """The agent answered ``ok: false`` (``code`` and ``message`` of its error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def raw_frame(header: bytes, payload: bytes = b"", kind: int = KIND_MSG) -> bytes:
    """A frame from raw parts: any ``kind``, any header bytes (JSON or not)."""
    prefix = struct.pack(">IBI", 5 + len(header) + len(payload), kind, len(header))
    return prefix + header + payload


def announce(length: int) -> bytes:
    """A length prefix alone: the start of a frame of ``length`` bytes."""
    return struct.pack(">I", length)


def result_of(frame: Frame) -> dict[str, Any]:
    """The ``result`` of a response frame, or :class:`AgentRequestError`."""
    header = frame.header
    if not header.get("ok"):
        error = header.get("error") or {}
        raise AgentRequestError(str(error.get("code")), str(error.get("message")))
    result: dict[str, Any] = header["result"]
    return result


def split_captures(state: dict[str, Any], payload: bytes) -> tuple[bytes, bytes]:
    """The captured stdout and stderr in the payload of an exec's state."""
    exit_info = state.get("exit") or {}
    n = exit_info.get("stdout_len", 0)
    assert len(payload) == n + exit_info.get("stderr_len", 0), "captures and payload differ"
    return payload[:n], payload[n:]


class AgentPeer:
    """One connection to an agent: requests by id, events and unsolicited frames queued."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: asyncio.Queue[Frame] = asyncio.Queue()
        self.unmatched: asyncio.Queue[Frame | None] = asyncio.Queue()  # None: closed
        self.hello_result: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._closed = asyncio.get_running_loop().create_future()
        self._gate = asyncio.Event()
        self._gate.set()
        self._task = asyncio.ensure_future(self._read_loop())

    # -- connecting ----------------------------------------------------------

    @classmethod
    async def unix(
        cls,
        path: str,
        *,
        hello: bool = True,
        token: str | None = None,
        versions: Sequence[int] = (1,),
        limit: int = MAX_FRAME,
    ) -> AgentPeer:
        """Connect to ``unix://path``; ``hello``: and complete the handshake."""
        reader, writer = await asyncio.open_unix_connection(path, limit=limit)
        return await cls._greeted(reader, writer, hello, token, versions)

    @classmethod
    async def tcp(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        hello: bool = True,
        token: str | None = None,
        versions: Sequence[int] = (1,),
    ) -> AgentPeer:
        """Connect to ``tcp://host:port`` (``tls``: ``tls://``)."""
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_FRAME)
        return await cls._greeted(reader, writer, hello, token, versions)

    @classmethod
    async def _greeted(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: bool,
        token: str | None,
        versions: Sequence[int],
    ) -> AgentPeer:
        peer = cls(reader, writer)
        if hello:
            try:
                await peer.hello(token, versions)
            except BaseException:
                await peer.close()
                raise
        return peer

    async def hello(
        self, token: str | None = None, versions: Sequence[int] = (1,), client: str = "tests"
    ) -> dict[str, Any]:
        """The handshake; its result is also kept as :attr:`hello_result`."""
        self.hello_result = await self.call(
            "hello", versions=list(versions), token=token, client=client
        )
        return self.hello_result

    # -- reading -------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._gate.wait()
                frame = await read_frame(self.reader, MAX_FRAME)
                if frame is None:
                    break
                self._dispatch(frame)
        except (ConnectionError, asyncio.IncompleteReadError, FrameError, ssl.SSLError, OSError):
            pass
        finally:
            if not self._closed.done():
                self._closed.set_result(None)
            self.unmatched.put_nowait(None)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the agent closed the connection"))

    def _dispatch(self, frame: Frame) -> None:
        header = frame.header
        if "event" in header:
            self.events.put_nowait(frame)
        elif header.get("re") in self._pending:
            self._pending.pop(header["re"]).set_result(frame)
        else:
            self.unmatched.put_nowait(frame)

    def pause_reading(self) -> None:
        """Stop reading frames (after the current one) so the agent's sends back up."""
        self._gate.clear()

    def resume_reading(self) -> None:
        self._gate.set()

    # -- requests ------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (see :func:`raw_frame`, :func:`announce`)."""
        self.writer.write(data)

    async def request(self, op: str, payload: bytes = b"", **args: Any) -> Frame:
        """Send one request and return its whole response frame."""
        rid = next(self._ids)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.writer.write(encode_frame({"id": rid, "op": op, **args}, payload))
        await self.writer.drain()
        return await fut

    async def call(self, op: str, payload: bytes = b"", **args: Any) -> dict[str, Any]:
        """Send one request; its result, or :class:`AgentRequestError`."""
        return result_of(await self.request(op, payload, **args))

    async def run(self, cmd: list[str], **args: Any) -> tuple[dict[str, Any], bytes, bytes]:
        """Start an exec and wait for it: ``(state, stdout, stderr)``."""
        exec_id = args.pop("exec_id", None) or uuid.uuid4().hex
        started = await self.call("start", exec_id=exec_id, cmd=cmd, **args)
        assert started["new"], f"exec id {exec_id} was already known"
        frame = await self.request("wait", exec_id=exec_id)
        state = result_of(frame)
        return (state, *split_captures(state, frame.payload))

    # -- what arrives unasked --------------------------------------------------

    async def next_event(self, timeout: float = 10) -> Frame:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def unsolicited(self, timeout: float = 10) -> Frame | None:
        """The next frame that answers no request (None: the agent closed the connection)."""
        frame = await asyncio.wait_for(self.unmatched.get(), timeout)
        if frame is None:
            self.unmatched.put_nowait(None)  # closed stays closed
        return frame

    async def wait_closed(self, timeout: float = 10) -> None:
        """Until the agent has closed the connection (TimeoutError otherwise)."""
        await asyncio.wait_for(asyncio.shield(self._closed), timeout)

    async def closed(self, timeout: float = 10) -> bool:
        """True once the agent has closed the connection; False if it has not in time."""
        try:
            await self.wait_closed(timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await self.writer.wait_closed()
