"""The use cases of one agent: requests applied to the registry and the agent.

:class:`AgentExecs` knows nothing of AMQP deliveries: it takes parsed
requests with a :class:`RequestContext` and returns an :class:`Outcome` (the
reply to send now, if any, and the disposition of the delivery). Events and
deferred replies (a run's result at exit) go out through an :class:`Outbox`.
It is also the agent's listener: exits, output and reconnects arrive here.

What a worker needs to rebuild a record after a takeover travels to the
agent as the exec's ``meta`` (see :func:`build_meta`), so any worker that
later owns the agent can publish the exit and answer the original caller.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from execbus.connections.base import AgentConnection, AgentExec
from execbus.connections.retry import RetryPolicy, call_with_retry
from execbus.errors import (
    AgentUnavailable,
    Conflict,
    ErrorCode,
    ExecbusError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PublishFailed,
)
from execbus.registry import ExecRecord, ExecRegistry, StartAction
from execbus.registry.records import utc
from execbus.registry.registry import config_digest
from execbus.wire import events as ev
from execbus.wire.config import LIFECYCLE_EVENTS, ExecConfig
from execbus.wire.records import ErrorInfo, ExecList, ExecState
from execbus.wire.replies import Reply
from execbus.wire.requests import (
    CreateRequest,
    InspectRequest,
    ListRequest,
    RemoveRequest,
    Request,
    ResizeRequest,
    RunRequest,
    SignalRequest,
    StartRequest,
    StdinRequest,
    WaitRequest,
)
from execbus.wire.routing import Names
from execbus.worker.acks import Disposition
from execbus.worker.lanes import Lanes

log = logging.getLogger("execbus.worker")
META_VERSION = 1
REMEMBER_REMOVED = 4096


class Outbox(Protocol):
    """Where events and replies go (the confirmed publisher in production)."""

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None: ...

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where the answer to one request goes; ``replayed``: the request repeated an
    exec that was already running (its answer says so)."""

    reply_to: str
    correlation_id: str | None = None
    replayed: bool = False
    output: bool = True  # the answer carries the captured output (exec.wait: if asked)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the delivery says about a request besides its body.

    ``refused_reply_to``: the delivery named a ``reply_to`` that is not the
    caller's own queue (see ``Names.reply_queue_allowed``); it gets no reply.
    ``owner``: set by the authorization hook when the caller may only see and
    act on its own execs (a policy without ``all_execs`` for it).
    """

    reply: ReplyTarget | None = None
    request_id: str | None = None
    user_id: str | None = None
    refused_reply_to: str | None = None
    owner: str | None = None


@dataclass(slots=True)
class Outcome:
    """The reply to send now (``None``: none, or deferred) and how to settle.

    ``confirms``: events sent while handling the request whose broker confirms
    must arrive before the delivery is settled (awaited outside the exec's
    lane, so the exit of a quick command need not wait for them).
    """

    reply: Reply | None
    disposition: Disposition = field(default_factory=Disposition.ack)
    confirms: list[asyncio.Future[None]] = field(default_factory=list)

    async def after_confirms(self) -> Outcome:
        """This outcome once the confirms are in; a failed one requeues, without a reply."""
        for result in await asyncio.gather(*self.confirms, return_exceptions=True):
            if isinstance(result, PublishFailed):
                log.warning("an event was not confirmed, requeueing the request: %s", result)
                return Outcome(None, Disposition.requeue(str(result)))
            if isinstance(result, BaseException):
                raise result
        return self


def derive_exec_id(request_id: str) -> str:
    """A deterministic exec id for a run without one: redeliveries map to the same exec."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).hexdigest()


def build_meta(record: ExecRecord, targets: list[ReplyTarget]) -> dict[str, Any]:
    """What the agent keeps for us so another worker can rebuild the record."""
    return {
        "v": META_VERSION,
        "i": record.instance,
        "ca": record.created_at,
        "u": record.owner,
        "cfg": record.config.model_dump(mode="json", exclude_defaults=True),
        # The agent may keep the meta at rest with env values redacted: the next
        # owner recognises a retry of this exec by the digest.
        "h": record.config_digest or config_digest(record.config),
        "rt": [_target_meta(t) for t in targets],
    }


