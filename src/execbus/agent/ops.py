"""The protocol's operations after ``hello``: one coroutine per op.

Each op gets the :class:`~execbus.agent.context.OpContext` of the connection
the request came on (the session), the request header and its payload, and
returns a result and a payload; an :class:`~execbus.agent.errors.AgentError`
becomes the error reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from execbus.agent.context import OpContext
from execbus.agent.errors import INVALID, AgentError
from execbus.agent.execs import Exec
from execbus.agent.execspec import check_size, exec_id_of, parse_start
from execbus.agent.signames import parse_signal

Result = tuple[dict[str, Any], bytes]
Handler = Callable[[OpContext, dict[str, Any], bytes], Awaitable[Result]]


def state_result(exe: Exec) -> Result:
    """An exec state, with the captures in the payload once it has exited."""
    return exe.to_state(), exe.captures()


async def op_hello(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    raise AgentError(INVALID, "hello was already done on this connection")


async def op_ping(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    return {"time": time.time()}, b""


async def op_watch(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    ctx.watch()
    return {}, b""


async def op_start(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    spec = parse_start(req, ctx.max_frame)
    claimed = ctx.claim_exec(spec.exec_id)
    started: Exec | None = None
    try:
        exe, new = await ctx.supervisor.start(spec)
        started = exe if new else None
    finally:
        if claimed:
            ctx.settle_exec(spec.exec_id, started)
    state, captures = state_result(exe)
    return {**state, "new": new}, captures


async def op_inspect(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    return state_result(await ctx.supervisor.lookup(exec_id_of(req)))


async def op_wait(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    exe = await ctx.supervisor.lookup(exec_id_of(req))
    await asyncio.shield(exe.finished)
    return state_result(exe)


async def op_signal(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    signum = parse_signal(req.get("signal"))
    exe = await ctx.supervisor.lookup(exec_id_of(req))
    exe.send_signal(signum)
    return {}, b""


async def op_resize(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    width, height = check_size(req.get("width"), req.get("height"))
    exe = await ctx.supervisor.lookup(exec_id_of(req))
    exe.resize(width, height)
    return {}, b""


async def op_stdin(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    close = req.get("close", False)
    if not isinstance(close, bool):
        raise AgentError(INVALID, "close must be true or false")
    exe = await ctx.supervisor.lookup(exec_id_of(req))
    await exe.write_stdin(payload, close=close)
    return {}, b""


async def op_list(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    return {"execs": [exe.to_state() for exe in ctx.supervisor.all()]}, b""


async def op_ack(ctx: OpContext, req: dict[str, Any], payload: bytes) -> Result:
    ctx.supervisor.ack(exec_id_of(req))
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
