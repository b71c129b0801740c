"""What the ownership loop announces about its links: only those that are not connected."""

from __future__ import annotations

import dataclasses
import json
from typing import cast

from execbus.wire.control import CONNECTED, AgentLink, Announcement
from execbus.wire.routing import Names
from execbus.worker.ownership import OwnershipLoop
from execbus.worker.runtime import AgentRuntime


@dataclasses.dataclass
class LinkedRuntime:
    """The parts of AgentRuntime an announcement reads."""

    owner: bool
    state: AgentLink | None

    def link(self) -> AgentLink | None:
        return self.state if self.owner else None

    def load(self) -> int:
        return 0


def test_the_announcement_carries_owned_links_that_are_not_connected() -> None:
    down = AgentLink(False, "connection refused", "agent_unavailable", 1700000000.123456)
    runtimes = {
        "up": LinkedRuntime(True, AgentLink(True, since=1700000000.0)),
        "down": LinkedRuntime(True, down),
        "unopened": LinkedRuntime(True, None),  # owned, no connection open
        "other": LinkedRuntime(False, AgentLink(True, since=1.0)),  # owned elsewhere
    }
    loop = OwnershipLoop(
        "w1", Names("ns"), cast(dict[str, AgentRuntime], runtimes), 1.0, 3.0, frozenset()
    )
    doc = json.loads(json.dumps(loop._announcement(full=False).to_json()))
    assert doc["owned"] == ["down", "unopened", "up"]
    assert doc["links"] == {
        "down": {
            "connected": False,
            "reason": "connection refused",
            "code": "agent_unavailable",
            "since": 1700000000.123,
        },
        "unopened": {
            "connected": False,
            "reason": "not connected yet",
            "code": "agent_unavailable",
        },
    }
    heard = Announcement.from_json(doc)
    assert heard.link_of("up") == CONNECTED
    assert heard.link_of("down") == AgentLink(
        False, "connection refused", "agent_unavailable", 1700000000.123
    )
    unopened = heard.link_of("unopened")
    assert unopened is not None and not unopened.connected
    assert heard.link_of("other") is None
