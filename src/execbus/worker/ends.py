"""How an exec ends: its exit or failure recorded, published, answered, then acked.

The end of an exec is reached from requests (a start that failed, a forced
remove) and from the agent (an exit notification, a takeover sync): both go
through :class:`ExecEnds`. The callers waiting for the exec get their
replies first, the ``exec.exited``/``exec.failed`` event goes right behind
them, and only once that event is confirmed is the agent told to forget the
exec (until then it keeps the exit, for whichever worker owns it next).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from execbus.connections.base import AgentExec
from execbus.errors import ErrorCode, ExecbusError, NotFound
from execbus.registry import ExecRecord
from execbus.wire.records import ErrorInfo, ExecState
from execbus.wire.replies import Reply
from execbus.wire.requests import Request
from execbus.worker import event_factory
from execbus.worker.state import AgentState

log = logging.getLogger("execbus.worker")


def reply_for(
    agent: str,
    req: Request | None,
    record: ExecRecord,
    *,
    replayed: bool = False,
    output: bool = True,
) -> Reply:
    """The exec as a reply: its error when it failed, its info otherwise (to a request,
    or, with ``req=None``, the answer at its end: ``request_type`` ``exec.exit``)."""
    common: dict[str, Any] = {
        "request_type": req.type if req is not None else "exec.exit",
        "request_id": req.request_id if req is not None else None,
        "agent": agent,
        "exec_id": record.exec_id,
        "replayed": replayed,
    }
    if record.state is ExecState.FAILED and record.error is not None:
        err = record.error
        return Reply.failure(err.code, err.message, exit_code=err.exit_code, **common)
    return Reply.success(record.info(output=output), **common)


class ExecEnds:
    """Records, publishes and answers the end of an exec of one agent."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def fail(
        self, record: ExecRecord, code: str, message: str, exit_code: int | None = None
    ) -> None:
        """The exec could not run (or its agent lost it)."""
        error = ErrorInfo(code=code, message=message[:4096], exit_code=exit_code)
        self.state.registry.mark_failed(record.exec_id, error)
        await self.publish(record)

    async def finish(self, record: ExecRecord, agent_state: AgentExec) -> None:
        """Record an agent's final state, publish it, answer waiters, then ack the agent."""
        registry = self.state.registry
        if agent_state.state == "failed":
            err = agent_state.error or ErrorInfo(
                code=ErrorCode.START_FAILED, message="start failed"
            )
            registry.mark_failed(record.exec_id, err)
        elif agent_state.exit is not None:
            if record.state is ExecState.CREATED and not record.starting:
                record.starting = True
            if registry.notify_exit(record.exec_id, agent_state.exit) and record.pid is None:
                record.pid = agent_state.pid
        await self.publish(record)
        if not record.agent_acked:  # the exit can arrive twice: with the start reply and alone
            record.agent_acked = await self.ack_agent(record.exec_id)

    async def publish(self, record: ExecRecord) -> None:
        """Publish the exit (or failure) once it is confirmed; a failed publish is retried
        by the next call (the agent keeps the exit until it is acked)."""
        if record.final_published or not record.finished:
            return
        state = self.state
        kind, event, result = event_factory.final(state.agent, record)
        # The replies go out first (their callers are waiting), the event right
        # behind them, and no confirm is awaited in between.
        state.events.release_output(record)
        replies = self._send_replies(record)
        state.events.send(record, kind, event)
        # One gather over the futures themselves: the event's confirm (and any
        # other event of the exec still unconfirmed) and the replies.
        confirms = state.events.take_confirms(record)
        results = await asyncio.gather(*confirms, *replies, return_exceptions=True)
        for failed in results[: len(confirms)]:
            if isinstance(failed, BaseException):
                raise failed
        record.final_published = True
        record.compact()  # nothing on the hot path reads its config or exit again
        level = logging.INFO if record.state is ExecState.FAILED else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "exec %s %s: %s",
                record.exec_id,
                record.state.value,
                result,
                extra=state.log_ctx(record),
            )
        if state.hooks.on_finished is not None:
            state.hooks.on_finished(state.agent, record.state.value, result)

    async def ack_agent(self, exec_id: str) -> bool:
        """Let the agent forget a finished exec; False when that must wait for a sync."""
        try:
            await self.state.connection.ack(exec_id)
        except NotFound:
            return True  # the agent never held it (the start never reached it)
        except ExecbusError as exc:  # the next sync acks it
            log.info(
                "agent %s: ack of %s deferred: %s",
                self.state.agent,
                exec_id,
                exc,
                extra=self.state.log_ctx(exec_id),
            )
            return False
        return True

    def _send_replies(self, record: ExecRecord) -> list[asyncio.Future[None]]:
        """Start answering everyone waiting for ``record``'s end (a failed reply is not
        retried: the caller also watches the exit event)."""
        targets = self.state.waiters.pop(record.exec_id, [])
        replies: dict[tuple[bool, bool], Reply] = {}
        sends: list[asyncio.Future[None]] = []
        for t in targets:
            reply = replies.get((t.replayed, t.output))
            if reply is None:
                reply = reply_for(
                    self.state.agent, None, record, replayed=t.replayed, output=t.output
                )
                replies[(t.replayed, t.output)] = reply
            outbox = self.state.events.outbox
            sends.append(asyncio.ensure_future(outbox.reply(t.reply_to, t.correlation_id, reply)))
        return sends
