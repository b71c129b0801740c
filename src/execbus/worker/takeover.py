"""What a sync with the agent must do (pure: a plan, no I/O).

A worker that (re)connects to an agent lists the agent's execs and compares
them with its registry: execs it does not know are adopted (rebuilt from
their meta), finished ones get their exits published, and running records
the agent no longer knows were lost with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from execbus.connections.base import AgentExec
from execbus.registry import ExecRecord, ExecRegistry
from execbus.wire.records import ExecState
from execbus.worker.meta import started_under


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The three kinds of work a sync does, each exec in its own lane."""

    adopt: list[AgentExec]  # unknown here: rebuild their records from the meta
    finished: list[AgentExec]  # ended on the agent: publish (again) and ack
    lost: list[ExecRecord]  # running here, unknown to the agent: failed, agent_lost


def plan_sync(agent: str, states: list[AgentExec], registry: ExecRegistry) -> SyncPlan:
    """The plan for the agent's ``states`` against ``registry`` (execs the agent process
    runs under another of its names are left to that name's owner)."""
    states = [s for s in states if started_under(agent, s)]
    known = {s.exec_id for s in states}
    return SyncPlan(
        adopt=[s for s in states if registry.find(s.exec_id) is None],
        finished=[s for s in states if s.finished],
        lost=[
            r
            for r in registry.list(include_finished=False)
            if r.state is ExecState.RUNNING and r.exec_id not in known
        ],
    )


def lost_message(agent: str, boot_changed: bool) -> str:
    """Why a running exec the agent no longer knows failed."""
    why = "restarted" if boot_changed else "no longer knows it"
    return f"agent {agent!r} {why}; the process is gone"
