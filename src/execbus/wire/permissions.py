"""The RabbitMQ permissions each role needs, generated (docs/security.md shows them).

RabbitMQ checks three regular expressions per user and vhost (configure,
write, read) against resource names, plus topic permissions on routing keys.
What each AMQP operation needs (RabbitMQ's access-control table):

* declaring (non-passively) or **deleting** a queue or exchange: configure
  on it — configure means delete, so callers get it on their own queues only;
* a passive declare: nothing;
* ``queue.bind``: write on the queue, read on the exchange (and the
  exchange's topic read permission on the binding key);
* ``basic.publish``: write on the exchange (the default exchange is
  ``amq.default``) and, for topic exchanges, topic write on the routing key;
* ``basic.consume``/``basic.get``/``queue.purge``: read on the queue.

Roles:

``caller``
    publishes requests for the agents it may address, reads its replies, and
    follows those agents' events: its own queues are ``<ns>.client.<user>.*``
    (the SDK names its queues so) or server-named ``amq.gen-*`` (exclusive:
    nobody else can touch them). No configure on any shared exchange.
``observer``
    read-only: follows every event and the worker announcements
    (``execbus status``, ``execbus console``), publishes nothing.
``worker``
    everything of its namespace, server-named queues (membership), and the
    default exchange (replies).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from execbus.wire.routing import Names

ROLES = ("caller", "observer", "worker")


@dataclass(frozen=True, slots=True)
class TopicPermission:
    exchange: str
    write: str
    read: str


@dataclass(frozen=True, slots=True)
class Permissions:
    """What ``rabbitmqctl set_permissions`` / ``set_topic_permissions`` take."""

    user: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicPermission, ...] = ()

    def commands(self, vhost: str = "/") -> list[str]:
        """The ``rabbitmqctl`` command lines that grant them."""
        q = shlex.quote
        lines = [
            f"rabbitmqctl set_permissions -p {q(vhost)} {q(self.user)} "
            f"{q(self.configure)} {q(self.write)} {q(self.read)}"
        ]
        lines += [
            f"rabbitmqctl set_topic_permissions -p {q(vhost)} {q(self.user)} "
            f"{q(t.exchange)} {q(t.write)} {q(t.read)}"
            for t in self.topics
        ]
        return lines


def _escape(name: str) -> str:
    """A literal for RabbitMQ's (PCRE) regexes; only what needs it is escaped, so the
    lines stay readable (names hold ``[A-Za-z0-9_.%-]``)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", name)


def _alt(*parts: str) -> str:
    return "^(" + "|".join(parts) + ")$"


def permissions(
    role: str, user: str, namespace: str = "execbus", agents: str = ".*"
) -> Permissions:
    """The permissions of ``user`` in ``role``; ``agents``: a regex of the agent (and
    pool) names a caller may address and follow (``vm-.*``)."""
    names = Names(namespace)
    ns = _escape(namespace)
    own = _escape(names.client_prefix(user)) + ".*"
    server_named = r"amq\.gen-.*"
    if role == "caller":
        return Permissions(
            user,
            configure=_alt(server_named, own),
            write=_alt(_escape(names.requests_exchange), server_named, own),
            read=_alt(_escape(names.events_exchange), server_named, own),
            topics=(
                TopicPermission(names.requests_exchange, f"^(agent|pool)\\.({agents})$", "^$"),
                TopicPermission(names.events_exchange, "^$", f"^exec\\.({agents})\\..*$"),
            ),
        )
    if role == "observer":
        shared = (_escape(names.events_exchange), _escape(names.control_exchange))
        return Permissions(
            user,
            configure=_alt(server_named, own),
            write=_alt(server_named, own),
            read=_alt(*shared, server_named, own),
            topics=(TopicPermission(names.events_exchange, "^$", f"^exec\\.({agents})\\..*$"),),
        )
    if role == "worker":
        return Permissions(
            user,
            configure=_alt(f"{ns}\\..*", server_named),
            write=_alt(f"{ns}\\..*", server_named, r"amq\.default"),
            read=_alt(f"{ns}\\..*", server_named),
        )
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
