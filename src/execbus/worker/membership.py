"""Worker membership and agent ownership (pure logic, no I/O).

Workers announce themselves on ``<ns>.control`` every ``interval`` seconds
(id, the agents they can reach, the agents they own, their load). A peer
that has been silent for ``expiry`` seconds is dropped. From the same view
every worker computes the same assignment: each agent goes to one live
worker that can reach it, chosen by rendezvous hashing with bounded loads
(each worker gets ``floor(A / W)`` or ``ceil(A / W)`` agents when all can
reach all); a worker keeps the agents it announces owning while it has room,
so agents spread evenly and about ``A / W`` move when a worker joins or leaves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from execbus.wire.control import Announcement


def _score(worker_id: str, agent: str) -> int:
    digest = hashlib.blake2b(f"{worker_id}\x00{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(agent: str, workers: Iterable[str]) -> list[str]:
    """Workers in rendezvous order for ``agent`` (best first)."""
    return sorted(workers, key=lambda w: (_score(w, agent), w), reverse=True)


def assign(reach: dict[str, frozenset[str]], held: dict[str, str] | None = None) -> dict[str, str]:
    """agent -> owner, for workers ``reach[worker] = agents it can reach``.

    ``held[agent]`` is the worker that announces owning it now: it keeps the
    agent while it has room, so a join or a leave moves about ``A/W`` agents
    and no more (without it, filling the bounded loads in a fixed order
    shifts a few more along). The rest go by rendezvous ranking to the first
    worker with room. Deterministic: every worker computes the same answer
    from the same view.
    """
    agents = sorted(
        {a for names in reach.values() for a in names}, key=lambda a: (_score("", a), a)
    )
    if not agents:
        return {}
    loads = _Loads(reach, len(agents))
    owners: dict[str, str] = {}
    for agent in agents:  # the holders keep what they have room for
        holder = (held or {}).get(agent)
        if holder in reach and agent in reach[holder] and loads.has_room(holder):
            owners[agent] = loads.take(holder)
    for agent in agents:
        if agent not in owners:
            candidates = ranking(agent, [w for w, names in reach.items() if agent in names])
            chosen = next((w for w in candidates if loads.has_room(w)), candidates[0])
            owners[agent] = loads.take(chosen)
    return owners


class _Loads:
    """Bounded loads: ``floor(A/W)`` each, ``+1`` for the first ``A mod W`` to need it."""

    def __init__(self, workers: Iterable[str], agents: int) -> None:
        self.load = dict.fromkeys(workers, 0)
        self.floor = agents // max(1, len(self.load))
        self.ceil_slots = agents - self.floor * len(self.load)

    def has_room(self, worker: str) -> bool:
        load = self.load[worker]
        return load < self.floor or (load == self.floor and self.ceil_slots > 0)

    def take(self, worker: str) -> str:
        if self.load[worker] >= self.floor:
            self.ceil_slots -= 1
        self.load[worker] += 1
        return worker


def holders(announcements: dict[str, Announcement]) -> dict[str, str]:
    """agent -> the worker announcing owning it; two claims (a hand-over in flight) go
    to the one ranked higher for the agent, so every worker picks the same."""
    claims: dict[str, list[str]] = {}
    for worker, a in announcements.items():
        for agent in a.owned:
            claims.setdefault(agent, []).append(worker)
    return {agent: ranking(agent, workers)[0] for agent, workers in claims.items()}


@dataclass(slots=True)
class Membership:
    """The live view of workers, fed with announcements."""

    me: Announcement
    expiry: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _peers: dict[str, tuple[Announcement, float]] = field(default_factory=dict)
    # The last full reachable set each peer sent, by its digest.
    _reach: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    _cache_key: tuple[tuple[str, int, int], ...] = ()
    _cache: tuple[dict[str, str], set[str]] = field(default_factory=lambda: ({}, set()))

    def observe(self, announcement: Announcement) -> bool:
        """Record a peer's announcement (our own ones are ignored); True for a peer not
        in the view before (it needs our full reachable set)."""
        worker = announcement.worker_id
        if worker == self.me.worker_id:
            return False
        if announcement.stopping:
            self._peers.pop(worker, None)
            self._reach.pop(worker, None)
            return False
        new = worker not in self._peers
        self._peers[worker] = (self._resolved(announcement), self.clock())
        return new

    def _resolved(self, a: Announcement) -> Announcement:
        """``a`` with its full reachable set: sent along, or the last one with its digest.
        A digest we have no set for yet counts as reaching nothing, for now."""
        if a.full:
            self._reach[a.worker_id] = (a.reach, a.agents)
            return a
        known = self._reach.get(a.worker_id)
        agents = known[1] if known is not None and known[0] == a.reach else frozenset()
        return dataclasses.replace(a, agents=agents, full=True)

    def owned_by_someone(self, agent: str) -> bool:
        """Does a live worker (ourselves included) announce owning ``agent``?"""
        return any(agent in a.owned for a in self.live().values())

    def owned_anywhere(self) -> set[str]:
        """The agents some live worker (ourselves included) announces owning."""
        return {agent for a in self.live().values() for agent in a.owned}

    def live(self) -> dict[str, Announcement]:
        """Peers heard from within ``expiry``, plus ourselves."""
        now = self.clock()
        for worker_id, (_, seen) in list(self._peers.items()):
            if now - seen > self.expiry:
                del self._peers[worker_id]
                self._reach.pop(worker_id, None)
        peers = {w: a for w, (a, _) in self._peers.items()}
        peers[self.me.worker_id] = self.me
        return peers

    def owners(self) -> dict[str, str]:
        """The assignment over the live workers (recomputed only when the view changes)."""
        return self._cached()[0]

    def _cached(self) -> tuple[dict[str, str], set[str]]:
        live = self.live()
        key = tuple(sorted((w, hash(a.agents), hash(a.owned)) for w, a in live.items()))
        if self._cache_key != key:
            owners = assign({w: a.agents for w, a in live.items()}, holders(live))
            self._cache_key, self._cache = key, (owners, self._standby(live, owners))
        return self._cache

    def mine(self) -> set[str]:
        """Agents this worker should own."""
        me = self.me.worker_id
        return {agent for agent, owner in self.owners().items() if owner == me}

    def standby_for(self) -> set[str]:
        """Agents for which this worker is next in line (it watches their locks)."""
        return self._cached()[1]

    def _standby(self, live: dict[str, Announcement], owners: dict[str, str]) -> set[str]:
        out = set()
        for agent in self.me.agents:
            ranked = ranking(agent, [w for w, a in live.items() if agent in a.agents])
            rest = [w for w in ranked if w != owners.get(agent)]
            if rest and rest[0] == self.me.worker_id:
                out.add(agent)
        return out
