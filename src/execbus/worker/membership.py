"""Worker membership and agent ownership (pure logic, no I/O).

Workers announce themselves on ``<ns>.control`` every ``interval`` seconds
(id, the agents they can reach, the agents they own, their load). A peer
that has been silent for ``expiry`` seconds is dropped. From the same view
every worker computes the same assignment: each agent goes to one live
worker that can reach it, chosen by rendezvous hashing with bounded loads
(each worker gets ``floor(A / W)`` or ``ceil(A / W)`` agents when all can
reach all),
so agents spread evenly and few move when a worker joins or leaves.
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


def assign(reach: dict[str, frozenset[str]]) -> dict[str, str]:
    """agent -> owner, for workers ``reach[worker] = agents it can reach``.

    Deterministic: every worker computes the same answer from the same view.
    """
    agents = sorted(
        {a for names in reach.values() for a in names}, key=lambda a: (_score("", a), a)
    )
    if not agents:
        return {}
    floor = len(agents) // max(1, len(reach))
    ceil_slots = len(agents) - floor * len(reach)  # workers that may hold floor + 1
    load = dict.fromkeys(reach, 0)
    owners: dict[str, str] = {}

    def has_room(worker: str) -> bool:
        return load[worker] < floor or (load[worker] == floor and ceil_slots > 0)

    for agent in agents:
        candidates = ranking(agent, [w for w, names in reach.items() if agent in names])
        chosen = next((w for w in candidates if has_room(w)), candidates[0])
        if load[chosen] >= floor:
            ceil_slots -= 1
        owners[agent] = chosen
        load[chosen] += 1
    return owners


@dataclass(slots=True)
class Membership:
    """The live view of workers, fed with announcements."""

    me: Announcement
    expiry: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _peers: dict[str, tuple[Announcement, float]] = field(default_factory=dict)
    # The last full reachable set each peer sent, by its digest.
    _reach: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    _cache_key: tuple[tuple[str, int], ...] = ()
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
        key = tuple(sorted((w, hash(a.agents)) for w, a in live.items()))
        if self._cache_key != key:
            owners = assign({w: a.agents for w, a in live.items()})
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
