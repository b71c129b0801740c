"""The one place where a request delivery is settled: ack, requeue or dead-letter.

Handlers never touch the AMQP message; they return a :class:`Disposition`
and :func:`settle` carries it out. Dead-lettering is done by publishing a
copy to ``<ns>.dead`` with the reason in the ``x-execbus-reason`` header
(confirmed), then acking the original, so the reason travels with it;
deliveries past the queue's delivery limit are dead-lettered by RabbitMQ
itself (``x-death`` says ``delivery_limit``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from aio_pika.abc import AbstractIncomingMessage

from execbus.errors import BrokerError
from execbus.worker.publisher import Publisher

log = logging.getLogger("execbus.worker")


class Action(Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Disposition:
    """What to do with a delivery once it has been handled."""

    action: Action
    reason: str = ""

    @classmethod
    def ack(cls) -> Disposition:
        return cls(Action.ACK)

    @classmethod
    def requeue(cls, reason: str) -> Disposition:
        return cls(Action.REQUEUE, reason)

    @classmethod
    def dead_letter(cls, reason: str) -> Disposition:
        return cls(Action.DEAD_LETTER, reason)


async def settle(
    message: AbstractIncomingMessage, disposition: Disposition, publisher: Publisher
) -> None:
    """Carry out ``disposition``; a channel that died meanwhile means redelivery."""
    try:
        if disposition.action is Action.DEAD_LETTER:
            await _dead_letter(message, disposition.reason, publisher)
        elif disposition.action is Action.REQUEUE:
            await message.nack(requeue=True)
        else:
            await message.ack()
    except Exception as exc:
        log.warning("could not settle delivery %s: %s", message.delivery_tag, exc)


async def _dead_letter(message: AbstractIncomingMessage, reason: str, publisher: Publisher) -> None:
    try:
        await publisher.dead_letter(message, reason)
    except BrokerError as exc:
        log.warning("dead-letter publish failed (%s); rejecting instead", exc)
        await message.reject(requeue=False)
        return
    await message.ack()
