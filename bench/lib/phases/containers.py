"""Container execs: ``runc exec <id> true`` alone, through the agent alone (measured in
the agent phase), and ``client.run(..., container_id=<id>)`` end to end.

Needs root, ``runc`` and ``/bin/busybox`` (``execbus.testing.runc``); otherwise the
section only says why there are no figures.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time

from bench.lib import say
from bench.lib.context import AGENT, Ctx
from bench.lib.measure import drive, r
from bench.lib.sections import RuncSection

from execbus.testing.runc import BusyboxContainer


def cli_ms(container: BusyboxContainer, command: str, n: int) -> list[float]:
    """Wall ms of ``runc exec <id> true`` or ``runc state <id>`` (after a warm-up)."""
    argv = ["runc", "--root", str(container.root), command, container.id]
    if command == "exec":
        argv.append("true")
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        times.append((time.perf_counter() - t) * 1000)
    return times


async def runc(ctx: Ctx) -> RuncSection:
    await ctx.agent()
    container = ctx.container
    if container is None or ctx.runc_reason is not None:
        reason = ctx.runc_reason or "no container"
        say(f"runc skipped: {reason}")
        return RuncSection(reason=reason)
    await ctx.worker("full")
    client = await ctx.client()
    n = ctx.plan.runc_n
    say(f"runc: e2e exec into {container.id}, then `runc exec` alone")

    async def one() -> None:
        result = await client.run(AGENT, ["true"], container_id=container.id)
        if result.exit_code != 0:
            raise RuntimeError(f"container exec ended with {result.exit_code}")

    try:
        await drive(3, 1, one)
        run = await drive(n, 1, one)
        if not run.latencies:
            raise RuntimeError(f"every container exec failed: {dict(run.errors)}")
        exec_ms = statistics.median(await asyncio.to_thread(cli_ms, container, "exec", n))
        state_ms = statistics.median(await asyncio.to_thread(cli_ms, container, "state", n))
    except Exception as exc:
        ctx.runc_reason = f"container exec failed: {exc!r}"
        say(f"runc skipped: {ctx.runc_reason}")
        return RuncSection(reason=ctx.runc_reason)
    section = RuncSection(
        runc_exec_ms=r(exec_ms, 2),
        agent_runc_ms=ctx.agent_runc_ms,
        e2e_runc_ms=r(statistics.median(run.latencies) * 1000, 2),
        runc_state_ms=r(state_ms, 2),
        n=n,
    )
    say(f"runc exec {section.runc_exec_ms} ms alone, {section.e2e_runc_ms} ms end to end")
    return section
