"""From an AMQP delivery to a handled request: size check, parse, lane, settle.

The consume callback does only synchronous work (so lanes are claimed in
delivery order) and hands the rest to a task. Each delivery ends in exactly
one :func:`~execbus.worker.acks.settle` call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from execbus.broker import undecodable_property
from execbus.errors import ErrorCode, Forbidden, InvalidRequest, LimitExceeded, PublishFailed
from execbus.wire.codec import parse_request
from execbus.wire.ids import new_exec_id
from execbus.wire.replies import Reply
from execbus.wire.requests import CreateRequest, Request, RunRequest
from execbus.wire.routing import Names
from execbus.worker.acks import Disposition, settle
from execbus.worker.context import Outcome, ReplyTarget, RequestContext, derive_exec_id
from execbus.worker.execs import AgentExecs
from execbus.worker.publisher import Publisher

log = logging.getLogger("execbus.worker")

Observer = Callable[[str, Disposition, float], None]  # (request type, disposition, seconds)


def request_context(
    message: AbstractIncomingMessage, request: Request | None, names: Names
) -> RequestContext:
    """Reply target, request id and caller identity of a delivery.

    A ``reply_to`` that is not one of the caller's own queues is not a reply
    target: it is recorded as refused instead.
    """
    user_id = message.user_id or None
    reply, refused = None, None
    if message.reply_to:
        if names.reply_queue_allowed(message.reply_to, user_id):
            reply = ReplyTarget(message.reply_to, message.correlation_id)
        else:
            refused = message.reply_to
    request_id = request.request_id if request is not None else None
    return RequestContext(
        reply=reply,
        request_id=request_id or message.message_id,
        user_id=user_id,
        refused_reply_to=refused,
    )


def refused_reply_to(ctx: RequestContext, names: Names) -> InvalidRequest:
    where = names.client_prefix(ctx.user_id)
    return InvalidRequest(
        f"reply_to {ctx.refused_reply_to[:64]!r} is not one of the caller's own queues "
        f"(amq.gen-*, amq.rabbitmq.reply-to or {where}*); the request was not run"
        if ctx.refused_reply_to
        else "reply_to refused"
    )


def with_exec_id(request: Request, ctx: RequestContext) -> Request:
    """Give creates and runs without an exec id a deterministic one (redelivery-safe)."""
    if isinstance(request, CreateRequest | RunRequest) and request.exec_id is None:
        exec_id = derive_exec_id(ctx.request_id) if ctx.request_id else new_exec_id()
        return request.model_copy(update={"exec_id": exec_id})
    return request


def parse_delivery(message: AbstractIncomingMessage, max_bytes: int) -> Request:
    """Size check, properties, then parse and validate the body."""
    size = len(message.body)
    if size > max_bytes:
        raise InvalidRequest(f"message of {size} bytes exceeds the limit of {max_bytes}")
    bad = undecodable_property(message)
    if bad is not None:
        raise InvalidRequest(f"the AMQP property {bad} is not valid UTF-8")
    return parse_request(message.body)


class RequestConsumer:
    """Consumes one agent's queue into its :class:`AgentExecs`."""

    def __init__(
        self,
        execs: AgentExecs,
        publisher: Publisher,
        max_message_bytes: int,
        observe: Observer | None = None,
        authorize: Callable[[Request, RequestContext], Awaitable[RequestContext]] | None = None,
        on_inflight: Callable[[float], None] | None = None,
    ) -> None:
        self.execs = execs
        self.publisher = publisher
        self.max_message_bytes = max_message_bytes
        self.observe = observe
        self.authorize = authorize
        self.inflight: set[asyncio.Task[None]] = set()
        self.on_inflight = on_inflight  # +1 when a delivery is taken, -1 once it is settled

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The consume callback: claim a lane now, handle in a task."""
        started = time.perf_counter()
        try:
            request = self._parse(message)
        except InvalidRequest as exc:
            self._track(self.reject(message, exc, started))
            return
        self.accept(message, request, started)

    def accept(self, message: AbstractIncomingMessage, request: Request, started: float) -> None:
        """Handle an already parsed request (also used for pool requests placed here)."""
        ctx = request_context(message, request, self.publisher.names)
        request = with_exec_id(request, ctx)
        key = getattr(request, "exec_id", None) or f"~{uuid.uuid4().hex}"
        decided = self.execs.lanes.submit(key, lambda: self._decide(request, ctx))
        self._track(self._complete(message, decided, ctx, request.type, started))

    def _track(self, coro_or_task: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro_or_task)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        if self.on_inflight is not None:
            on_inflight = self.on_inflight
            on_inflight(1)
            task.add_done_callback(lambda _: on_inflight(-1))

    def _parse(self, message: AbstractIncomingMessage) -> Request:
        request = parse_delivery(message, self.max_message_bytes)
        agent = self.execs.agent
        if request.agent is not None and request.agent != agent:
            raise InvalidRequest(
                f"request for agent {request.agent!r} arrived on the queue of agent {agent!r}"
            )
        return request

    async def _decide(self, request: Request, ctx: RequestContext) -> Outcome:
        """The request's effect, in its exec's lane."""
        try:
            if ctx.refused_reply_to is not None:
                raise refused_reply_to(ctx, self.publisher.names)
            if self.authorize is not None:
                ctx = await self.authorize(request, ctx)
            return await self.execs.handle(request, ctx)
        except (InvalidRequest, Forbidden, LimitExceeded) as exc:  # policy and limit denials
            return Outcome(
                Reply.failure(exc.code, exc.message, request_type=request.type),
                Disposition.dead_letter(f"{exc.code}: {exc.message}"),
            )
        except Exception as exc:
            log.exception("internal error handling %s", request.type)
            return Outcome(
                Reply.failure(
                    ErrorCode.INTERNAL, f"internal error: {exc}", request_type=request.type
                ),
                Disposition.dead_letter(f"internal: {type(exc).__name__}"),
            )

    async def _complete(
        self,
        message: AbstractIncomingMessage,
        decided: Awaitable[Outcome],
        ctx: RequestContext,
        request_type: str,
        t0: float,
    ) -> None:
        """Outside the lane: wait for the decision and its confirms, then reply and settle."""
        outcome = await decided
        if outcome.confirms:
            outcome = await outcome.after_confirms()
        await self._finish(message, ctx, outcome, request_type, t0)

    async def reject(
        self, message: AbstractIncomingMessage, exc: InvalidRequest, t0: float
    ) -> None:
        log.warning("rejecting message %r: %s", (message.message_id or "")[:64], exc.message)
        reply = Reply.failure(exc.code, exc.message, agent=self.execs.agent)
        ctx = request_context(message, None, self.publisher.names)
        outcome = Outcome(reply, Disposition.dead_letter(f"{exc.code}: {exc.message}"))
        await self._finish(message, ctx, outcome, "invalid", t0)

    async def _finish(
        self,
        message: AbstractIncomingMessage,
        ctx: RequestContext,
        outcome: Outcome,
        request_type: str,
        t0: float,
    ) -> None:
        disposition = outcome.disposition
        if outcome.reply is not None and ctx.reply is not None:
            try:
                await self.publisher.reply(
                    ctx.reply.reply_to, ctx.reply.correlation_id, outcome.reply
                )
            except PublishFailed as exc:
                disposition = Disposition.requeue(f"reply not confirmed: {exc}")
        await settle(message, disposition, self.publisher)
        if self.observe is not None:
            self.observe(request_type, disposition, time.perf_counter() - t0)
