"""One client connection: handshake, multiplexed requests, serialized writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from execbus.agent import compat
from execbus.agent.context import CoreView
from execbus.agent.errors import (
    HANDSHAKE_REQUIRED,
    INTERNAL,
    INVALID,
    LIMIT_EXCEEDED,
    AgentError,
)
from execbus.agent.execs import RUNNING, Exec
from execbus.agent.ops import OPS, Handler
from execbus.agent.protocol import Frame, FrameError, encode_frame, read_frame
from execbus.agent.supervisor import Supervisor

log = logging.getLogger(__name__)

# A connection's send buffer above this is "congested": output streaming
# pauses until it drains below a quarter of it.
SEND_HIGH_WATER = 1024 * 1024
# Requests stop being read while the payloads of requests in progress plus
# their unsent responses exceed this (bounds memory per connection).
INFLIGHT_LIMIT = 64 * 1024 * 1024
CLOSE_TIMEOUT = 5.0
# Frames read before a successful hello (from a client not yet authenticated)
# may be at most this large.
HELLO_MAX_FRAME = 64 * 1024


class _Skip:
    """A frame was undecodable and has been answered; read the next one."""


_SKIP = _Skip()


class Session:
    """Serves one connection until it closes; see ``docs/agent-protocol.md``.

    It is the :class:`~execbus.agent.context.OpContext` of the requests it reads.
    """

    def __init__(
        self,
        core: CoreView,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        token: str | None,
        *,
        deadline: float | None = None,
        on_greeted: Callable[[], bool] | None = None,
    ) -> None:
        """``deadline``: the loop time by which hello must be done (default: the
        handshake timeout from now); ``on_greeted``: told when it is (False:
        the connection was dropped meanwhile)."""
        self.core = core
        self._reader = reader
        self._writer = writer
        self._token = token
        self._deadline = deadline
        self._on_greeted = on_greeted
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        # Execs this connection started that may still run (None: start in progress).
        self._execs: dict[str, Exec | None] = {}
        self.peer = str(writer.get_extra_info("peername") or "local")
        self.tls_subject = _cert_subject(writer.get_extra_info("peercert"))
        writer.transport.set_write_buffer_limits(high=SEND_HIGH_WATER)

    @property
    def supervisor(self) -> Supervisor:
        return self.core.supervisor

    @property
    def max_frame(self) -> int:
        return self.core.options.max_frame

    async def serve(self) -> None:
        """Handshake, then answer requests until the peer or the agent closes."""
        try:
            if await self._handshake():
                await self._serve_requests()
        except OSError:  # reset, timed out: the connection is gone
            pass
        finally:
            await self._teardown()

    async def _handshake(self) -> bool:
        """``hello`` within the handshake timeout, in frames of at most HELLO_MAX_FRAME."""
        timeout = self.core.options.handshake_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if self._deadline is None else self._deadline
        try:
            async with compat.timeout(max(0.0, deadline - loop.time())):
                return await self._greet()
        except TimeoutError:
            log.info("handshake timed out", extra={"peer": self.peer})
            self._error(None, HANDSHAKE_REQUIRED, f"no hello within {timeout:g} s")
            return False

    async def _greet(self) -> bool:
        while True:
            frame = await self._read(HELLO_MAX_FRAME)
            if frame is None:
                return False
            if isinstance(frame, _Skip):
                continue
            rid = _request_id(frame.header)
            if frame.header.get("op") != "hello":
                self._error(rid, HANDSHAKE_REQUIRED, "the first request must be hello")
                return False
            try:
                result = self.core.hello(frame.header, self._token)
            except AgentError as exc:
                log.info("handshake refused: %s", exc.message, extra={"peer": self.peer})
                self._error(rid, exc.code, exc.message)
                return False
            if self._on_greeted is not None and not self._on_greeted():
                return False  # dropped for a newer connection while saying hello
            self._reply(rid, result)
            extra = {"peer": self.peer, "client": str(frame.header.get("client"))[:64]}
            if self.tls_subject is not None:
                extra["tls_subject"] = self.tls_subject
            log.info("client connected", extra=extra)
            return True

    async def _serve_requests(self) -> None:
        while True:
            await self._room.wait()
            frame = await self._read()
            if frame is None:
                return
            if isinstance(frame, _Skip):
                continue
            header = frame.header
            rid = _request_id(header)
            if rid is None:
                self._error(None, INVALID, "a request needs an integer id")
                continue
            op = header.get("op")
            handler = OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                self._error(rid, INVALID, f"unknown op {header.get('op')!r}")
                continue
            self._hold(len(frame.payload))
            task = asyncio.ensure_future(self._run(handler, rid, frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, rid: int, frame: Frame) -> None:
        """Answer one request, then wait until the answer is on its way."""
        held = len(frame.payload)
        try:
            try:
                result, payload = await handler(self, frame.header, frame.payload)
            except AgentError as exc:
                self._error(rid, exc.code, exc.message)
            except Exception:
                op = frame.header.get("op")
                log.exception("request failed", extra={"op": op, "peer": self.peer})
                self._error(rid, INTERNAL, "internal error in the agent (see its log)")
            else:
                self._hold(len(payload))
                held += len(payload)
                self._reply(rid, result, payload)
            await self._drain()
        finally:
            self._release(held)

    async def _read(self, limit: int | None = None) -> Frame | _Skip | None:
        """The next frame; ``None`` to stop (end of stream or a fatal frame error)."""
        max_frame = self.core.options.max_frame
        try:
            return await read_frame(self._reader, min(limit or max_frame, max_frame))
        except FrameError as exc:
            log.info("bad frame: %s", exc.message, extra={"peer": self.peer, "code": exc.code})
            self.core.metrics.frame_rejected(exc.code)
            self._error(None, exc.code, exc.message)
            return None if exc.fatal else _SKIP

    # -- per-connection exec cap ------------------------------------------

    def claim_exec(self, exec_id: str) -> bool:
        """Reserve this connection a slot for a new exec (``--max-execs-per-connection``).

        False when no slot is needed: no cap, or an exec the agent already
        holds (an idempotent start never spawns). Raises ``limit_exceeded``.
        """
        cap = self.core.options.max_execs_per_connection
        if cap <= 0 or self.core.supervisor.knows(exec_id):
            return False
        for known, exe in list(self._execs.items()):
            if exe is not None and exe.state != RUNNING:
                del self._execs[known]
        if len(self._execs) >= cap:
            raise AgentError(
                LIMIT_EXCEEDED,
                f"this connection already runs {cap} execs (the agent's "
                "--max-execs-per-connection)",
            )
        self._execs[exec_id] = None
        return True

    def settle_exec(self, exec_id: str, exe: Exec | None) -> None:
        """The claimed start ended: keep the slot while ``exe`` runs."""
        if exe is None or exe.state != RUNNING:
            self._execs.pop(exec_id, None)
        else:
            self._execs[exec_id] = exe

    # -- flow control ----------------------------------------------------

    def _hold(self, size: int) -> None:
        self._inflight += size
        if self._inflight > INFLIGHT_LIMIT:
            self._room.clear()

    def _release(self, size: int) -> None:
        self._inflight -= size
        if self._inflight <= INFLIGHT_LIMIT:
            self._room.set()

    async def _drain(self) -> None:
        # A broken connection is noticed (and torn down) by the read loop.
        with contextlib.suppress(OSError):
            await self._writer.drain()

    # -- writing ---------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """Write one encoded frame now; True when the send buffer is congested.

        Each frame goes out in a single ``write`` call, so frames of
        concurrent requests and events never interleave.
        """
        if self._closed or self._writer.is_closing():
            return False
        self._writer.write(frame)
        return self._writer.transport.get_write_buffer_size() > SEND_HIGH_WATER

    async def wait_writable(self) -> None:
        await self._drain()

    def _reply(self, rid: int | None, result: dict[str, Any], payload: bytes = b"") -> None:
        self.send_frame(encode_frame({"re": rid, "ok": True, "result": result}, payload))

    def _error(self, rid: int | None, code: str, message: str) -> None:
        error = {"code": code, "message": message}
        self.send_frame(encode_frame({"re": rid, "ok": False, "error": error}))

    # -- watch and close -------------------------------------------------

    def watch(self) -> None:
        self.core.supervisor.add_watcher(self)

    def drop(self, code: str, message: str) -> None:
        """Answer an error frame (``re: null``) and close the connection."""
        self._error(None, code, message)
        self.close()

    def close(self) -> None:
        """Ask the connection to close once its queued frames are sent."""
        if not self._writer.is_closing():
            self._writer.close()

    async def _teardown(self) -> None:
        self._closed = True
        self.core.supervisor.remove_watcher(self)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()
        try:
            async with compat.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError):
            self._writer.transport.abort()


def _request_id(header: dict[str, Any]) -> int | None:
    rid = header.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def _cert_subject(cert: object) -> str | None:
    """``CN=...,O=...`` of a TLS client certificate (mutual TLS), else None."""
    if not isinstance(cert, dict) or not cert.get("subject"):
        return None
    parts = [f"{_RDN.get(key, key)}={value}" for rdn in cert["subject"] for key, value in rdn]
    return ",".join(parts)[:256]


_RDN = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}