def record_from_agent(agent: str, state: AgentExec) -> ExecRecord | None:
    """Rebuild a registry record from an agent's exec and its meta (takeover)."""
    meta = state.meta
    if meta.get("v") != META_VERSION:
        return None
    try:
        config = ExecConfig.model_validate(meta["cfg"])
    except (KeyError, ValidationError):
        return None
    return ExecRecord(
        exec_id=state.exec_id,
        agent=agent,
        config=config,
        instance=str(meta.get("i", "")),
        created_at=float(meta.get("ca") or state.started_at or 0.0),
        state=ExecState.RUNNING,
        owner=meta.get("u") if isinstance(meta.get("u"), str) else None,
        config_digest=meta.get("h") if isinstance(meta.get("h"), str) else None,
        pid=state.pid,
        started_at=state.started_at,
    )


def _exit_result(record: ExecRecord) -> str:
    exit_info = record.exit
    if exit_info is None:
        return "unknown"
    if exit_info.timed_out:
        return "timed_out"
    if exit_info.signal:
        return "signalled"
    return "ok" if exit_info.exit_code == 0 else "nonzero"


def _target_meta(t: ReplyTarget) -> list[Any]:
    """``[reply_to, correlation_id]``, plus flags only when they differ from the default."""
    flags = (1 if t.replayed else 0) | (0 if t.output else 2)
    return [t.reply_to, t.correlation_id, *([flags] if flags else [])]


def targets_from_meta(meta: dict[str, Any]) -> list[ReplyTarget]:
    targets = []
    for rt in meta.get("rt", []):
        if not isinstance(rt, list) or not rt or not rt[0]:
            continue
        flags = rt[2] if len(rt) > 2 and isinstance(rt[2], int) else 0
        targets.append(ReplyTarget(str(rt[0]), rt[1], bool(flags & 1), not flags & 2))
    return targets


