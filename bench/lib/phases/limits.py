"""The machine's limit (raw spawns) and the agent alone, before any worker runs.

``spawn`` spawns the command with asyncio (stdout and stderr piped and read,
like every exec here and like the Celery baseline's ``subprocess.run``) at
1/16/32/64 in flight, and at 32 with a pidfd child watcher for reference.
``agent`` runs it through ``AgentClient`` alone (start, the exit event, ack),
before the worker starts (a worker would take the exits over); with a runc
container it also times a container exec through the agent alone.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import warnings
from pathlib import Path

from bench.lib import say
from bench.lib.context import CMD, Ctx
from bench.lib.measure import CpuMeter, drive, measure, r
from bench.lib.sections import AgentSection, SpawnSection

from execbus.connections.agent_client import AgentClient
from execbus.connections.base import AgentExec
from execbus.connections.factory import unix_dialer
from execbus.wire.config import ExecConfig
from execbus.wire.ids import new_exec_id

CONCURRENCY = (1, 16, 32, 64)


async def spawn_once() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CMD, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or out != b"hi\n":
        raise RuntimeError(f"echo failed: {proc.returncode}")


async def _pidfd_rate(n: int) -> float | None:
    """Spawns/s at 32 in flight with a pidfd child watcher (the agent reaps with pidfds)."""
    if not hasattr(asyncio, "PidfdChildWatcher"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_child_watcher()
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    try:
        run = await measure("spawn (pidfd watcher)", n, 32, spawn_once, 50)
        return round(run.per_s, 1)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(old)


async def spawn(ctx: Ctx) -> SpawnSection:
    say(f"spawn limit: {CMD} through asyncio, stdout/stderr piped")
    plan = ctx.plan
    await drive(plan.warmup, 16, spawn_once)
    meter = CpuMeter({"bench": os.getpid()}).start()
    by_c: dict[str, float] = {}
    done, c1_p50 = 0, None
    for c in CONCURRENCY:
        run = await measure("spawn", plan.spawn_n, c, spawn_once, plan.warmup // 4)
        by_c[str(c)] = round(run.per_s, 1)
        done += run.n + plan.warmup // 4
        if c == 1 and run.latencies:
            c1_p50 = r(statistics.median(run.latencies) * 1000, 3)
    cpu = meter.stop(done)
    pidfd = await _pidfd_rate(plan.spawn_n)
    return SpawnSection(max(by_c.values()), by_c, pidfd, c1_p50, cpu)


class DirectAgent:
    """Execs through ``AgentClient`` alone: start, wait for the exit event, ack."""

    def __init__(self, sock: Path) -> None:
        self.waiters: dict[str, asyncio.Future[AgentExec]] = {}
        self.connected = asyncio.Event()
        self.client = AgentClient("bench", unix_dialer(str(sock)), call_timeout=30.0, heartbeat=5.0)

    # The AgentListener protocol.
    async def on_output(self, agent: str, exec_id: str, stream: str, seq: int, data: bytes) -> None:
        return None

    async def on_exit(self, agent: str, state: AgentExec) -> None:
        fut = self.waiters.pop(state.exec_id, None)
        if fut is not None and not fut.done():
            fut.set_result(state)

    async def on_connected(self, agent: str, boot_changed: bool) -> None:
        self.connected.set()

    async def on_disconnected(self, agent: str, reason: str) -> None:
        self.connected.clear()

    async def __aenter__(self) -> DirectAgent:
        await self.client.open(self)
        async with asyncio.timeout(20):
            await self.connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def run(self, config: ExecConfig) -> AgentExec:
        exec_id = new_exec_id()
        fut: asyncio.Future[AgentExec] = asyncio.get_running_loop().create_future()
        self.waiters[exec_id] = fut
        state = await self.client.start(exec_id, config, {})
        if state.finished:
            self.waiters.pop(exec_id, None)
        else:
            state = await fut
        await self.client.ack(exec_id)
        return state


async def _agent_runc(agent: DirectAgent, container_id: str, n: int) -> float:
    """Median ms of ``true`` in the container through the agent alone (no broker)."""
    config = ExecConfig(cmd=["true"], container_id=container_id)

    async def one() -> None:
        state = await agent.run(config)
        if state.exit is None or state.exit.exit_code != 0:
            raise RuntimeError(f"container exec through the agent ended badly: {state}")

    await drive(3, 1, one)
    run = await drive(n, 1, one)
    if not run.latencies:
        raise RuntimeError(f"every container exec failed: {dict(run.errors)}")
    return statistics.median(run.latencies) * 1000


async def agent(ctx: Ctx) -> AgentSection:
    if ctx.current is not None:
        raise RuntimeError("the agent phase runs before any worker (it would take the exits)")
    proc = await ctx.agent()
    say(f"agent alone (pid {proc.pid}): start + exit + ack through AgentClient")
    plan, config = ctx.plan, ExecConfig(cmd=CMD)
    meter = CpuMeter({"bench": os.getpid(), "agent": proc.pid})
    by_c: dict[str, float] = {}
    done, c1_p50 = 0, None
    async with DirectAgent(proc.sock) as direct:

        async def one() -> None:
            state = await direct.run(config)
            if state.exit is None or state.exit.exit_code != 0 or state.exit.stdout != b"hi\n":
                raise RuntimeError(f"agent exec ended badly: {state}")

        await drive(plan.warmup, 16, one)
        meter.start()
        for c in CONCURRENCY:
            run = await measure("agent", plan.agent_n, c, one, plan.warmup // 4)
            by_c[str(c)] = round(run.per_s, 1)
            done += run.n + plan.warmup // 4
            if c == 1 and run.latencies:
                c1_p50 = r(statistics.median(run.latencies) * 1000, 3)
        cpu = meter.stop(done)
        if ctx.container is not None:
            try:
                ctx.agent_runc_ms = r(await _agent_runc(direct, ctx.container.id, plan.runc_n), 2)
                say(f"runc: container exec through the agent alone {ctx.agent_runc_ms} ms")
            except Exception as exc:
                ctx.runc_reason = f"container exec through the agent failed: {exc!r}"
    return AgentSection(max(by_c.values()), by_c, c1_p50, cpu)
