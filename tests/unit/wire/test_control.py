"""The ``<ns>.control`` announcement: links by exception, old announcements, size."""

from __future__ import annotations

import json
import random
from typing import Any

from execbus.wire.control import (
    CONNECTED,
    NOT_CONNECTED_YET,
    AgentLink,
    Announcement,
    link_of,
    reach_digest,
)

NOW = 1_764_480_000.123456789
DOWN = AgentLink(False, "agent 'a3': connection refused", "agent_unavailable", NOW - 12.3456789)
AUTH = AgentLink(False, "agent 'a7' refused our token", "agent_auth_failed", NOW - 1.0)


def announcement(owned: list[str], links: dict[str, AgentLink], **kw: Any) -> Announcement:
    reach = frozenset(kw.pop("agents", owned))
    return Announcement(
        worker_id="5f0c2a9e41b7",
        agents=reach,
        reach=reach_digest(reach),
        owned=frozenset(owned),
        links=links,
        version="0.1.0",
        started_at=NOW - 7200,
        **kw,
    )


def wire(a: Announcement) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(a.to_json()))
    return doc


def test_only_links_that_are_not_connected_go_out() -> None:
    owned = [f"a{i}" for i in range(10)]
    links = {name: AgentLink(True, since=NOW - 60) for name in owned}
    links.update(a3=DOWN, a7=AUTH)
    doc = wire(announcement(owned, links))
    assert doc["owned"] == sorted(owned)
    assert doc["links"] == {
        "a3": {
            "connected": False,
            "reason": "agent 'a3': connection refused",
            "code": "agent_unavailable",
            "since": round(NOW - 12.3456789, 3),  # milliseconds
        },
        "a7": {
            "connected": False,
            "reason": "agent 'a7' refused our token",
            "code": "agent_auth_failed",
            "since": round(NOW - 1.0, 3),
        },
    }


def test_round_trip_owned_agents_without_an_entry_are_connected() -> None:
    owned = [f"a{i}" for i in range(10)]
    links = {name: AgentLink(True, since=NOW - 60) for name in owned}
    links.update(a3=DOWN, a7=AUTH)
    parsed = Announcement.from_json(wire(announcement(owned, links, agents=[*owned, "b1"])))
    assert parsed.owned == frozenset(owned)
    assert set(parsed.links) == {"a3", "a7"}
    for name in owned:
        link = parsed.link_of(name)
        assert link is not None
        if name in ("a3", "a7"):
            assert (link.connected, link.reason, link.code) == (
                False,
                links[name].reason,
                links[name].code,
            )
            assert link.since == round(links[name].since, 3)
        else:
            assert link == CONNECTED and link.connected
    assert parsed.link_of("b1") is None, "reachable, not owned: no link"
    assert parsed.link_of("ghost") is None
    # The parsed announcement goes out the same again.
    assert wire(parsed) == wire(announcement(owned, links, agents=[*owned, "b1"]))


def test_an_agent_whose_connection_is_not_open_is_sent_as_not_connected() -> None:
    doc = wire(announcement(["a1", "a2"], {"a1": NOT_CONNECTED_YET, "a2": CONNECTED}))
    assert doc["links"] == {
        "a1": {"connected": False, "reason": "not connected yet", "code": "agent_unavailable"}
    }
    link = Announcement.from_json(doc).link_of("a1")
    assert link is not None and not link.connected and link.reason == "not connected yet"


def test_an_older_workers_full_links_are_read_as_they_are() -> None:
    """A mixed-version fleet (rolling upgrade): every owned agent has an entry."""
    doc = {
        "worker_id": "old",
        "agents": ["a1", "a2", "a3"],
        "owned": ["a1", "a2"],
        "load": 0,
        "pools": [],
        "stopping": False,
        "links": {
            "a1": {"connected": True, "since": 1700000000.25},
            "a2": {
                "connected": False,
                "since": 1700000001.5,
                "reason": "timed out",
                "code": "agent_unavailable",
            },
        },
        "version": "0.1.0",
        "started_at": 1699999999.0,
    }
    parsed = Announcement.from_json(doc)
    assert parsed.link_of("a1") == AgentLink(True, since=1700000000.25)
    assert parsed.link_of("a2") == AgentLink(False, "timed out", "agent_unavailable", 1700000001.5)
    assert parsed.link_of("a3") is None
    # Re-sent by a newer process, only the link that is down remains.
    assert set(wire(parsed)["links"]) == {"a2"}


def test_link_of_reads_both_shapes() -> None:
    owned = frozenset({"a", "b"})
    assert link_of({}, owned, "a") == CONNECTED
    assert link_of({"a": DOWN}, owned, "a") == DOWN
    up = AgentLink(True, since=NOW)
    assert link_of({"a": up}, owned, "a") == up
    assert link_of({}, owned, "c") is None


def test_malformed_links_take_defaults() -> None:
    parsed = Announcement.from_json({"worker_id": "w", "owned": ["a", "b"], "links": ["x"]})
    assert parsed.link_of("a") == CONNECTED
    parsed = Announcement.from_json(
        {"worker_id": "w", "owned": ["a"], "links": {"a": "garbage", "b": {"since": "x"}}}
    )
    assert parsed.link_of("a") == AgentLink(False, "unknown")
    assert parsed.links["b"] == AgentLink(False)


def test_size_grows_with_the_owned_names_only() -> None:
    """100 owned healthy agents of 10,000: under 1.2 KB (it was ~7 KB with a link each)."""
    fleet = [f"a{i}" for i in range(10_000)]
    owned = random.Random(20).sample(fleet, 100)
    links = {name: AgentLink(True, since=NOW - 3600.123456) for name in owned}
    digest_only = announcement(owned, links, agents=fleet, full=False)
    size = len(json.dumps(digest_only.to_json()).encode())
    assert size < 1200, size
    # Each down link adds its entry, nothing else does.
    one_down = announcement(owned, {**links, owned[0]: DOWN}, agents=fleet, full=False)
    extra = len(json.dumps(one_down.to_json()).encode()) - size
    assert 100 < extra < 200, extra
    none_owned = announcement([], {}, agents=fleet, full=False)
    base = len(json.dumps(none_owned.to_json()).encode())
    assert size - base < 100 * 12, "about the owned names alone"
