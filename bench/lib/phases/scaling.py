"""Scaling on this machine: 1 worker x 1 agent, 2 x 2 and 2 x 8 (agent processes on
Unix sockets), each in a namespace of its own, in lean mode.

The client spreads ``echo hi`` over the agents (round robin) with 64 in
flight; the CPU time per exec of every process (the workers, the agents and
the commands they reaped, the broker, this client) shows whether the cost
per exec grows with the number of agents (``total_vs_1x1``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil

from bench.lib import say
from bench.lib.context import CMD, MODES, Ctx, op_ok
from bench.lib.measure import CpuMeter, drive, measure, r
from bench.lib.sections import ScalePoint, ScalingSection

from execbus import Client
from execbus.testing.processes import Processes, purge

SHAPES = ((1, 1), (2, 2), (2, 8))  # (workers, agents)
CONCURRENCY = 64


async def _point(ctx: Ctx, workers: int, agents: int) -> ScalePoint:
    ns = f"{ctx.ns}s{workers}x{agents}"
    workdir = ctx.workdir / f"scale-{workers}x{agents}"
    workdir.mkdir()
    names = [f"s{i}" for i in range(agents)]
    with Processes(workdir, ctx.amqp_url, ns) as procs:
        try:
            for name in names:
                procs.add_agent(name, "--grace", "1")
            for agent in procs.agents.values():
                await agent.wait_listening()
            env = {
                "EXECBUS_LIFECYCLE_EVENTS": MODES["lean"],
                "EXECBUS_EVENT_LOOP": ctx.args.worker_loop,
            }
            for _ in range(workers):
                procs.add_worker(**env)
            await procs.wait_served()
            async with Client(ctx.amqp_url, namespace=ns) as client:
                turn = itertools.cycle(names)

                async def one() -> None:
                    op_ok(await client.run(next(turn), CMD, lifecycle_events=[]))

                await drive(ctx.plan.warmup, CONCURRENCY, one)
                pids: dict[str, int | None] = {"client": os.getpid(), "broker": ctx.broker_pid()}
                pids |= {f"worker{i}": w.pid for i, w in enumerate(procs.workers)}
                pids |= {f"agent{i}": a.pid for i, a in enumerate(procs.agents.values())}
                meter = CpuMeter(pids).start()
                label = f"scaling {workers}x{agents}"
                run = await measure(label, ctx.plan.scale_n, CONCURRENCY, one, 0)
                cpu = meter.stop(run.n)
        finally:
            await asyncio.to_thread(procs.stop, 5.0)
            say(await purge(ctx.amqp_url, ns, names))
    shutil.rmtree(workdir, ignore_errors=True)
    by_role = cpu.by_role()
    say(f"{label}: {run.per_s:.0f}/s, cpu ms per exec {cpu.cpu_ms_per_exec_total} {by_role}")
    return ScalePoint(
        workers, agents, CONCURRENCY, round(run.per_s, 1), by_role,
        cpu.cpu_ms_per_exec_total, cpu.cpu_share_ours, cpu.cpu_share_others,
    )  # fmt: skip


async def scaling(ctx: Ctx) -> ScalingSection:
    points = [await _point(ctx, w, a) for w, a in SHAPES]
    base = points[0].cpu_ms_per_exec_total
    for p in points:
        p.total_vs_1x1 = r(p.cpu_ms_per_exec_total / base, 2) if base else None
    return ScalingSection("lean", points)
