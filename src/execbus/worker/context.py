"""What a request brings besides its body, and what handling it comes to.

The use cases (``worker/execs.py``) take a parsed request with a
:class:`RequestContext` and return an :class:`Outcome`; events and deferred
replies go out through an :class:`Outbox`. Nothing here knows AMQP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from execbus.errors import PublishFailed
from execbus.wire.replies import Reply
from execbus.worker.acks import Disposition

log = logging.getLogger("execbus.worker")


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
