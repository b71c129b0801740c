"""The use cases of one agent: requests applied to the registry and the agent.

:class:`AgentExecs` knows nothing of AMQP deliveries: it takes parsed
requests with a :class:`~execbus.worker.context.RequestContext` and returns
an :class:`~execbus.worker.context.Outcome` (the reply to send now, if any,
and the disposition of the delivery). Its collaborators: the event path
(``worker/event_path.py``: every event of an exec, in order), the exit path
(``worker/ends.py``), the agent listener and the takeover sync
(``worker/watch.py``), and the exec's meta (``worker/meta.py``: what the
agent keeps so that any worker can rebuild the record).

``exec_id`` is the idempotency key: a repeated run, create or start of an
exec never spawns it again; it replays the exec (``replayed: true``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from execbus.connections.base import AgentExec
from execbus.connections.retry import call_with_retry
from execbus.errors import (
    AgentUnavailable,
    Conflict,
    ErrorCode,
    ExecbusError,
    Forbidden,
    InvalidRequest,
    PublishFailed,
)
from execbus.registry import ExecRecord, StartAction
from execbus.wire import requests as rq
from execbus.wire.config import ExecConfig
from execbus.wire.records import ExecList, ExecState
from execbus.wire.replies import Reply
from execbus.wire.requests import Request
from execbus.worker import event_factory
from execbus.worker.acks import Disposition
from execbus.worker.context import Outcome, ReplyTarget, RequestContext, derive_exec_id
from execbus.worker.ends import ExecEnds, reply_for
from execbus.worker.meta import build_meta
from execbus.worker.state import AgentState

log = logging.getLogger("execbus.worker")


class AgentExecs:
    """The requests of one agent."""

    def __init__(self, state: AgentState, ends: ExecEnds) -> None:
        self.state = state
        self.ends = ends
        self.agent = state.agent
        self.registry = state.registry
        self.lanes = state.lanes

    async def handle(self, request: Request, ctx: RequestContext) -> Outcome:
        """Apply one request; errors become error replies with a disposition."""
        try:
            return await self._handlers[type(request)](self, request, ctx)
        except (InvalidRequest, Forbidden) as exc:
            return self._error(request, exc, Disposition.dead_letter(f"{exc.code}: {exc.message}"))
        except PublishFailed as exc:
            log.warning(
                "agent %s: publish failed, requeueing: %s",
                self.agent,
                exc,
                extra=self.state.log_ctx(getattr(request, "exec_id", None)),
            )
            return Outcome(None, Disposition.requeue(str(exc)))
        except ExecbusError as exc:
            return self._error(request, exc, Disposition.ack())

    def _error(self, request: Request, exc: ExecbusError, disposition: Disposition) -> Outcome:
        reply = Reply.failure(
            exc.code,
            exc.message,
            request_type=request.type,
            request_id=request.request_id,
            agent=self.agent,
            exec_id=getattr(request, "exec_id", None),
        )
        return Outcome(reply, disposition)

    def _ok(
        self, request: Request, result: Any, exec_id: str | None = None, *, replayed: bool = False
    ) -> Outcome:
        reply = Reply.success(
            result,
            request_type=request.type,
            request_id=request.request_id,
            agent=self.agent,
            exec_id=exec_id or getattr(request, "exec_id", None),
            replayed=replayed,
        )
        return Outcome(reply)

    # -- create, run, start ----------------------------------------------

    async def _create(self, req: rq.CreateRequest, ctx: RequestContext) -> Outcome:
        record, created = await self._create_record(req.config, req.exec_id, ctx.user_id)
        return self._ok(req, record.info(output=False), record.exec_id, replayed=not created)

    async def _create_record(
        self,
        config: ExecConfig,
        exec_id: str | None,
        owner: str | None = None,
        *,
        pipelined: bool = False,
    ) -> tuple[ExecRecord, bool]:
        """Register the exec and publish ``exec.created``.

        ``pipelined``: do not wait for the broker's confirm here (the start goes
        to the agent meanwhile); it is confirmed before the delivery is settled.
        """
        state = self.state
        record, created = state.registry.create(config, exec_id, owner=owner)
        if created:
            state.removed.pop(record.exec_id, None)  # the id is in use again
            if state.publishes(config, "created"):
                state.events.send(record, "created", event_factory.created(self.agent, record))
                if not pipelined:
                    await state.events.confirmed(record)
        return record, created

    async def _run(self, req: rq.RunRequest, ctx: RequestContext) -> Outcome:
        exec_id = req.exec_id
        if exec_id is None and ctx.request_id is not None:
            exec_id = derive_exec_id(ctx.request_id)
        record, _ = await self._create_record(req.config, exec_id, ctx.user_id, pipelined=True)
        return await self._settled_after_confirms(
            record, self._start_record(req, record, ctx, req.config.detach, None)
        )

    async def _start(self, req: rq.StartRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.get(req.exec_id)
        detach = record.config.detach if req.detach is None else req.detach
        return await self._settled_after_confirms(
            record, self._start_record(req, record, ctx, detach, req.console_size)
        )

    async def _settled_after_confirms(
        self, record: ExecRecord, work: Awaitable[Outcome]
    ) -> Outcome:
        """Run ``work``; the events it sent are confirmed before its delivery is settled."""
        try:
            outcome = await work
        except BaseException:
            await self.state.events.confirmed(record)
            raise
        outcome.confirms = self.state.events.take_confirms(record)
        return outcome

    async def _start_record(
        self,
        req: Request,
        record: ExecRecord,
        ctx: RequestContext,
        detach: bool,
        console_size: tuple[int, int] | None,
    ) -> Outcome:
        decision = self.registry.begin_start(record.exec_id)
        if decision.action is StartAction.REPLAY:
            return self._replay(req, record, ctx, detach)
        if console_size is not None:
            size = {"width": console_size[0], "height": console_size[1]}
            record.config = record.config.model_copy(update={"console_size": size})
        targets = [] if detach or ctx.reply is None else [ctx.reply]
        self.state.waiters.setdefault(record.exec_id, []).extend(targets)
        try:
            await self._spawn(record, targets)
        except asyncio.CancelledError:
            self.registry.abort_start(record.exec_id)
            self.state.waiters.pop(record.exec_id, None)
            self.state.events.drop_held(record.exec_id)
            raise
        if detach:
            return Outcome(reply_for(self.agent, req, record))
        return Outcome(None)  # the waiters get the result at exit (or failure)

    def _replay(
        self, req: Request, record: ExecRecord, ctx: RequestContext, detach: bool
    ) -> Outcome:
        """A start of an exec that already started: its outcome now, or at its exit."""
        log.info(
            "exec %s: %s repeats a started exec; replaying (%s)",
            record.exec_id,
            req.type,
            record.state.value,
            extra=self.state.log_ctx(record),
        )
        if record.finished or detach or ctx.reply is None:
            return Outcome(reply_for(self.agent, req, record, replayed=True))
        target = ReplyTarget(ctx.reply.reply_to, ctx.reply.correlation_id, replayed=True)
        self.state.waiters.setdefault(record.exec_id, []).append(target)
        return Outcome(None)

    async def _spawn(self, record: ExecRecord, targets: list[ReplyTarget]) -> None:
        state, meta = self.state, build_meta(record, targets)
        try:
            agent_state = await call_with_retry(
                lambda: state.connection.start(record.exec_id, record.config, meta),
                state.retry,
                on_retry=lambda _: state.hooks.on_retry() if state.hooks.on_retry else None,
            )
        except AgentUnavailable as exc:
            await self.ends.fail(
                record, ErrorCode.AGENT_UNAVAILABLE, f"agent {self.agent!r}: {exc}"
            )
            return
        except PublishFailed:
            raise
        except ExecbusError as exc:
            await self.ends.fail(record, exc.code, exc.message)
            return
        await self._apply_started(record, agent_state)

    async def _apply_started(self, record: ExecRecord, agent_state: AgentExec) -> None:
        if record.finished:
            return  # the exit overtook the start reply
        if agent_state.state == "failed":
            await self.ends.finish(record, agent_state)
            return
        self.registry.mark_running(record.exec_id, agent_state.pid, agent_state.started_at)
        events = self.state.events
        if self.state.publishes(record.config, "started"):  # confirmed before the ack
            events.send(record, "started", event_factory.started(self.agent, record))
        events.release_output(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "exec %s started (pid %s)",
                record.exec_id,
                agent_state.pid,
                extra=self.state.log_ctx(record),
            )
        if agent_state.finished:
            await self.ends.finish(record, agent_state)

    # -- the other requests --------------------------------------------------

    async def _inspect(self, req: rq.InspectRequest, ctx: RequestContext) -> Outcome:
        return self._ok(req, self.registry.get(req.exec_id).info(output=req.include_output))

    async def _list(self, req: rq.ListRequest, ctx: RequestContext) -> Outcome:
        records = self.registry.list(req.container_id, req.include_finished)
        if ctx.owner is not None:  # a policy lets this caller see its own execs only
            records = [r for r in records if r.owner == ctx.owner]
        return self._ok(req, ExecList(execs=[r.info(output=False) for r in records]))

    async def _wait(self, req: rq.WaitRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.get(req.exec_id)
        if record.finished or ctx.reply is None:
            return self._ok(req, record.info(output=req.include_output))
        target = ReplyTarget(
            ctx.reply.reply_to, ctx.reply.correlation_id, output=req.include_output
        )
        self.state.waiters.setdefault(record.exec_id, []).append(target)
        return Outcome(None)

    async def _signal(self, req: rq.SignalRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_running(req.exec_id)
        await self._agent_call(lambda: self.state.connection.signal(req.exec_id, req.signal))
        return self._ok(req, record.info(output=False))

    async def _resize(self, req: rq.ResizeRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_resizable(req.exec_id)
        await self._agent_call(
            lambda: self.state.connection.resize(req.exec_id, req.width, req.height)
        )
        return self._ok(req, record.info(output=False))

    async def _stdin(self, req: rq.StdinRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_running(req.exec_id)
        if not record.config.attach_stdin:
            raise Conflict(f"exec {req.exec_id!r} was not created with attach_stdin")
        await self._agent_call(
            lambda: self.state.connection.write_stdin(req.exec_id, req.data, req.close)
        )
        return self._ok(req, record.info(output=False))

    async def _remove(self, req: rq.RemoveRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.get(req.exec_id)
        if record.state is ExecState.RUNNING and req.force:
            connection = self.state.connection
            await self._agent_call(lambda: connection.signal(req.exec_id, "SIGKILL"))
            agent_state = await self._agent_call(lambda: connection.wait(req.exec_id))
            await self.ends.finish(record, agent_state)
        removed = self.registry.remove(req.exec_id)
        self.state.forget(req.exec_id)  # its exit notification may still be on its way
        return self._ok(req, removed.info(output=False))

    async def _agent_call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call_with_retry(call, self.state.retry)

    _handlers: dict[type, Callable[..., Awaitable[Outcome]]] = {
        rq.CreateRequest: _create,
        rq.StartRequest: _start,
        rq.RunRequest: _run,
        rq.InspectRequest: _inspect,
        rq.ListRequest: _list,
        rq.WaitRequest: _wait,
        rq.SignalRequest: _signal,
        rq.ResizeRequest: _resize,
        rq.StdinRequest: _stdin,
        rq.RemoveRequest: _remove,
    }
