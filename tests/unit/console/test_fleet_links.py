"""The fleet's agent links: workers announce only the links that are down."""

from __future__ import annotations

from typing import Any

from execbus.console.fleet import Fleet
from execbus.wire.control import AgentLink, Announcement


def announce(worker: str, owned: set[str], **kw: Any) -> Announcement:
    reach = frozenset(kw.pop("agents", owned))
    return Announcement(worker_id=worker, agents=reach, owned=frozenset(owned), **kw)


def test_fleet_owned_agents_without_a_link_entry_are_connected() -> None:
    """Workers send only the links that are down; older ones sent every link."""
    fleet = Fleet()
    down = AgentLink(False, "timed out", "agent_unavailable", 99.5)
    sent = announce("w1", {"a", "b"}, links={"a": AgentLink(True, since=90.0), "b": down})
    fleet.apply(Announcement.from_json(sent.to_json()), 100.0)
    # An older worker: a connected link with its since.
    fleet.apply(announce("w2", {"c"}, links={"c": AgentLink(True, since=80.25)}), 100.0)
    agents = {x["name"]: x for x in fleet.snapshot(100.5)["agents"]}
    assert agents["a"]["connected"] is True and agents["a"]["link_since"] is None
    assert agents["a"]["reason"] == "" and agents["a"]["code"] == ""
    assert agents["b"]["connected"] is False and agents["b"]["reason"] == "timed out"
    assert agents["b"]["link_since"] == 99.5
    assert agents["c"]["connected"] is True and agents["c"]["link_since"] == 80.25
    # Reachable but owned by nobody: no link at all.
    fleet.apply(announce("w2", set(), agents={"c"}), 101.0)
    fleet.apply(announce("w1", {"a", "b"}, agents={"a", "b"}), 101.0)
    agents = {x["name"]: x for x in fleet.snapshot(101.5)["agents"]}
    assert agents["c"]["owner"] is None and agents["c"]["connected"] is None
