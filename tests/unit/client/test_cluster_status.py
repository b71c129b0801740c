"""``execbus status`` from announcements: the owner's link to each agent."""

from __future__ import annotations

import dataclasses
import json

from execbus.cli.commands import _link_text
from execbus.client.cluster import ClusterStatus, QueueStatus, WorkerStatus
from execbus.wire.control import AgentLink, Announcement


def heard(a: Announcement) -> WorkerStatus:
    """As ``execbus status`` gets it: through the wire."""
    return WorkerStatus.from_announcement(
        Announcement.from_json(json.loads(json.dumps(a.to_json())))
    )


def test_status_shows_every_owned_agents_link() -> None:
    down = AgentLink(False, "agent 'b' refused our token", "agent_auth_failed", 1700000000.5)
    new = Announcement(
        "w1",
        frozenset({"a", "b", "c"}),
        owned=frozenset({"a", "b"}),
        links={"a": AgentLink(True, since=1700000000.0), "b": down},
    )
    old_doc: dict[str, object] = {  # an older worker: an entry for every owned agent
        "worker_id": "w0",
        "agents": ["d"],
        "owned": ["d"],
        "links": {"d": {"connected": True, "since": 1690000000.0}},
    }
    status = ClusterStatus(
        [WorkerStatus.from_announcement(Announcement.from_json(old_doc)), heard(new)],
        {q: QueueStatus(q, 0, 1) for q in ("a", "b", "c", "d")},
    )
    assert status.link_of("a") == {"connected": True}
    assert status.link_of("b") == {
        "connected": False,
        "since": 1700000000.5,
        "reason": "agent 'b' refused our token",
        "code": "agent_auth_failed",
    }
    assert status.link_of("c") is None, "reachable, owned by nobody"
    assert status.link_of("d") == {"connected": True, "since": 1690000000.0}
    assert _link_text(status, "a") == "connected"
    assert _link_text(status, "b") == "DOWN (agent_auth_failed): agent 'b' refused our token"
    assert _link_text(status, "c") == "-"
    assert _link_text(status, "d") == "connected"
    # --json: every owned agent has its link.
    workers = dataclasses.asdict(status)["workers"]
    assert {w["worker_id"]: sorted(w["links"]) for w in workers} == {"w0": ["d"], "w1": ["a", "b"]}
