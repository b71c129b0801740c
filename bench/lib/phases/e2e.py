"""End to end through the bus: ``client.run(a1, ["echo", "hi"])`` in both event modes.

``full`` runs against a worker with the default lifecycle events (``exec.created``,
``exec.started`` and the exit notification); ``lean`` against a worker with
``EXECBUS_LIFECYCLE_EVENTS=none``, each request asking ``lifecycle_events: []``
(the exit notification only: like for like with Celery, which publishes no
events). Each: a warm-up, then concurrency 1 (the latency percentiles), 16
and 64, with the CPU time per exec of every process. ``breakdown`` splits a
concurrency-1 ``true`` into stages from its events and the agent's timestamps
(it needs ``exec.created``: full mode).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from bench.lib import say
from bench.lib.context import AGENT, CMD, MODES, Ctx, op_ok
from bench.lib.measure import CpuMeter, CpuReport, Latency, drive, measure, proc_status, r
from bench.lib.sections import STAGES, BreakdownSection, E2eSection, Stages

from execbus import Client

CONCURRENCY = (1, 16, 64)


def e2e_op(client: Client, mode: str) -> Callable[[], Awaitable[None]]:
    """One exec of ``CMD`` in lifecycle mode ``mode``."""
    if mode == "lean":

        async def lean() -> None:
            op_ok(await client.run(AGENT, CMD, lifecycle_events=[]))

        return lean

    async def full() -> None:
        op_ok(await client.run(AGENT, CMD))

    return full


async def _e2e(ctx: Ctx, mode: str) -> E2eSection:
    state = await ctx.worker(mode)
    client = await ctx.client()
    plan, one = ctx.plan, e2e_op(client, mode)
    await drive(plan.warmup, 16, one)
    await drive(plan.warmup // 4, 1, one)
    if state.rss_warm is None:
        state.rss_warm = proc_status(state.proc.pid, "VmRSS")
        state.records_warm = await asyncio.to_thread(ctx.registry_size)
    per_s: dict[str, float] = {}
    cpu: dict[int, CpuReport] = {}
    errors: dict[str, dict[str, int]] = {}
    latency = Latency.of([])
    for c in CONCURRENCY:
        n = plan.e2e_serial if c == 1 else plan.e2e_n
        meter = CpuMeter(ctx.pids()).start()
        run = await measure(f"e2e {mode}", n, c, one, 0 if c == 1 else plan.warmup // 4)
        cpu[c] = meter.stop(n)
        per_s[str(c)] = round(run.per_s, 1)
        if run.errors:
            errors[f"e2e_c{c}"] = dict(run.errors)
        if c == 1:
            latency = Latency.of(run.latencies)
            say(f"e2e {mode} latency c=1: p50 {latency.p50} ms, p99 {latency.p99} ms")
    peak_c = max(CONCURRENCY, key=lambda c: per_s[str(c)])
    top = cpu[max(CONCURRENCY)]  # the CPU per exec where the machine is busiest
    say(f"e2e {mode}: cpu ms per exec at c={max(CONCURRENCY)}: {top.by_role()}")
    request: list[str] | None = [] if mode == "lean" else None
    return E2eSection(
        mode, MODES[mode], request, per_s, per_s[str(peak_c)], peak_c, latency, cpu,
        top.by_role(), top.cpu_ms_per_exec_total, errors,
    )  # fmt: skip


async def full(ctx: Ctx) -> E2eSection:
    return await _e2e(ctx, "full")


async def lean(ctx: Ctx) -> E2eSection:
    return await _e2e(ctx, "lean")


async def _stages(client: Client, n: int, container_id: str = "") -> Stages:
    """Median ms of each stage of a serial run, from the exec's events and agent times."""
    cmd = ["true"]
    rows: list[list[float]] = []
    async with client.events(agent=AGENT) as sub:
        for _ in range(n + 3):
            t0 = time.time()
            result = await client.run(AGENT, cmd, container_id=container_id)
            t1 = time.time()
            seen: dict[str, float] = {}
            async with asyncio.timeout(10):
                while "exec.created" not in seen or "exec.exited" not in seen:
                    event = await sub.__anext__()
                    if event.exec_id == result.exec_id:
                        seen[event.type] = event.time.timestamp()
            info = result.info
            if info is None or info.exit is None or info.exit.started_at is None:
                continue
            began = info.exit.started_at.timestamp()
            ended = (info.exit.finished_at or info.exit.started_at).timestamp()
            created, exited = seen["exec.created"], seen["exec.exited"]
            rows.append([created - t0, began - created, ended - began, exited - ended, t1 - exited])
            rows[-1].append(t1 - t0)
    rows = rows[3:]  # warm-up
    if not rows:
        return Stages(0, cmd)
    medians = [r(statistics.median(col) * 1000, 2) for col in zip(*rows, strict=True)]
    return Stages(len(rows), cmd, *medians)


async def breakdown(ctx: Ctx) -> BreakdownSection:
    say("latency breakdown of `true` at concurrency 1 (events + agent timestamps)")
    await ctx.worker("full")
    client = await ctx.client()
    section = BreakdownSection(await _stages(client, ctx.plan.runc_n * 2))
    if ctx.container is not None and ctx.runc_reason is None:
        section.runc = await _stages(client, ctx.plan.runc_n, ctx.container.id)
    for where, stages in (("host", section.host), ("runc", section.runc)):
        if stages is not None:
            text = ", ".join(f"{k} {getattr(stages, k)}" for k, _ in STAGES)
            say(f"{where}: {text}; total {stages.total} ms")
    return section