class AgentExecs:
    """Requests, exits and takeovers of one agent."""

    def __init__(
        self,
        agent: str,
        registry: ExecRegistry,
        connection: AgentConnection,
        outbox: Outbox,
        retry: RetryPolicy,
        names: Names,
        lifecycle: Iterable[str] = LIFECYCLE_EVENTS,
    ) -> None:
        self.agent = agent
        # The lifecycle events this worker publishes (EXECBUS_LIFECYCLE_EVENTS).
        self.lifecycle = frozenset(lifecycle)
        self.registry = registry
        self.connection = connection
        self.outbox = outbox
        self.retry = retry
        self.names = names
        self.lanes = Lanes()
        self.waiters: dict[str, list[ReplyTarget]] = {}
        self.on_retry: Callable[[], None] | None = None
        self.on_finished: Callable[[str, str, str], None] | None = None
        self.on_connect: Callable[[], None] | None = None  # each (re)connection to the agent
        self.on_link_down: Callable[[], None] | None = None  # each change to "down"
        # Set once the agent's execs have been synced after a (re)connection,
        # or the link is known down: requests wait for it at a takeover, so a
        # retry finds the exec the previous owner started (see AgentRuntime._own).
        self.synced = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        # Events sent but not yet confirmed, per exec (see _send and _confirmed).
        self._unconfirmed: dict[str, list[asyncio.Future[None]]] = {}
        # Output that arrived before the exec's start was recorded: it must not
        # overtake exec.started, so it waits here (see on_output, _release_output).
        self._held_output: dict[str, list[ev.OutputEvent]] = {}
        # Execs removed here: a late exit notification must not resurrect them.
        self._removed: OrderedDict[str, None] = OrderedDict()

    # -- requests -----------------------------------------------------

    async def handle(self, request: Request, ctx: RequestContext) -> Outcome:
        """Apply one request; errors become error replies with a disposition."""
        try:
            return await self._dispatch(request, ctx)
        except (InvalidRequest, Forbidden) as exc:
            return self._error(request, exc, Disposition.dead_letter(f"{exc.code}: {exc.message}"))
        except PublishFailed as exc:
            log.warning(
                "agent %s: publish failed, requeueing: %s",
                self.agent,
                exc,
                extra=self._ctx(getattr(request, "exec_id", None)),
            )
            return Outcome(None, Disposition.requeue(str(exc)))
        except ExecbusError as exc:
            return self._error(request, exc, Disposition.ack())

    def _ctx(self, exec_or_record: ExecRecord | str | None = None) -> dict[str, Any]:
        """Log context (``extra``): the agent, and the exec and container when known."""
        ctx: dict[str, Any] = {"agent": self.agent}
        if isinstance(exec_or_record, ExecRecord):
            ctx["exec_id"] = exec_or_record.exec_id
            if exec_or_record.container_id:
                ctx["container"] = exec_or_record.container_id
        elif exec_or_record is not None:
            ctx["exec_id"] = exec_or_record
        return ctx

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

    async def _dispatch(self, request: Request, ctx: RequestContext) -> Outcome:
        handler = self._handlers.get(type(request))
        if handler is None:  # pragma: no cover - the union is closed
            raise InvalidRequest(f"unsupported request type {request.type}")
        return await handler(self, request, ctx)

    async def _create(self, req: CreateRequest, ctx: RequestContext) -> Outcome:
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
        to the agent meanwhile); :meth:`_confirmed` waits for it before the
        delivery is settled.
        """
        record, created = self.registry.create(config, exec_id, owner=owner)
        if created:
            self._removed.pop(record.exec_id, None)  # the id is in use again
            if self._publishes(config, "created"):
                self._send(record, "created", self._created_event(record))
                if not pipelined:
                    await self._confirmed(record)
        return record, created

    def _publishes(self, config: ExecConfig, kind: str) -> bool:
        """Is lifecycle event ``kind`` published for an exec of ``config``? Both the
        worker and the request may turn it off."""
        wanted = config.lifecycle_events
        return kind in self.lifecycle and (wanted is None or kind in wanted)

    def _send(
        self, record: ExecRecord, kind: str, event: ev.EventBase, *, track: bool = True
    ) -> asyncio.Future[None]:
        """Start publishing an event of ``record``; returns its confirm.

        Every event of an exec goes through here, as a task: tasks take their
        first step in creation order, and a publish queues its frames in its
        first step (or queues behind the channel lock in that order), so the
        events of an exec reach the broker in the order they were sent while
        nobody waits for a confirm in between. ``track``: keep the confirm for
        :meth:`_confirmed` (output chunks are awaited by their sender instead).
        """
        task = asyncio.ensure_future(self._publish(record, kind, event))
        if track:
            self._unconfirmed.setdefault(record.exec_id, []).append(task)
        return task

    async def _confirmed(self, record: ExecRecord) -> None:
        """Wait until every event sent for ``record`` so far is confirmed."""
        tasks = self._unconfirmed.pop(record.exec_id, None)
        if not tasks:
            return
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def _run(self, req: RunRequest, ctx: RequestContext) -> Outcome:
        exec_id = req.exec_id
        if exec_id is None and ctx.request_id is not None:
            exec_id = derive_exec_id(ctx.request_id)
        record, _ = await self._create_record(req.config, exec_id, ctx.user_id, pipelined=True)
        return await self._settled_after_confirms(
            record, self._start_record(req, record, ctx, req.config.detach, None)
        )

    async def _start(self, req: StartRequest, ctx: RequestContext) -> Outcome:
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
            await self._confirmed(record)
            raise
        outcome.confirms = self._unconfirmed.pop(record.exec_id, [])
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
        self.waiters.setdefault(record.exec_id, []).extend(targets)
        try:
            await self._spawn(record, targets)
        except asyncio.CancelledError:
            self.registry.abort_start(record.exec_id)
            self.waiters.pop(record.exec_id, None)
            self._held_output.pop(record.exec_id, None)
            raise
        if detach:
            return Outcome(self._reply_for(req, record))
        return Outcome(None)  # the waiters get the result at exit (or failure)

    def _reply_for(
        self,
        req: Request | None,
        record: ExecRecord,
        request_type: str = "exec.exit",
        *,
        replayed: bool = False,
        output: bool = True,
    ) -> Reply:
        """The exec as a reply: its error when it failed, its info otherwise."""
        common: dict[str, Any] = {
            "request_type": req.type if req is not None else request_type,
            "request_id": req.request_id if req is not None else None,
            "agent": self.agent,
            "exec_id": record.exec_id,
            "replayed": replayed,
        }
        if record.state is ExecState.FAILED and record.error is not None:
            err = record.error
            return Reply.failure(err.code, err.message, exit_code=err.exit_code, **common)
        return Reply.success(record.info(output=output), **common)

    def _replay(
        self, req: Request, record: ExecRecord, ctx: RequestContext, detach: bool
    ) -> Outcome:
        """A start of an exec that already started: its outcome now, or at its exit."""
        log.info(
            "exec %s: %s repeats a started exec; replaying (%s)",
            record.exec_id,
            req.type,
            record.state.value,
            extra=self._ctx(record),
        )
        if record.finished or detach or ctx.reply is None:
            return Outcome(self._reply_for(req, record, replayed=True))
        target = ReplyTarget(ctx.reply.reply_to, ctx.reply.correlation_id, replayed=True)
        self.waiters.setdefault(record.exec_id, []).append(target)
        return Outcome(None)

    async def _spawn(self, record: ExecRecord, targets: list[ReplyTarget]) -> None:
        meta = build_meta(record, targets)
        try:
            state = await call_with_retry(
                lambda: self.connection.start(record.exec_id, record.config, meta),
                self.retry,
                on_retry=lambda _: self.on_retry() if self.on_retry else None,
            )
        except AgentUnavailable as exc:
            await self._fail(record, ErrorCode.AGENT_UNAVAILABLE, f"agent {self.agent!r}: {exc}")
            return
        except PublishFailed:
            raise
        except ExecbusError as exc:
            await self._fail(record, exc.code, exc.message)
            return
        await self._apply_started(record, state)

    async def _apply_started(self, record: ExecRecord, state: AgentExec) -> None:
        if record.finished:
            return  # the exit overtook the start reply
        if state.state == "failed":
            await self._finish(record, state)
            return
        self.registry.mark_running(record.exec_id, state.pid, state.started_at)
        if self._publishes(record.config, "started"):  # confirmed before the ack
            self._send(record, "started", self._started_event(record))
        self._release_output(record)
        log.debug("exec %s started (pid %s)", record.exec_id, state.pid, extra=self._ctx(record))
        if state.finished:
            await self._finish(record, state)

    async def _inspect(self, req: InspectRequest, ctx: RequestContext) -> Outcome:
        return self._ok(req, self.registry.get(req.exec_id).info(output=req.include_output))

    async def _list(self, req: ListRequest, ctx: RequestContext) -> Outcome:
        records = self.registry.list(req.container_id, req.include_finished)
        if ctx.owner is not None:  # a policy lets this caller see its own execs only
            records = [r for r in records if r.owner == ctx.owner]
        return self._ok(req, ExecList(execs=[r.info(output=False) for r in records]))

    async def _wait(self, req: WaitRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.get(req.exec_id)
        if record.finished or ctx.reply is None:
            return self._ok(req, record.info(output=req.include_output))
        target = ReplyTarget(
            ctx.reply.reply_to, ctx.reply.correlation_id, output=req.include_output
        )
        self.waiters.setdefault(record.exec_id, []).append(target)
        return Outcome(None)

    async def _signal(self, req: SignalRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_running(req.exec_id)
        await self._agent_call(lambda: self.connection.signal(req.exec_id, req.signal))
        return self._ok(req, record.info(output=False))

    async def _resize(self, req: ResizeRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_resizable(req.exec_id)
        await self._agent_call(lambda: self.connection.resize(req.exec_id, req.width, req.height))
        return self._ok(req, record.info(output=False))

    async def _stdin(self, req: StdinRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.check_running(req.exec_id)
        if not record.config.attach_stdin:
            raise Conflict(f"exec {req.exec_id!r} was not created with attach_stdin")
        await self._agent_call(
            lambda: self.connection.write_stdin(req.exec_id, req.data, req.close)
        )
        return self._ok(req, record.info(output=False))

    async def _remove(self, req: RemoveRequest, ctx: RequestContext) -> Outcome:
        record = self.registry.get(req.exec_id)
        if record.state is ExecState.RUNNING and req.force:
            await self._agent_call(lambda: self.connection.signal(req.exec_id, "SIGKILL"))
            state = await self._agent_call(lambda: self.connection.wait(req.exec_id))
            await self._finish(record, state)
        removed = self.registry.remove(req.exec_id)
        self.waiters.pop(req.exec_id, None)
        self._removed[req.exec_id] = None  # its exit notification may still be on its way
        while len(self._removed) > REMEMBER_REMOVED:
            self._removed.popitem(last=False)
        return self._ok(req, removed.info(output=False))

    async def _agent_call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call_with_retry(call, self.retry)

    _handlers: dict[type, Callable[..., Awaitable[Outcome]]] = {
        CreateRequest: _create,
        StartRequest: _start,
        RunRequest: _run,
        InspectRequest: _inspect,
        ListRequest: _list,
        WaitRequest: _wait,
        SignalRequest: _signal,
        ResizeRequest: _resize,
        StdinRequest: _stdin,
        RemoveRequest: _remove,
    }

    # -- exits, failures and events ------------------------------------

    async def _fail(
        self, record: ExecRecord, code: str, message: str, exit_code: int | None = None
    ) -> None:
        error = ErrorInfo(code=code, message=message[:4096], exit_code=exit_code)
        self.registry.mark_failed(record.exec_id, error)
        await self._publish_final(record)

    async def _finish(self, record: ExecRecord, state: AgentExec) -> None:
        """Record an agent's final state, publish it, answer waiters, then ack the agent."""
        if state.state == "failed":
            err = state.error or ErrorInfo(code=ErrorCode.START_FAILED, message="start failed")
            self.registry.mark_failed(record.exec_id, err)
        elif state.exit is not None:
            if record.state is ExecState.CREATED and not record.starting:
                record.starting = True
            if self.registry.notify_exit(record.exec_id, state.exit) and record.pid is None:
                record.pid = state.pid
        await self._publish_final(record)
        if not record.agent_acked:  # the exit can arrive twice: with the start reply and alone
            record.agent_acked = await self._ack_agent(record.exec_id)

    async def _publish_final(self, record: ExecRecord) -> None:
        """Publish the exit (or failure) once it is confirmed; a failed publish is retried
        by the next call (the agent keeps the exit until it is acked)."""
        if record.final_published or not record.finished:
            return
        event: ev.EventBase
        if record.state is ExecState.FAILED and record.error is not None:
            kind, event, result = (
                "failed",
                self._failed_event(record, record.error),
                record.error.code,
            )
        else:
            kind, event, result = "exited", self._exited_event(record), _exit_result(record)
        # The replies go out first (their callers are waiting), the event right
        # behind them, and no confirm is awaited in between.
        self._release_output(record)
        replies = self._send_replies(record)
        self._send(record, kind, event)
        published, *_ = await asyncio.gather(
            self._confirmed(record), *replies, return_exceptions=True
        )
        if isinstance(published, BaseException):
            raise published
        record.final_published = True
        record.compact()  # nothing on the hot path reads its config or exit again
        log.log(
            logging.INFO if record.state is ExecState.FAILED else logging.DEBUG,
            "exec %s %s: %s",
            record.exec_id,
            record.state.value,
            result,
            extra=self._ctx(record),
        )
        if self.on_finished is not None:
            self.on_finished(self.agent, record.state.value, result)

    async def _ack_agent(self, exec_id: str) -> bool:
        """Let the agent forget a finished exec; False when that must wait for a sync."""
        try:
            await self.connection.ack(exec_id)
        except NotFound:
            return True  # the agent never held it (the start never reached it)
        except ExecbusError as exc:  # the next sync acks it
            log.info(
                "agent %s: ack of %s deferred: %s",
                self.agent,
                exec_id,
                exc,
                extra=self._ctx(exec_id),
            )
            return False
        return True

    def _send_replies(self, record: ExecRecord) -> list[asyncio.Future[None]]:
        """Start answering everyone waiting for ``record``'s end (a failed reply is not
        retried: the caller also watches the exit event)."""
        targets = self.waiters.pop(record.exec_id, [])
        if not targets:
            return []
        replies: dict[tuple[bool, bool], Reply] = {}
        sends: list[asyncio.Future[None]] = []
        for t in targets:
            reply = replies.get((t.replayed, t.output))
            if reply is None:
                reply = self._reply_for(None, record, replayed=t.replayed, output=t.output)
                replies[(t.replayed, t.output)] = reply
            sends.append(
                asyncio.ensure_future(self.outbox.reply(t.reply_to, t.correlation_id, reply))
            )
        return sends

    async def _publish(self, record: ExecRecord, kind: str, event: ev.EventBase) -> None:
        key = self.names.event_routing_key(self.agent, record.container_id, kind)
        await self.outbox.event(key, event, event.event_id)

    def _base(self, record: ExecRecord, kind: str, extra: str = "") -> dict[str, Any]:
        return {
            "event_id": ev.make_event_id(self.agent, record.exec_id, record.instance, kind, extra),
            "agent": self.agent,
            "exec_id": record.exec_id,
            "container_id": record.container_id,
            "time": datetime.now(UTC),
            "labels": record.config.labels,
        }

    def _created_event(self, record: ExecRecord) -> ev.CreatedEvent:
        cfg = record.config
        return ev.CreatedEvent(
            **self._base(record, "created"), cmd=cfg.cmd, env_keys=cfg.env_keys(), tty=cfg.tty
        )

    def _started_event(self, record: ExecRecord) -> ev.StartedEvent:
        return ev.StartedEvent(
            **self._base(record, "started"), pid=record.pid, started_at=utc(record.started_at)
        )

    def _exited_event(self, record: ExecRecord) -> ev.ExitedEvent:
        assert record.exit is not None
        return ev.ExitedEvent(**self._base(record, "exited"), exit=record.exit)

    def _failed_event(self, record: ExecRecord, error: ErrorInfo) -> ev.FailedEvent:
        return ev.FailedEvent(**self._base(record, "failed"), error=error)

    # -- agent listener -------------------------------------------------

    async def on_output(self, agent: str, exec_id: str, stream: str, seq: int, data: bytes) -> None:
        record = self.registry.find(exec_id)
        if record is None or stream not in ("stdout", "stderr"):
            return
        event = ev.OutputEvent(
            **self._base(record, "output", f"{stream}:{seq}"),
            stream=stream,
            seq=seq,
            data=data,
        )
        if record.state is ExecState.CREATED:
            # The agent streams as soon as it has spawned, so output can arrive
            # before the start's answer has been handled: hold it until
            # exec.started is sent. Not awaited: the start's answer travels
            # on this same connection, behind this chunk.
            self._held_output.setdefault(exec_id, []).append(event)
            return
        await self._send_output(record, event)

    async def _send_output(self, record: ExecRecord, event: ev.OutputEvent) -> None:
        """Publish one chunk and wait for its confirm (backpressure); a lost chunk is logged."""
        try:
            await self._send(record, "output", event, track=False)
        except PublishFailed as exc:
            self._output_lost(record, event, exc)

    def _release_output(self, record: ExecRecord) -> None:
        """Send the output held back while the start was pending, in arrival order.

        Sent here and now (not from a task of its own), so these chunks queue
        behind exec.started and ahead of anything the caller sends next.
        """
        for event in self._held_output.pop(record.exec_id, ()):
            sent = self._send(record, "output", event, track=False)
            sent.add_done_callback(functools.partial(self._check_held_output, record, event))

    def _check_held_output(
        self, record: ExecRecord, event: ev.OutputEvent, sent: asyncio.Future[None]
    ) -> None:
        if not sent.cancelled() and isinstance(sent.exception(), PublishFailed):
            self._output_lost(record, event, sent.exception())

    def _output_lost(self, record: ExecRecord, event: ev.OutputEvent, exc: object) -> None:
        log.warning(
            "exec %s: output chunk %s/%d lost: %s",
            record.exec_id,
            event.stream,
            event.seq,
            exc,
            extra=self._ctx(record),
        )

    async def on_exit(self, agent: str, state: AgentExec) -> None:
        await self.lanes.submit(state.exec_id, lambda: self._on_exit(state))

    async def _on_exit(self, state: AgentExec) -> None:
        if state.exec_id in self._removed:  # settled and forgotten here already
            await self._ack_agent(state.exec_id)
            return
        record = self.registry.find(state.exec_id) or self._adopt(state)
        if record is None:
            await self._ack_agent(state.exec_id)
            return
        try:
            await self._finish(record, state)
        except PublishFailed as exc:  # not acked: the next sync publishes it again
            log.warning(
                "exec %s: exit not published yet: %s",
                state.exec_id,
                exc,
                extra=self._ctx(state.exec_id),
            )

    def _adopt(self, state: AgentExec) -> ExecRecord | None:
        record = record_from_agent(self.agent, state)
        if record is None:
            log.warning(
                "agent %s: exec %s has no execbus meta; ignoring",
                self.agent,
                state.exec_id,
                extra=self._ctx(state.exec_id),
            )
            return None
        self.registry.adopt(record)
        self.waiters.setdefault(record.exec_id, []).extend(targets_from_meta(state.meta))
        return record

    async def on_connected(self, agent: str, boot_changed: bool) -> None:
        if self.on_connect is not None:
            self.on_connect()
        await self.sync(boot_changed)

    async def on_disconnected(self, agent: str, reason: str) -> None:
        # The connection logged it; requests waiting for the first sync may go
        # on (they fail fast with this reason while the link is down).
        self.synced.set()
        if self.on_link_down is not None:
            self.on_link_down()

    def running(self) -> int:
        """Execs being started or running (their ends are still to come)."""
        return sum(
            1
            for r in self.registry.list(include_finished=False)
            if r.starting or r.state is ExecState.RUNNING
        )

    async def wait_settled(self, poll: float = 0.05) -> None:
        """Until no exec of this agent is starting or running (shutdown: their exits
        are published as they come, so their callers get their results)."""
        while self.running():
            await asyncio.sleep(poll)

    async def sync(self, boot_changed: bool = False) -> None:
        """Takeover: rebuild records from the agent, publish exits nobody published."""
        async with self._sync_lock:
            try:
                states = await self.connection.list()
            except ExecbusError as exc:
                log.warning("agent %s: sync failed: %s", self.agent, exc, extra=self._ctx())
                self.synced.set()
                return
            known = {s.exec_id for s in states}
            for state in states:
                if self.registry.find(state.exec_id) is None:
                    self._adopt(state)
            tasks = [
                self.lanes.submit(s.exec_id, self._sync_finished(s)) for s in states if s.finished
            ]
            tasks += [
                self.lanes.submit(r.exec_id, self._lost(r, boot_changed))
                for r in self.registry.list(include_finished=False)
                if r.state is ExecState.RUNNING and r.exec_id not in known
            ]
            await asyncio.gather(*tasks, return_exceptions=True)
            self.synced.set()
            log.info(
                "agent %s: synced %d execs from the agent",
                self.agent,
                len(states),
                extra=self._ctx(),
            )

    def _sync_finished(self, state: AgentExec) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            full = await self.connection.inspect(state.exec_id)
            await self._on_exit(full)

        return work

    def _lost(self, record: ExecRecord, boot_changed: bool) -> Callable[[], Awaitable[None]]:
        why = "restarted" if boot_changed else "no longer knows it"
        message = f"agent {self.agent!r} {why}; the process is gone"

        async def work() -> None:
            await self._fail(record, ErrorCode.AGENT_LOST, message)

        return work
