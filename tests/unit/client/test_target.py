"""Where a request goes: an agent or a pool (``client/target.py``)."""

from __future__ import annotations

import pytest

from execbus.client.target import AgentTarget, PoolTarget, Target
from execbus.errors import InvalidRequest
from execbus.wire.routing import Names


def test_target_of_takes_exactly_one_of_agent_and_pool() -> None:
    assert Target.of("a1", None) == AgentTarget("a1")
    assert Target.of(None, "gpu") == PoolTarget("gpu")
    assert AgentTarget("x") != PoolTarget("x")
    with pytest.raises(InvalidRequest, match=r"not both \(got agent 'a1' and pool 'gpu'\)"):
        Target.of("a1", "gpu")
    with pytest.raises(InvalidRequest, match="no agent and no pool"):
        Target.of(None, None)


def test_target_names_its_routing_key_queue_and_itself() -> None:
    names = Names("ns")
    agent, pool = AgentTarget("a1"), PoolTarget("gpu")
    assert (agent.agent, agent.pool, pool.agent, pool.pool) == ("a1", None, None, "gpu")
    assert (agent.routing_key(), pool.routing_key()) == ("agent.a1", "pool.gpu")
    assert (agent.queue(names), pool.queue(names)) == ("ns.agent.a1", "ns.pool.gpu")
    assert (agent.describe(), pool.describe()) == ("agent 'a1'", "pool 'gpu'")
