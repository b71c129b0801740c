"""Workers stopped together: every one exits in time, every caller gets its answer.

What ``docker compose down`` and a rolling deploy do: SIGTERM to several
workers of one namespace at the same moment, while ``sleep 1`` execs run on
the agents they own. Each worker must exit within its grace period plus 2 s
whatever the others do, take nothing over from its stopping peers (no "now the
owner" line after its "shutting down" line), and keep serving the exits of its
running execs, so callers get their results.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import pytest

from execbus.testing.processes import WorkerProcess
from tests.system.integration.bus import Bus, unb64

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

GRACE = 5.0
ROUNDS = 5
#: The first line a worker logs on SIGTERM (worker/service.py, Worker._drain) ...
SHUTTING_DOWN = "shutting down: no new requests"
#: ... and the one it logs each time it starts serving an agent (worker/runtime.py).
OWNER_LINE = "this worker is now the owner"


def split_at_shutdown(log: str) -> tuple[str, str]:
    """A worker's log before its first "shutting down" line, and from that line on."""
    at = log.find(SHUTTING_DOWN)
    assert at >= 0, f"no {SHUTTING_DOWN!r} line:\n{log}"
    return log[:at], log[at:]


def owners(workers: list[WorkerProcess]) -> dict[str, str]:
    """agent -> worker id, for the agents owned and connected right now."""
    owned: dict[str, str] = {}
    for worker in workers:
        doc = worker.readyz() or {}
        for agent, info in (doc.get("agents") or {}).items():  # type: ignore[union-attr]
            if info.get("owner") and info.get("connected"):
                owned[agent] = str(doc.get("worker_id"))
    return owned


async def wait_balanced(workers: list[WorkerProcess], agents: list[str]) -> dict[str, str]:
    """Until every agent has an owner and every worker owns one."""
    async with asyncio.timeout(30):
        while True:
            owned = owners(workers)
            if set(owned) == set(agents) and len(set(owned.values())) == len(workers):
                return owned
            await asyncio.sleep(0.1)


async def stop_together(workers: list[WorkerProcess]) -> list[float]:
    """SIGTERM every worker at once; seconds each took to exit (inf: still alive)."""
    started = time.monotonic()
    for worker in workers:
        worker.proc.send_signal(signal.SIGTERM)
    took = [float("inf")] * len(workers)
    deadline = started + GRACE + 2.0
    while time.monotonic() < deadline and float("inf") in took:
        for i, worker in enumerate(workers):
            if took[i] == float("inf") and worker.proc.poll() is not None:
                took[i] = time.monotonic() - started
        await asyncio.sleep(0.02)
    return took


@pytest.mark.timeout(240)
@pytest.mark.parametrize("count", [3, 5])
async def test_workers_stopped_together_exit_in_time_and_answer_everyone(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, count: int
) -> None:
    agents = [start_agent(f"a{i}") for i in range(count)]
    names = [f"a{i}" for i in range(count)]
    spec = [arg for i, a in enumerate(agents) for arg in ("--agent", f"a{i}={a.address}")]
    env = {"EXECBUS_SHUTDOWN_GRACE": str(GRACE), "EXECBUS_LOG_LEVEL": "info"}
    for round_no in range(ROUNDS):
        workers = [start_worker(*spec, env=env) for _ in range(count)]
        await wait_balanced(workers, names)
        async with Bus(amqp_url, namespace) as bus:
            calls = {}
            for name in names:
                body = {
                    "v": 1,
                    "type": "exec.run",
                    "exec_id": uuid.uuid4().hex,
                    "config": {"cmd": ["sh", "-c", "sleep 1; echo slept"]},
                }
                calls[body["exec_id"]] = await bus.publish(f"agent.{name}", body)
            for exec_id in calls:
                await bus.wait_event(exec_id, "started")
            took = await stop_together(workers)
            survivors = [w.log() for w, t in zip(workers, took, strict=True) if t > GRACE + 2]
            assert not survivors, f"round {round_no}: alive past grace + 2 s:\n{survivors}"
            for exec_id, corr in calls.items():
                reply = await bus.reply(corr, timeout=5)
                assert reply["ok"] and reply["exec_id"] == exec_id, reply
                assert unb64(reply["result"]["exit"]["stdout"]) == b"slept\n"
        for worker in workers:
            assert worker.proc.returncode == 0, worker.log()
            before, after = split_at_shutdown(worker.log_text())
            assert OWNER_LINE in before, f"round {round_no}: owned nothing:\n{worker.log()}"
            took_over = [line for line in after.splitlines() if OWNER_LINE in line]
            assert not took_over, f"round {round_no}: took over while stopping:\n{after}"
