"""Measuring: run an operation n times at some concurrency, percentiles, CPU and memory.

:func:`drive` runs an async operation ``n`` times with ``concurrency`` in
flight and times each call; :func:`measure` adds a warm-up and rounds (the
rate is the best round's: the machine is shared, the best round is the least
disturbed). :class:`CpuMeter` reads the CPU time of named processes from
``/proc/<pid>/stat`` over a span (and what the rest of the machine took
meanwhile); :class:`RssPeak` samples ``VmRSS`` of named processes until
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import say

Op = Callable[[], Awaitable[None]]

#: Every measured rate, by label: ``{"e2e c=64": [round1, round2, round3]}``.
ROUNDS: dict[str, list[float]] = {}


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


@dataclass
class Latency:
    """Percentiles of a sample, in ms."""

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        ms = sorted(x * 1000 for x in seconds)
        if not ms:
            return cls(0, None, None, None, None, None)
        return cls(
            len(ms),
            r(statistics.fmean(ms), 3),
            r(percentile(ms, 0.5), 3),
            r(percentile(ms, 0.9), 3),
            r(percentile(ms, 0.99), 3),
            r(ms[-1], 3),
        )


@dataclass
class Run:
    n: int
    concurrency: int
    seconds: float
    latencies: list[float]
    errors: Counter[str]
    rounds: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        """The best round's rate (the machine is shared: the best is the least disturbed)."""
        if self.rounds:
            return max(self.rounds)
        return self.n / self.seconds if self.seconds > 0 else 0.0


async def drive(n: int, concurrency: int, op: Op) -> Run:
    """Run ``op`` ``n`` times with ``concurrency`` in flight; time each and the whole."""
    remaining = iter(range(n))
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def lane() -> None:
        for _ in remaining:
            t = time.perf_counter()
            try:
                await op()
            except Exception as exc:
                errors[type(exc).__name__] += 1
                if sum(errors.values()) > max(10, n // 100):
                    raise
                continue
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Run(n, concurrency, time.perf_counter() - t0, latencies, errors)


async def measure(
    label: str, n: int, concurrency: int, op: Op, warmup: int, rounds: int = 3
) -> Run:
    """A warm-up, then ``n`` ops in ``rounds`` rounds; the rate is the best round's."""
    if warmup:
        await drive(warmup, concurrency, op)
    runs = [await drive(max(1, n // rounds), concurrency, op) for _ in range(rounds)]
    run = Run(
        sum(x.n for x in runs),
        concurrency,
        sum(x.seconds for x in runs),
        [lat for x in runs for lat in x.latencies],
        sum((x.errors for x in runs), Counter()),
        [x.per_s for x in runs],
    )
    ROUNDS[f"{label} c={concurrency}"] = [round(x, 1) for x in run.rounds]
    extra = f", errors {dict(run.errors)}" if run.errors else ""
    rates = "/".join(f"{x:.0f}" for x in run.rounds)
    say(f"{label} c={concurrency}: {run.n} in {run.seconds:.2f} s, rounds {rates}/s{extra}")
    return run


# -- /proc ---------------------------------------------------------------------


def proc_status(pid: int, key: str) -> float | None:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(own, reaped children) CPU seconds of a process, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (not idle or iowait), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def find_broker_pid(port: int) -> int | None:
    """The RabbitMQ node (``beam.smp``) listening on ``port``, to account its CPU time."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() != "beam.smp":
                continue
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
    return None


# -- CPU and memory -------------------------------------------------------------


@dataclass
class CpuReport:
    """CPU ms per exec of each process (``<name>_children``: the commands it reaped)."""

    cpu_ms_per_exec: dict[str, float]
    cpu_ms_per_exec_total: float
    cpu_share_ours: float
    cpu_share_others: float | None = None

    def by_role(self) -> dict[str, float]:
        """Summed by role: ``worker1`` and ``worker2`` count as ``worker``; the commands
        the agents reaped as ``spawned``."""
        out: dict[str, float] = {}
        for name, ms in self.cpu_ms_per_exec.items():
            role = "spawned" if name.endswith("_children") else name.rstrip("0123456789")
            out[role] = round(out.get(role, 0.0) + ms, 3)
        return out


class CpuMeter:
    """CPU seconds spent by each named process (and by the rest of the machine) in a span.

    ``broker`` is the whole RabbitMQ node: it includes whatever else uses it meanwhile.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.before: dict[str, tuple[float, float]] = {}
        self.machine0: float | None = None
        self.t0 = 0.0

    def _read(self) -> dict[str, tuple[float, float]]:
        return {k: c for k, pid in self.pids.items() if (c := cpu_seconds(pid)) is not None}

    def start(self) -> CpuMeter:
        self.before = self._read()
        self.machine0 = machine_busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def stop(self, n: int) -> CpuReport:
        after = self._read()
        machine1 = machine_busy_seconds()
        wall = time.perf_counter() - self.t0
        cores = os.cpu_count() or 1
        n = max(1, n)
        per_exec: dict[str, float] = {}
        for k, (own, children) in after.items():
            own0, children0 = self.before.get(k, (own, children))
            per_exec[k] = round((own - own0) * 1000 / n, 3)
            if children > children0:  # reaped children: the spawned commands
                per_exec[f"{k}_children"] = round((children - children0) * 1000 / n, 3)
        ours = sum(per_exec.values()) * n / 1000
        others = None
        if self.machine0 is not None and machine1 is not None:
            others = round(max(0.0, machine1 - self.machine0 - ours) / wall / cores, 3)
        return CpuReport(
            per_exec, round(sum(per_exec.values()), 3), round(ours / wall / cores, 3), others
        )


class RssPeak:
    """Samples ``VmRSS`` of named processes every ``interval`` s (``async with``)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.005) -> None:
        self.pids = pids
        self.interval = interval
        self.before = {k: proc_status(pid, "VmRSS") for k, pid in pids.items()}
        self.peak = {k: v or 0.0 for k, v in self.before.items()}
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            for k, pid in self.pids.items():
                self.peak[k] = max(self.peak[k], proc_status(pid, "VmRSS") or 0.0)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
