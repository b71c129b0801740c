"""Names of exchanges, queues and routing keys for one namespace.

::

    <ns>.requests   topic exchange   agent.<agent> | pool.<pool>
    <ns>.agent.<a>  quorum queue     single active consumer, delivery limit, DLX
    <ns>.pool.<p>   quorum queue     competing consumers, delivery limit, DLX
    <ns>.unrouted   fanout + queue   alternate exchange of <ns>.requests
    <ns>.events     topic exchange   exec.<agent>.<container>.<event>; exec id in x-execbus-exec-id
    <ns>.dead       fanout + queue   dead letters; reason in x-execbus-reason
    <ns>.control    topic exchange   worker membership (scale-out)
    <ns>.lease.<a>  quorum queue     ownership lease of an agent (single active consumer, a token)
    <ns>.client.<user>.<id>   a caller's own queues (replies, exit events)

A request's ``reply_to`` must name one of the caller's own queues: a
server-named ``amq.gen-*`` queue, direct reply-to (``amq.rabbitmq.reply-to``),
or ``<ns>.client.<user>.*`` where ``<user>`` is the request's ``user_id``
(percent-encoded like container ids); without ``user_id``, any
``<ns>.client.*``. Workers refuse other reply targets, so nobody can make a
worker write into a queue they could not write to themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from execbus.wire.ids import decode_key_segment, encode_key_segment

REASON_HEADER = "x-execbus-reason"
#: On every event: the exec it is about, so a consumer can drop events of execs
#: it does not follow before parsing the body.
EXEC_ID_HEADER = "x-execbus-exec-id"


class EventKey(NamedTuple):
    """An event routing key's parts, parsed (:meth:`Names.parse_event_routing_key`)."""

    agent: str
    container_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class Names:
    """All AMQP names of one namespace."""

    ns: str = "execbus"

    @property
    def requests_exchange(self) -> str:
        return f"{self.ns}.requests"

    @property
    def events_exchange(self) -> str:
        return f"{self.ns}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.ns}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.ns}.dead"

    @property
    def unrouted_exchange(self) -> str:
        return f"{self.ns}.unrouted"

    @property
    def unrouted_queue(self) -> str:
        return f"{self.ns}.unrouted"

    @property
    def control_exchange(self) -> str:
        return f"{self.ns}.control"

    def client_prefix(self, user: str | None) -> str:
        """``<ns>.client.<user>.``: the prefix of a caller's own queues (permissions
        can grant exactly these: ``^<ns>\\.client\\.<user>\\..*``)."""
        if user is None:
            return f"{self.ns}.client."
        return f"{self.ns}.client.{encode_key_segment(user)}."

    def reply_queue_allowed(self, reply_to: str, user: str | None) -> bool:
        """May a request of ``user`` (its ``user_id``) name ``reply_to``?"""
        if reply_to.startswith(("amq.gen-", "amq.rabbitmq.reply-to")):
            return True
        prefix = self.client_prefix(user)
        return reply_to.startswith(prefix) and len(reply_to) > len(prefix)

    def lease_queue(self, agent: str) -> str:
        """The ownership lease of an agent (see ``worker/lease.py``)."""
        return f"{self.ns}.lease.{agent}"

    def agent_queue(self, agent: str) -> str:
        return f"{self.ns}.agent.{agent}"

    def pool_queue(self, pool: str) -> str:
        return f"{self.ns}.pool.{pool}"

    @staticmethod
    def agent_routing_key(agent: str) -> str:
        return f"agent.{agent}"

    @staticmethod
    def pool_routing_key(pool: str) -> str:
        return f"pool.{pool}"

    @staticmethod
    def event_routing_key(agent: str, container_id: str, kind: str) -> str:
        """``exec.<agent>.<container>.<kind>``; the container segment is encoded."""
        return f"exec.{agent}.{encode_key_segment(container_id)}.{kind}"

    @staticmethod
    def event_binding(agent: str | None, container_id: str | None, kind: str | None) -> str:
        """A binding pattern for events; ``None`` matches anything."""
        a = agent or "*"
        c = "*" if container_id is None else encode_key_segment(container_id)
        k = kind or "*"
        return f"exec.{a}.{c}.{k}"

    @staticmethod
    def parse_event_routing_key(key: str) -> EventKey:
        """Reverse :meth:`event_routing_key`."""
        prefix, agent, container, kind = key.split(".")
        if prefix != "exec":
            raise ValueError(f"not an event routing key: {key!r}")
        return EventKey(agent, decode_key_segment(container), kind)
