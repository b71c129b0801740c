"""bench/scaleout.py at 200 agents x 6 workers: the ownership properties it measures hold.

The figures themselves are the benchmark's (docs/scale-out.md); this test runs
the script the way an operator would and checks what must hold at any speed:
balanced ownership, every agent served after a worker is killed, no polling
in steady state (the broker counts no declares and no channel churn, and
publishes only the announcements), bounded moves, and a clean broker after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from execbus.testing import broker
from execbus.testing.processes import child_env
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not broker.available(), reason="needs rabbitmq-server and root"),
]
AGENTS, WORKERS = 200, 6


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    command = [
        sys.executable,
        str(ROOT / "bench" / "scaleout.py"),
        *("--agents", str(AGENTS), "--workers", str(WORKERS), "--window", "6"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=840, env=child_env(), check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row: dict[str, Any] = json.loads(result.stdout)["sizes"][0]
    return row


def test_ownership_is_balanced(measured: dict[str, Any]) -> None:
    owned = measured["owned_per_worker"]
    assert owned["max"] - owned["min"] <= 1, owned


def test_steady_state_costs_the_broker_only_the_announcements(measured: dict[str, Any]) -> None:
    ops = measured["broker_ops_per_s"]
    assert "queue_declared" not in ops and "channel_created" not in ops, ops
    # one announcement per worker per second (EXECBUS_CONTROL_INTERVAL=1), each
    # delivered to every worker: nothing that grows with the number of agents
    assert ops.get("publish", 0) <= WORKERS * 1.5, ops
    assert ops.get("deliver_get", 0) <= WORKERS * WORKERS * 1.5, ops
    assert measured["broker_objects"]["connections"] == WORKERS


def test_a_killed_workers_agents_are_served_again_and_moves_are_bounded(
    measured: dict[str, Any],
) -> None:
    orphans = measured["failover_agents"]
    assert orphans >= AGENTS // WORKERS
    assert measured["failover_max_s"] > 0  # every orphan ran an exec after the kill
    assert orphans <= measured["moved_on_leave"] <= 2 * orphans
    assert measured["moved_on_join"] <= 1.5 * measured["ideal_moved_on_join"] + 2


def test_figures_an_operator_reads_are_there(measured: dict[str, Any]) -> None:
    for key in (
        "balanced_after_s",
        "announcement_bytes_per_s",
        "worker_rss_mib",
        "broker_memory_per_1000_agents_mib",
        "status_s",
    ):
        assert measured[key], key


def test_status_shows_every_agent_and_its_owner(measured: dict[str, Any]) -> None:
    assert measured["status_agents"] == AGENTS
    assert measured["status_owned"] == AGENTS
