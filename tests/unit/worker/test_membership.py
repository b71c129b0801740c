"""Membership and the ownership assignment (pure logic)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from execbus.wire.control import Announcement, reach_digest
from execbus.worker.membership import Membership, assign, holders, ranking

AGENTS = frozenset(f"agent{i}" for i in range(30))


def workers(n: int) -> dict[str, frozenset[str]]:
    return {f"worker-{i}": AGENTS for i in range(n)}


@settings(max_examples=40, deadline=None)
@given(n_workers=st.integers(1, 12), n_agents=st.integers(0, 80), seed=st.text(max_size=4))
def test_balanced_when_every_worker_reaches_every_agent(
    n_workers: int, n_agents: int, seed: str
) -> None:
    agents = frozenset(f"{seed}a{i}" for i in range(n_agents))
    owners = assign({f"{seed}w{i}": agents for i in range(n_workers)})
    assert set(owners) == agents
    counts = Counter(owners.values())
    loads = [counts.get(f"{seed}w{i}", 0) for i in range(n_workers)]
    assert min(loads) >= n_agents // n_workers
    assert max(loads) <= -(-n_agents // n_workers)


def test_assignment_is_deterministic_and_order_free() -> None:
    view = workers(4)
    reordered = dict(reversed(list(view.items())))
    assert assign(view) == assign(reordered)


def test_few_agents_move_when_a_worker_joins_or_leaves() -> None:
    before = assign(workers(3))
    joined = assign(workers(4))
    moved = sum(before[a] != joined[a] for a in AGENTS)
    assert moved <= 14  # about A/W = 7.5, bounded loads add a few
    left = assign({w: a for w, a in workers(3).items() if w != "worker-0"})
    owned_by_leaver = sum(1 for o in before.values() if o == "worker-0")
    moved_on_leave = sum(before[a] != left[a] for a in AGENTS)
    assert owned_by_leaver <= moved_on_leave <= owned_by_leaver + 4


def test_only_workers_that_reach_an_agent_own_it() -> None:
    owners = assign({"w1": frozenset({"a", "b"}), "w2": frozenset({"b", "c"})})
    assert owners["a"] == "w1"
    assert owners["c"] == "w2"


def test_ranking_is_stable() -> None:
    assert ranking("a1", ["x", "y", "z"]) == ranking("a1", ["z", "y", "x"])


def test_membership_expires_silent_peers() -> None:
    now = [0.0]
    me = Announcement("me", AGENTS)
    view = Membership(me, expiry=3.0, clock=lambda: now[0])
    view.observe(Announcement("peer", AGENTS))
    assert set(view.live()) == {"me", "peer"}
    assert 0 < len(view.mine()) < len(AGENTS)
    now[0] = 3.5
    assert set(view.live()) == {"me"}
    assert view.mine() == set(AGENTS)


def test_stopping_peer_leaves_at_once_and_own_announcements_are_ignored() -> None:
    view = Membership(Announcement("me", AGENTS))
    view.observe(Announcement("peer", AGENTS))
    view.observe(Announcement("me", frozenset()))
    assert set(view.live()) == {"me", "peer"}
    view.observe(Announcement("peer", AGENTS, stopping=True))
    assert set(view.live()) == {"me"}


def test_standby_is_the_next_in_line() -> None:
    view = Membership(Announcement("me", AGENTS))
    view.observe(Announcement("peer", AGENTS))
    standby = view.standby_for()
    assert standby == set(AGENTS) - view.mine(), "with two workers, each stands by for the other"


def test_announcement_round_trip_and_malformed_fields() -> None:
    a = Announcement(
        "w",
        frozenset({"x"}),
        owned=frozenset({"x"}),
        load=3,
        pools=frozenset({"p"}),
        reach=reach_digest(frozenset({"x"})),
    )
    assert Announcement.from_json(a.to_json()) == a
    odd = Announcement.from_json({"worker_id": "w", "agents": "nope", "load": "x"})
    assert odd.agents == frozenset() and odd.load == 0


def test_a_digest_only_announcement_uses_the_last_full_set() -> None:
    view = Membership(Announcement("me", AGENTS))
    full = Announcement("peer", AGENTS, reach=reach_digest(AGENTS))
    digest_only = Announcement.from_json(dataclasses.replace(full, full=False).to_json())
    assert digest_only.full is False and digest_only.agents == frozenset()
    assert view.observe(digest_only) is True, "a new peer"
    assert view.live()["peer"].agents == frozenset(), "its set is not known yet"
    assert view.observe(full) is False
    assert view.observe(digest_only) is False
    assert view.live()["peer"].agents == AGENTS
    changed = frozenset(list(AGENTS)[:3])
    moved = Announcement("peer", changed, reach=reach_digest(changed), full=False)
    view.observe(moved)
    assert view.live()["peer"].agents == frozenset(), "a new digest needs its full set"


def test_announcements_without_a_digest_are_full() -> None:
    """Workers of the previous release send no ``reach``: their list is the full set."""
    old = Announcement.from_json({"worker_id": "old", "agents": ["a", "b"], "owned": ["a"]})
    assert old.full and old.agents == {"a", "b"} and old.reach == reach_digest(old.agents)


def test_owned_by_someone() -> None:
    view = Membership(Announcement("me", AGENTS))
    agent = sorted(AGENTS)[0]
    assert not view.owned_by_someone(agent)
    view.observe(Announcement("peer", AGENTS, owned=frozenset({agent})))
    assert view.owned_by_someone(agent)


@settings(max_examples=30, deadline=None)
@given(n_workers=st.integers(2, 12), n_agents=st.integers(0, 120), seed=st.text(max_size=4))
def test_with_holders_a_join_or_leave_moves_only_the_share_it_must(
    n_workers: int, n_agents: int, seed: str
) -> None:
    agents = frozenset(f"{seed}a{i}" for i in range(n_agents))
    view = {f"{seed}w{i}": agents for i in range(n_workers)}
    before = assign(view)
    # a worker leaves: only its agents move
    leaver = f"{seed}w0"
    left = assign({w: a for w, a in view.items() if w != leaver}, before)
    orphans = {a for a, w in before.items() if w == leaver}
    assert {a for a in agents if left[a] != before[a]} == orphans
    # a worker joins: it takes its share, and nobody else's agents move among the others
    joined = assign({**view, f"{seed}new": agents}, before)
    moved = {a for a in agents if joined[a] != before[a]}
    assert all(joined[a] == f"{seed}new" for a in moved)
    assert len(moved) >= n_agents // (n_workers + 1)
    assert len(moved) <= -(-n_agents // (n_workers + 1))
    for result in (left, joined):  # and the loads stay within one
        loads = Counter(result.values())
        assert max(loads.values(), default=0) - min(loads.values(), default=0) <= 1


def test_a_holder_keeps_what_it_has_room_for_and_gives_up_the_rest() -> None:
    agents = frozenset(f"a{i}" for i in range(10))
    # w1 holds everything (it was alone); w2 appears: w1 keeps 5, w2 gets the others
    owners = assign({"w1": agents, "w2": agents}, dict.fromkeys(agents, "w1"))
    assert Counter(owners.values()) == {"w1": 5, "w2": 5}
    # a holder that cannot reach the agent any more does not keep it
    owners = assign({"w1": frozenset({"a0"}), "w2": agents}, {"a1": "w1"})
    assert owners["a1"] == "w2"


def test_two_claims_go_to_the_same_worker_everywhere() -> None:
    a = Announcement(worker_id="x", agents=frozenset({"g"}), owned=frozenset({"g"}))
    b = Announcement(worker_id="y", agents=frozenset({"g"}), owned=frozenset({"g"}))
    assert holders({"x": a, "y": b}) == holders({"y": b, "x": a})
    assert holders({"x": a, "y": b})["g"] == ranking("g", ["x", "y"])[0]
