"""The fleet as the workers announce it: workers, the agents each owns, their links, pools.

Pure: fed :class:`~execbus.wire.control.Announcement` objects with the time
they arrived. A worker silent for ``expiry`` seconds is ``gone`` (its claims
no longer count) and is forgotten ``forget`` seconds later. An agent belongs
to the live worker that claimed it most recently, so when an owner dies the
agent moves as soon as its successor announces it, without waiting for the
dead worker to expire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from execbus.wire.control import AgentLink, Announcement, link_of

MAX_WORKERS = 10_000
MOVE_HIGHLIGHT = 15.0  # seconds an agent that changed owner stays marked as moved


@dataclass(slots=True)
class WorkerView:
    worker_id: str
    first_heard: float
    last_heard: float = 0.0
    version: str = ""
    started_at: float = 0.0
    load: int = 0
    stopping: bool = False
    agents: frozenset[str] = frozenset()
    owned: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    links: dict[str, AgentLink] = field(default_factory=dict)
    announcements: int = 0


@dataclass(slots=True)
class AgentOwner:
    owner: str | None = None
    since: float = 0.0
    previous: str | None = None


class Fleet:
    """Workers and agent ownership from announcements."""

    def __init__(self, expiry: float = 3.0, forget: float = 60.0) -> None:
        self.expiry = expiry
        self.forget = forget
        self.workers: dict[str, WorkerView] = {}
        self._owners: dict[str, AgentOwner] = {}
        self.version = 0

    def apply(self, a: Announcement, now: float) -> None:
        """Take one announcement, heard at ``now`` (wall-clock seconds)."""
        worker = self.workers.get(a.worker_id)
        if worker is None:
            if len(self.workers) >= MAX_WORKERS:
                self.expire(now)
                if len(self.workers) >= MAX_WORKERS:
                    return
            worker = self.workers[a.worker_id] = WorkerView(a.worker_id, first_heard=now)
        worker.last_heard = now
        worker.version = a.version
        worker.started_at = a.started_at
        worker.load = a.load
        worker.stopping = a.stopping
        # Newer workers send their full reachable list only now and then (else a digest).
        if getattr(a, "full", True) or not worker.agents:
            worker.agents = a.agents
        worker.owned = a.owned
        worker.pools = a.pools
        worker.links = dict(a.links)
        worker.announcements += 1
        self.version += 1
        self._reassign(now)

    def expire(self, now: float) -> bool:
        """Forget long-gone workers and move their agents; True if anything changed."""
        gone = [
            w for w, v in self.workers.items() if now - v.last_heard > self.expiry + self.forget
        ]
        for worker_id in gone:
            del self.workers[worker_id]
        changed = self._reassign(now) or bool(gone)
        if changed:
            self.version += 1
        return changed

    def live(self, worker: WorkerView, now: float) -> bool:
        return now - worker.last_heard <= self.expiry

    def _reassign(self, now: float) -> bool:
        claims: dict[str, WorkerView] = {}
        for worker in self.workers.values():
            if not self.live(worker, now):
                continue
            for agent in worker.owned:
                best = claims.get(agent)
                if best is None or worker.last_heard > best.last_heard:
                    claims[agent] = worker
        changed = False
        for agent in set(self._owners) | set(claims):
            owner = claims[agent].worker_id if agent in claims else None
            state = self._owners.get(agent)
            if state is None:
                self._owners[agent] = AgentOwner(owner, now)
                changed = True
            elif state.owner != owner:
                state.previous, state.owner, state.since = state.owner, owner, now
                changed = True
        known = self._known_agents()
        for agent in [a for a in self._owners if a not in known and a not in claims]:
            del self._owners[agent]
            changed = True
        return changed

    def _known_agents(self) -> set[str]:
        known: set[str] = set()
        for worker in self.workers.values():
            known |= worker.agents
            known |= worker.owned
        return known

    def owner_of(self, agent: str) -> str | None:
        state = self._owners.get(agent)
        return state.owner if state is not None else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """The fleet for the page: workers (with status) and agents (owner, link, moves)."""
        workers = []
        for w in sorted(self.workers.values(), key=lambda v: v.worker_id):
            silent = now - w.last_heard
            if w.stopping:
                status = "stopping"
            elif silent > self.expiry:
                status = "gone"
            elif silent > self.expiry / 2:
                status = "late"
            else:
                status = "live"
            workers.append(
                {
                    "id": w.worker_id,
                    "status": status,
                    "version": w.version,
                    "started_at": w.started_at or None,
                    "uptime": max(0.0, now - w.started_at) if w.started_at else None,
                    "load": w.load,
                    "heard": round(silent, 2),
                    "owned": sorted(w.owned),
                    "agents": len(w.agents),
                    "pools": sorted(w.pools),
                }
            )
        pools: dict[str, set[str]] = {}
        reach: dict[str, set[str]] = {}
        for w in self.workers.values():
            if not self.live(w, now):
                continue
            for agent in w.agents | w.owned:
                reach.setdefault(agent, set()).add(w.worker_id)
            for pool in w.pools:
                pools.setdefault(pool, set()).add(w.worker_id)
        agents = []
        for name in sorted(set(self._owners) | set(reach)):
            state = self._owners.get(name) or AgentOwner()
            owner = self.workers.get(state.owner) if state.owner else None
            # Workers announce only the links that are down (older ones all of them).
            link = link_of(owner.links, owner.owned, name) if owner is not None else None
            moved = (
                state.previous is not None
                and state.owner is not None
                and now - state.since <= MOVE_HIGHLIGHT
            )
            agents.append(
                {
                    "name": name,
                    "owner": state.owner,
                    "since": state.since,
                    "moved_from": state.previous if moved else None,
                    "connected": link.connected if link is not None else None,
                    "reason": link.reason if link is not None and not link.connected else "",
                    "code": link.code if link is not None and not link.connected else "",
                    # Unknown for a link that is up by omission (the owner's /readyz has it).
                    "link_since": link.since if link is not None and link.since else None,
                    "workers": sorted(reach.get(name, ())),
                }
            )
        return {
            "workers": workers,
            "agents": agents,
            "pools": [{"name": p, "workers": sorted(ws)} for p, ws in sorted(pools.items())],
        }
