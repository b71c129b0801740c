"""The console's view model: execs from events (any of them may be the first seen),
eviction, filters, the fleet from announcements, chart series, output buffers."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from execbus.console.fleet import Fleet
from execbus.console.output import OutputStore
from execbus.console.stats import Stats, percentile
from execbus.console.store import ConsoleStore
from execbus.console.views import ExecFilter, clip_argv
from execbus.wire.control import AgentLink, Announcement
from execbus.wire.events import (
    CreatedEvent,
    Event,
    ExitedEvent,
    FailedEvent,
    OutputEvent,
    StartedEvent,
)
from execbus.wire.records import ErrorInfo, ExitInfo

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
_ids = itertools.count()


def base(exec_id: str, agent: str = "a1", container: str = "", **labels: str) -> dict[str, Any]:
    return {
        "event_id": f"e{next(_ids)}",
        "agent": agent,
        "exec_id": exec_id,
        "container_id": container,
        "time": T0,
        "labels": labels,
    }


def created(exec_id: str, cmd: list[str] | None = None, **kw: Any) -> Event:
    return CreatedEvent(cmd=cmd or ["echo", "hi"], env_keys=["SECRET"], **base(exec_id, **kw))


def started(exec_id: str, at: float = 1.0, **kw: Any) -> Event:
    return StartedEvent(pid=42, started_at=T0 + timedelta(seconds=at), **base(exec_id, **kw))


def output(exec_id: str, data: bytes, seq: int = 0, stream: str = "stdout", **kw: Any) -> Event:
    return OutputEvent(stream=stream, seq=seq, data=data, **base(exec_id, **kw))  # type: ignore[arg-type]


def exited(
    exec_id: str, code: int = 0, run: float = 2.0, signal: str | None = None, **kw: Any
) -> Event:
    info = ExitInfo(
        exit_code=code,
        signal=signal,
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=1 + run),
        stdout=b"captured\n",
        stderr=b"",
    )
    doc = base(exec_id, **kw)
    doc["time"] = T0 + timedelta(seconds=1 + run)
    return ExitedEvent(exit=info, **doc)


def failed(exec_id: str, **kw: Any) -> Event:
    error = ErrorInfo(code="command_not_found", message="no such file", exit_code=127)
    return FailedEvent(error=error, **base(exec_id, **kw))


def test_full_lifecycle_builds_the_record_and_timeline() -> None:
    store = ConsoleStore()
    for event in (created("x1"), started("x1"), output("x1", b"hi\n"), exited("x1", 3)):
        store.apply_event(event, 100.0)
    doc = store.detail("a1", "x1")
    assert doc is not None
    assert doc["state"] == "exited" and doc["exit_code"] == 3 and doc["result"] == "nonzero"
    assert doc["cmd"] == ["echo", "hi"] and doc["env_keys"] == ["SECRET"]
    assert doc["duration"] == pytest.approx(2.0)
    assert [s["kind"] for s in doc["timeline"]] == ["created", "started", "output", "exited"]
    assert doc["user"] is None


def test_the_user_comes_from_exec_created_in_the_row_and_the_detail() -> None:
    store = ConsoleStore()
    as_user = CreatedEvent(cmd=["id", "-u"], env_keys=["SECRET"], user="1000:1000", **base("u1"))
    for event in (as_user, started("u1"), exited("u1", 0)):
        store.apply_event(event, 1.0)
    store.apply_event(created("u2"), 2.0)  # the agent's default user: no user in the event
    store.apply_event(exited("u3", 0), 3.0)  # exec.created off (or missed): not known
    rows = {r["id"]: r for r in store.query(ExecFilter())[0]}
    assert {k: r["user"] for k, r in rows.items()} == {"u1": "1000:1000", "u2": None, "u3": None}
    assert rows["u2"]["cmd"] is not None and rows["u3"]["cmd"] is None  # how the page tells them
    doc = store.detail("a1", "u1")
    assert doc is not None and doc["user"] == "1000:1000" and doc["env_keys"] == ["SECRET"]
    # A later event without the user (an exit) does not forget it.
    store.apply_event(exited("u1", 1), 4.0)
    doc = store.detail("a1", "u1")
    assert doc is not None and doc["user"] == "1000:1000"


@pytest.mark.parametrize("first", ["output", "exited", "failed", "started"])
def test_an_exec_first_seen_late_is_shown(first: str) -> None:
    store = ConsoleStore()
    event = {
        "output": output("x2", b"x"),
        "exited": exited("x2", 0),
        "failed": failed("x2"),
        "started": started("x2"),
    }[first]
    store.apply_event(event, 5.0)
    doc = store.detail("a1", "x2")
    assert doc is not None and doc["cmd"] is None
    assert doc["timeline"][0]["kind"] == "seen"
    assert f"exec.{first}" in doc["timeline"][0]["note"]
    expected = {"output": "running", "started": "running", "exited": "exited", "failed": "failed"}
    assert doc["state"] == expected[first]


def test_state_never_goes_back_and_an_exec_ends_once() -> None:
    store = ConsoleStore()
    store.apply_event(exited("x3", 0), 1.0)
    store.apply_event(started("x3"), 2.0)
    store.apply_event(failed("x3"), 3.0)
    view = store.get("a1", "x3")
    assert view is not None and view.state == "exited" and view.result == "ok"
    assert store.stats.series(None, 3.0)["totals"]["ok"] == 1
    assert store.stats.series(None, 3.0)["totals"]["failed"] == 0


def test_results() -> None:
    store = ConsoleStore()
    store.apply_event(exited("ok", 0), 1.0)
    store.apply_event(exited("nz", 2), 1.0)
    store.apply_event(exited("sig", 137, signal="SIGKILL"), 1.0)
    store.apply_event(failed("f"), 1.0)
    results = {r["id"]: r["result"] for r in store.query(ExecFilter())[0]}
    assert results == {"ok": "ok", "nz": "nonzero", "sig": "signalled", "f": "failed"}


def test_eviction_takes_the_oldest_finished_first() -> None:
    store = ConsoleStore(max_execs=3)
    store.apply_event(started("run-old"), 1.0)
    store.apply_event(exited("done-1", 0), 2.0)
    store.apply_event(exited("done-2", 0), 3.0)
    store.apply_event(started("run-new"), 4.0)
    ids = [r["id"] for r in store.query(ExecFilter())[0]]
    assert ids == ["run-new", "done-2", "run-old"]
    assert store.evicted == 1
    # No finished exec left: the oldest unfinished one goes.
    store2 = ConsoleStore(max_execs=2)
    for i in range(3):
        store2.apply_event(started(f"r{i}"), float(i))
    assert [r["id"] for r in store2.query(ExecFilter())[0]] == ["r2", "r1"]


def test_memory_bound_holds_for_many_execs() -> None:
    store = ConsoleStore(max_execs=100)
    for i in range(1000):
        store.apply_event(created(f"m{i}"), float(i))
        store.apply_event(output(f"m{i}", b"x" * 100), float(i))
        store.apply_event(exited(f"m{i}", 0), float(i))
    assert len(store) == 100 and store.evicted == 900
    assert len(store.output) <= 100


def test_filters() -> None:
    store = ConsoleStore()
    store.apply_event(created("alpha-1", agent="a1", team="red"), 1.0)
    store.apply_event(exited("alpha-1", 0, agent="a1", team="red"), 1.0)
    store.apply_event(created("beta-2", agent="a2", container="web.1", team="blue"), 1.0)
    store.apply_event(exited("beta-2", 1, agent="a2", container="web.1"), 1.0)
    store.apply_event(started("gamma-3", agent="a2"), 1.0)

    def ids(**params: str) -> list[str]:
        return sorted(r["id"] for r in store.query(ExecFilter.parse(params))[0])

    assert ids(agent="a2") == ["beta-2", "gamma-3"]
    assert ids(container="web.1") == ["beta-2"]
    assert ids(container="~") == ["alpha-1", "gamma-3"]
    assert ids(state="running") == ["gamma-3"]
    assert ids(state="finished") == ["alpha-1", "beta-2"]
    assert ids(state="active") == ["gamma-3"]
    assert ids(result="nonzero") == ["beta-2"]
    assert ids(label="team") == ["alpha-1", "beta-2"]
    assert ids(label="team=blue") == ["beta-2"]
    assert ids(q="ALPHA") == ["alpha-1"]
    assert ids(state="bogus") == ["alpha-1", "beta-2", "gamma-3"]
    rows, matched = store.query(ExecFilter.parse({"agent": "a2"}), limit=1)
    assert len(rows) == 1 and matched == 2


def test_argv_and_labels_are_clipped_and_env_values_never_kept() -> None:
    store = ConsoleStore()
    store.apply_event(created("big", ["x" * 5000, "y"], huge="v" * 5000), 1.0)
    doc = store.detail("a1", "big")
    assert doc is not None and doc["cmd_more"] is True
    assert sum(map(len, doc["cmd"])) <= 1024
    assert doc["labels"] == {}  # one label over the cap: none kept rather than a cut one
    assert clip_argv(["ab", "cd"], 3) == (("ab", "c"), True)
    assert "SECRET" in doc["env_keys"]


def test_broker_outage_marks_unfinished_execs() -> None:
    store = ConsoleStore()
    store.set_broker(True, 1.0)
    store.apply_event(started("live"), 1.0)
    store.apply_event(exited("done", 0), 1.0)
    store.set_broker(False, 2.0, "connection lost")
    assert store.broker == {"connected": False, "since": 2.0, "error": "connection lost"}
    rows = {r["id"]: r["gap"] for r in store.query(ExecFilter())[0]}
    assert rows == {"live": True, "done": False}
    store.apply_event(exited("live", 0), 3.0)
    view = store.get("a1", "live")
    assert view is not None and view.gap is False


def test_change_hook_is_called() -> None:
    store = ConsoleStore()
    calls: list[int] = []
    store.on_change = lambda: calls.append(store.version)
    store.apply_event(created("c"), 1.0)
    assert calls == [1]


def test_captured_output_is_shown_when_nothing_was_streamed() -> None:
    store = ConsoleStore()
    store.apply_event(exited("cap", 0), 1.0)
    out = store.output.since("a1/cap", 0)
    assert out is not None and "".join(s[1] for s in out["segments"]) == "captured\n"
    store.apply_event(output("str", b"streamed\n"), 1.0)
    store.apply_event(exited("str", 0), 1.0)
    out = store.output.since("a1/str", 0)
    assert out is not None and "".join(s[1] for s in out["segments"]) == "streamed\n"


# -- output ------------------------------------------------------------------


def test_output_since_and_trimming() -> None:
    out = OutputStore(per_exec=3000, budget=20_000)
    out.append("k", "stdout", b"\x1b[32mgreen\x1b[0m\n")
    first = out.since("k", 0)
    assert first is not None and first["segments"] == [
        ["stdout", "green", {"fg": 2}],
        ["stdout", "\n", None],
    ]
    out.append("k", "stderr", b"err\n")
    later = out.since("k", first["next"])
    assert later is not None and later["segments"] == [["stderr", "err\n", None]]
    assert not later["reset"]
    for _ in range(50):
        out.append("k", "stdout", b"z" * 100)
    trimmed = out.since("k", 0)
    assert trimmed is not None and trimmed["reset"] and trimmed["trimmed"]
    assert out.total <= 3000 + 300


def test_output_budget_drops_the_least_recently_written() -> None:
    out = OutputStore(per_exec=3000, budget=7000)
    for key in ("a", "b", "c", "d"):
        out.append(key, "stdout", b"x" * 800)
    assert "a" not in out and "d" in out and out.total <= 7000
    assert out.evicted >= 1


# -- fleet -------------------------------------------------------------------


def announce(worker: str, owned: set[str], **kw: Any) -> Announcement:
    reach = frozenset(kw.pop("agents", owned))
    return Announcement(worker_id=worker, agents=reach, owned=frozenset(owned), **kw)


def test_fleet_agents_move_when_the_successor_announces() -> None:
    fleet = Fleet(expiry=3.0, forget=10.0)
    fleet.apply(announce("w1", {"a", "b"}, agents={"a", "b"}, version="0.1.0"), 100.0)
    fleet.apply(announce("w2", set(), agents={"a", "b"}), 100.2)
    assert fleet.owner_of("a") == "w1"
    # w1 dies; w2 takes its agents and says so before w1 has expired.
    fleet.apply(announce("w2", {"a", "b"}, agents={"a", "b"}), 101.5)
    assert fleet.owner_of("a") == "w2"
    snap = fleet.snapshot(101.6)
    agent = next(x for x in snap["agents"] if x["name"] == "a")
    assert agent["owner"] == "w2" and agent["moved_from"] == "w1"
    statuses = {w["id"]: w["status"] for w in snap["workers"]}
    assert statuses == {"w1": "late", "w2": "live"}  # silent for 1.6 s of 3
    assert {w["id"]: w["status"] for w in fleet.snapshot(104.0)["workers"]}["w1"] == "gone"
    fleet.expire(200.0)
    assert "w1" not in fleet.workers


def test_fleet_link_state_and_pools() -> None:
    fleet = Fleet()
    link = AgentLink(False, "connection refused", "agent_unavailable", 99.0)
    fleet.apply(
        announce("w1", {"a"}, links={"a": link}, pools=frozenset({"gpu"}), started_at=40.0),
        100.0,
    )
    snap = fleet.snapshot(100.5)
    agent = snap["agents"][0]
    assert agent["connected"] is False and agent["reason"] == "connection refused"
    assert agent["code"] == "agent_unavailable"
    assert snap["pools"] == [{"name": "gpu", "workers": ["w1"]}]
    assert snap["workers"][0]["uptime"] == pytest.approx(60.5)


def test_fleet_keeps_the_reach_list_when_an_announcement_has_only_its_digest() -> None:
    fleet = Fleet()
    fleet.apply(announce("w1", {"a"}, agents={"a", "b"}), 1.0)
    partial = announce("w1", {"a"}, agents=set())
    if hasattr(partial, "full"):
        object.__setattr__(partial, "full", False)
        fleet.apply(partial, 2.0)
        assert fleet.workers["w1"].agents == {"a", "b"}


def test_stopping_worker() -> None:
    fleet = Fleet()
    fleet.apply(announce("w1", {"a"}, stopping=True), 1.0)
    assert fleet.snapshot(1.1)["workers"][0]["status"] == "stopping"


# -- stats -------------------------------------------------------------------


def test_rate_and_latency_series() -> None:
    stats = Stats(window=60, seed=1)
    for i in range(10):
        stats.new_exec("a1", 1000.0 + i * 0.1)
        stats.finished("a1", "ok" if i % 2 else "nonzero", 1000.5, runtime=i / 10, e2e=i / 5)
    stats.new_exec("a2", 1001.0)
    overall = stats.series(None, 1001.9, 30)
    assert overall["rate"]["t"][-2:] == [1000, 1001]
    assert overall["rate"]["new"][-2:] == [10, 1]
    assert overall["totals"] == {
        "new": 11,
        "ok": 5,
        "nonzero": 5,
        "signalled": 0,
        "timed_out": 0,
        "failed": 0,
    }
    p = [v for v in overall["latency"]["p90"] if v is not None]
    assert p == [pytest.approx(0.8)]
    assert stats.series("a2", 1001.9, 30)["totals"]["new"] == 1
    assert stats.series("a1", 1001.9, 30)["totals"]["ok"] == 5
    # Old buckets leave the window.
    stats.new_exec("a1", 2000.0)
    assert stats.series(None, 2000.0)["totals"]["new"] == 1


def test_latency_samples_are_bounded() -> None:
    stats = Stats(window=10, seed=2)
    for i in range(5000):
        stats.finished("a", "ok", 50.0, runtime=float(i))
    bucket = stats._buckets[50]
    assert len(bucket.runtimes) == 200


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
