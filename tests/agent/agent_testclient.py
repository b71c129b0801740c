"""A small asyncio client of the agent protocol for the agent's tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import Any

from execbus.agent.protocol import Frame, encode_frame, read_frame

MAX_FRAME = 64 * 1024 * 1024


class AgentRequestError(Exception):
    """The agent answered ``ok: false``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TestClient:
    """Sends requests, matches responses by id, queues events and ``re: null`` errors."""

    __test__ = False  # not a test class for pytest

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: asyncio.Queue[Frame] = asyncio.Queue()
        self.unmatched: asyncio.Queue[Frame] = asyncio.Queue()
        self.hello_result: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._closed = asyncio.get_running_loop().create_future()
        self._gate = asyncio.Event()
        self._gate.set()
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def unix(
        cls, path: str, *, hello: bool = True, limit: int = MAX_FRAME, **kw: Any
    ) -> TestClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=limit)
        return await cls._start(reader, writer, hello, kw)

    @classmethod
    async def tcp(cls, host: str, port: int, *, hello: bool = True, **kw: Any) -> TestClient:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_FRAME)
        return await cls._start(reader, writer, hello, kw)

    @classmethod
    async def _start(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: bool, kw: Any
    ) -> TestClient:
        client = cls(reader, writer)
        if hello:
            client.hello_result = await client.call(
                "hello", versions=kw.get("versions", [1]), token=kw.get("token"), client="tests"
            )
        return client

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._gate.wait()
                frame = await read_frame(self.reader, MAX_FRAME)
                if frame is None:
                    break
                self._dispatch(frame)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not self._closed.done():
                self._closed.set_result(None)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("agent closed the connection"))

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

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(self, op: str, payload: bytes = b"", **args: Any) -> Frame:
        """Send one request and return the whole response frame."""
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.writer.write(encode_frame({"id": rid, "op": op, **args}, payload))
        await self.writer.drain()
        return await fut

    async def call(self, op: str, payload: bytes = b"", **args: Any) -> dict[str, Any]:
        """Send one request; its result, or :class:`AgentRequestError`."""
        frame = await self.request(op, payload, **args)
        return result_of(frame)

    async def run(self, cmd: list[str], **args: Any) -> tuple[dict[str, Any], bytes, bytes]:
        """Start an exec and wait for it: ``(state, stdout, stderr)``."""
        exec_id = args.pop("exec_id", None) or uuid.uuid4().hex
        started = await self.call("start", exec_id=exec_id, cmd=cmd, **args)
        assert started["new"], f"exec id {exec_id} was already known"
        frame = await self.request("wait", exec_id=exec_id)
        state = result_of(frame)
        return (state, *split_captures(state, frame.payload))

    async def next_event(self, timeout: float = 10) -> Frame:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def wait_closed(self, timeout: float = 10) -> None:
        await asyncio.wait_for(asyncio.shield(self._closed), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def result_of(frame: Frame) -> dict[str, Any]:
    header = frame.header
    if not header.get("ok"):
        raise AgentRequestError(header["error"]["code"], header["error"]["message"])
    result: dict[str, Any] = header["result"]
    return result


def split_captures(state: dict[str, Any], payload: bytes) -> tuple[bytes, bytes]:
    """The captured stdout and stderr of an exec state's payload."""
    exit_info = state.get("exit") or {}
    n = exit_info.get("stdout_len", 0)
    assert len(payload) == n + exit_info.get("stderr_len", 0)
    return payload[:n], payload[n:]
