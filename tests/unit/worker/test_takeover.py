"""The takeover plan (pure): what a new owner adopts, republishes and fails."""

from __future__ import annotations

from execbus.connections.base import AgentExec
from execbus.registry import ExecRecord, ExecRegistry
from execbus.wire.config import ExecConfig
from execbus.wire.records import ExecState
from execbus.worker.meta import build_meta, started_under
from execbus.worker.takeover import plan_sync


def _running(registry: ExecRegistry, exec_id: str) -> ExecRecord:
    record = ExecRecord(exec_id, registry.agent, ExecConfig(cmd=["true"]), "i", 0.0)
    record.state = ExecState.RUNNING
    registry.adopt(record)
    return record


def _agent_exec(exec_id: str, agent: str, state: str = "running") -> AgentExec:
    record = ExecRecord(exec_id, agent, ExecConfig(cmd=["true"]), "i", 0.0)
    return AgentExec(exec_id, state, meta=build_meta(record, []))


def test_unknown_execs_are_adopted_finished_ones_republished_vanished_ones_lost() -> None:
    registry = ExecRegistry("a1")
    kept = _running(registry, "kept")
    vanished = _running(registry, "vanished")
    plan = plan_sync(
        "a1",
        [_agent_exec("kept", "a1"), _agent_exec("new", "a1"), _agent_exec("done", "a1", "exited")],
        registry,
    )
    assert [s.exec_id for s in plan.adopt] == ["new", "done"]
    assert [s.exec_id for s in plan.finished] == ["done"]
    assert plan.lost == [vanished]
    assert kept not in plan.lost


def test_execs_started_under_another_name_of_the_same_agent_are_left_alone() -> None:
    """One agent process reachable under two names: each name's owner sees only its own."""
    registry = ExecRegistry("a1")
    theirs = [_agent_exec("t1", "a2"), _agent_exec("t2", "a2", "exited")]
    plan = plan_sync("a1", [*theirs, _agent_exec("m1", "a1")], registry)
    assert [s.exec_id for s in plan.adopt] == ["m1"]
    assert plan.finished == []
    assert not started_under("a1", theirs[0])
    assert started_under("a2", theirs[0])


def test_a_meta_without_a_name_counts_as_ours() -> None:
    """Execs started before metas named their agent are still taken over."""
    state = AgentExec("old", "running", meta={"v": 1, "cfg": {"cmd": ["true"]}})
    assert started_under("a1", state)
    assert [s.exec_id for s in plan_sync("a1", [state], ExecRegistry("a1")).adopt] == ["old"]
