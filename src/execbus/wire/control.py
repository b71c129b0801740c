"""The ``<ns>.control`` contract: what a worker announces about itself.

Every worker publishes an :class:`Announcement` on the ``<ns>.control``
topic exchange (routing key ``worker.<id>``) every ``control_interval``
seconds. Workers build their membership view from them; ``execbus status``
and operators' tools read them too. Parsing is lenient (a newer or older
worker may add or lack fields): what is missing or malformed takes its default.

The agents a worker can reach may be thousands: an announcement always
carries their digest (``reach``) and the agents it owns, and the full list
(``agents``) only when it changed, when a new peer appeared, and now and
then; peers keep the last full list per worker (``Membership``).

Links go by exception: ``links`` names only the owned agents whose link is
not connected (``{"connected": false, "reason", "code", "since"}``, ``since``
in milliseconds); an owned agent without an entry is connected
(:func:`link_of`). At 100 owned agents that keeps an announcement near 1 KB
instead of ~7 KB. Workers before this sent an entry for every owned agent
(``{"connected": true, "since"}`` when up): readers take those as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from execbus.errors import ErrorCode


def reach_digest(agents: frozenset[str]) -> str:
    """A short digest of a set of agent names (equal sets, equal digests)."""
    joined = "\n".join(sorted(agents)).encode()
    return hashlib.blake2b(joined, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class AgentLink:
    """How an owning worker's connection to one agent is doing."""

    connected: bool
    reason: str = ""  # why not connected
    code: str = ""  # what calls fail with meanwhile (agent_unavailable, agent_auth_failed)
    since: float = 0.0  # wall-clock time of the last change

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"connected": self.connected}
        if self.since:  # unknown for a link that is connected by omission
            doc["since"] = round(self.since, 3)
        if not self.connected:
            doc.update(reason=self.reason, code=self.code)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> AgentLink:
        if not isinstance(doc, dict):
            return cls(False, "unknown")
        since = doc.get("since", 0.0)
        return cls(
            connected=doc.get("connected") is True,
            reason=str(doc.get("reason", ""))[:1024],
            code=str(doc.get("code", ""))[:64],
            since=float(since) if isinstance(since, int | float) else 0.0,
        )


#: The link of an owned agent its owner announced no entry for.
CONNECTED = AgentLink(True)
#: An owned agent whose connection the worker has not opened (yet).
NOT_CONNECTED_YET = AgentLink(False, "not connected yet", ErrorCode.AGENT_UNAVAILABLE)


def link_of(links: Mapping[str, AgentLink], owned: frozenset[str], agent: str) -> AgentLink | None:
    """An owner's link to ``agent``: its entry, else connected if it owns the agent,
    else None (not owned)."""
    link = links.get(agent)
    if link is None and agent in owned:
        return CONNECTED
    return link


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a worker says about itself: the agents it can reach and owns, its load,
    and (for the agents it owns) how its link to each is doing.

    ``links`` may hold every owned agent's link (the worker's own view, or an
    older worker's announcement) or only those that are not connected (a
    parsed announcement): :meth:`link_of` reads both. Only links that are not
    connected go out (:meth:`to_json`).
    """

    worker_id: str
    agents: frozenset[str]
    owned: frozenset[str] = frozenset()
    load: int = 0
    pools: frozenset[str] = frozenset()
    stopping: bool = False
    links: Mapping[str, AgentLink] = field(default_factory=dict)
    version: str = ""
    started_at: float = 0.0
    reach: str = ""  # digest of ``agents``
    full: bool = True  # ``agents`` is the full reachable set (else only its digest came)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"worker_id": self.worker_id}
        if self.full:
            doc["agents"] = sorted(self.agents)
        doc.update(
            {
                "reach": self.reach or reach_digest(self.agents),
                "owned": sorted(self.owned),
                "load": self.load,
                "pools": sorted(self.pools),
                "stopping": self.stopping,
                "links": {
                    name: link.to_json()
                    for name, link in sorted(self.links.items())
                    if not link.connected
                },
                "version": self.version,
                "started_at": self.started_at,
            }
        )
        return doc

    def link_of(self, agent: str) -> AgentLink | None:
        """This worker's link to ``agent`` (connected unless it says otherwise), None
        when it does not own it."""
        return link_of(self.links, self.owned, agent)

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Announcement:
        """Parse an announcement; raises KeyError/TypeError when it has no worker id."""

        def names(key: str) -> frozenset[str]:
            value = doc.get(key, [])
            return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

        load, links, started = doc.get("load", 0), doc.get("links", {}), doc.get("started_at")
        full = isinstance(doc.get("agents"), list)
        agents = names("agents")
        reach = doc.get("reach")
        return cls(
            worker_id=str(doc["worker_id"]),
            agents=agents,
            reach=str(reach)[:64] if isinstance(reach, str) else reach_digest(agents),
            full=full or not isinstance(reach, str),
            owned=names("owned"),
            load=load if isinstance(load, int) else 0,
            pools=names("pools"),
            stopping=bool(doc.get("stopping", False)),
            links=(
                {str(k): AgentLink.from_json(v) for k, v in links.items()}
                if isinstance(links, dict)
                else {}
            ),
            version=str(doc.get("version", ""))[:64],
            started_at=float(started) if isinstance(started, int | float) else 0.0,
        )
