"""The protocol's operations after ``hello``: one coroutine per op."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from execbus.agent.errors import INVALID, AgentError
from execbus.agent.execs import Exec
from execbus.agent.execspec import check_size, exec_id_of, parse_start
from execbus.agent.signames import parse_signal

if TYPE_CHECKING:
    from execbus.agent.session import Session

Result = tuple[dict[str, Any], bytes]
Handler = Callable[["Session", dict[str, Any], bytes], Awaitable[Result]]


def state_result(exe: Exec) -> Result:
    """An exec state, with the captures in the payload once it has exited."""
    return exe.to_state(), exe.captures()


async def op_hello(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    raise AgentError(INVALID, "hello was already done on this connection")


async def op_ping(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    return {"time": time.time()}, b""


async def op_watch(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    session.watch()
    return {}, b""


async def op_start(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    spec = parse_start(req, session.core.options.max_frame)
    claimed = session.claim_exec(spec.exec_id)
    started: Exec | None = None
    try:
        exe, new = await session.core.supervisor.start(spec)
        started = exe if new else None
    finally:
        if claimed:
            session.settle_exec(spec.exec_id, started)
    state, captures = state_result(exe)
    return {**state, "new": new}, captures


async def op_inspect(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    return state_result(await session.core.supervisor.lookup(exec_id_of(req)))


async def op_wait(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    exe = await session.core.supervisor.lookup(exec_id_of(req))
    await asyncio.shield(exe.finished)
    return state_result(exe)


async def op_signal(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    signum = parse_signal(req.get("signal"))
    exe = await session.core.supervisor.lookup(exec_id_of(req))
    exe.send_signal(signum)
    return {}, b""


async def op_resize(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    width, height = check_size(req.get("width"), req.get("height"))
    exe = await session.core.supervisor.lookup(exec_id_of(req))
    exe.resize(width, height)
    return {}, b""


async def op_stdin(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    close = req.get("close", False)
    if not isinstance(close, bool):
        raise AgentError(INVALID, "close must be true or false")
    exe = await session.core.supervisor.lookup(exec_id_of(req))
    await exe.write_stdin(payload, close=close)
    return {}, b""


async def op_list(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    return {"execs": [exe.to_state() for exe in session.core.supervisor.all()]}, b""


async def op_ack(session: Session, req: dict[str, Any], payload: bytes) -> Result:
    session.core.supervisor.ack(exec_id_of(req))
    return {}, b""


OPS: dict[str, Handler] = {
    "hello": op_hello,
    "ping": op_ping,
    "watch": op_watch,
    "start": op_start,
    "inspect": op_inspect,
    "wait": op_wait,
    "signal": op_signal,
    "resize": op_resize,
    "stdin": op_stdin,
    "list": op_list,
    "ack": op_ack,
}
