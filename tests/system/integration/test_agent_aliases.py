"""One agent process reachable under two names: each exec is reported once, under its name.

A fleet may list the same guest twice (an alias, a migration, a mistake), and
the scale-out benchmark maps many agent names onto a few agent processes. The
agent tells every session about every exec's end, so without the name kept in
the exec's meta the other name's watcher adopted the exec and published its
exit a second time, under the wrong agent.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.system.integration.bus import Bus

pytestmark = pytest.mark.integration


def _run(script: str) -> dict[str, Any]:
    config = {"cmd": ["sh", "-c", script]}
    return {"v": 1, "type": "exec.run", "exec_id": uuid.uuid4().hex, "config": config}


async def test_each_exec_is_reported_once_under_the_name_it_ran_under(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any
) -> None:
    agent = start_agent("shared")
    worker = start_worker("--agent", f"a1={agent.address}", "--agent", f"a2={agent.address}")
    worker.wait_owner("a1")
    worker.wait_owner("a2")
    async with Bus(amqp_url, namespace) as bus:
        bodies = {name: [_run("sleep 0.3; echo hi") for _ in range(3)] for name in ("a1", "a2")}
        replies = await asyncio.gather(
            *(bus.call(name, body) for name, batch in bodies.items() for body in batch)
        )
        assert all(r["ok"] for r in replies), replies
        await asyncio.sleep(0.5)  # time for a duplicate exit to arrive, if any were sent
        for name, batch in bodies.items():
            for body in batch:
                events = bus.events_of(body["exec_id"])
                exits = [e for e in events if e["type"] == "exec.exited"]
                assert len(exits) == 1, (name, events)
                assert exits[0]["agent"] == name
