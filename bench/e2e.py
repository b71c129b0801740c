#!/usr/bin/env python3
"""End-to-end benchmark: execs per second and latency through the whole system.

Starts its own agent (``python -m execbus.agent`` on a Unix socket in a temp
dir) and worker (``python -m execbus worker``, unique namespace ``bench<hex>``)
against the local RabbitMQ and measures, each after a warm-up:

* ``spawn_per_s``   the machine's limit: raw ``asyncio.create_subprocess_exec("echo", "hi")``
                    (stdout/stderr piped, like every exec here) + wait, at 1/16/32/64 in flight
* ``agent_per_s``   execs/s through the agent alone (``AgentClient`` start + exit + ack, no broker)
* ``e2e_per_s``     execs/s client -> broker -> worker -> agent -> back, at concurrency 1, 16, 64
* ``e2e_p50_ms``, ``e2e_p99_ms``  request-to-result latency at concurrency 1
* ``runc_exec_ms``, ``e2e_runc_ms``  ``runc exec <id> true`` alone, and
                    ``client.run(..., container_id=<id>)`` (root and runc only; busybox rootfs)
* ``worker_rss_mb`` worker VmRSS with 100,000 finished execs in its registry (measured with
                    ``--full``; otherwise extrapolated linearly from the records pushed)
* ``agent_rss_mb``  agent VmRSS peak while ``head -c 100MiB /dev/zero`` runs through it

``--with-celery`` also runs the Celery baseline (``../shared/bench/celery_peer.py``) right
after the e2e, runc and latency phases, with our worker and agent idle (so both systems meet the
same host), and prints the ratios and a ``targets`` object with pass/fail.
``--profile`` samples the worker, the agent and this process with py-spy (when installed)
during extra concurrency-64 runs (one per process) and summarises where the time goes;
``latency_breakdown_ms`` splits a concurrency-1 exec into stages from its events, and
``cpu`` gives the CPU ms per exec of each process (and the share other work took).
Rates are the best of 3 rounds (``rounds_per_s`` has them all). See docs/performance.md.

Progress goes to stderr; exactly one JSON object goes to stdout (also written to
``bench/out/e2e.json``). The plot is ``bench/out/throughput.svg`` (``--update-docs``
copies it to ``docs/performance-throughput.svg``).

Usage: bench/e2e.py [--quick | --full] [--with-celery] [--profile] [--update-docs]
                    [--amqp-url URL] [--celery-script PATH] [--no-runc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from execbus import Client  # noqa: E402
from execbus.cli.purge import purge_namespace  # noqa: E402
from execbus.connections.agent_client import AgentClient  # noqa: E402
from execbus.connections.base import AgentExec  # noqa: E402
from execbus.connections.factory import unix_dialer  # noqa: E402
from execbus.wire.config import ExecConfig  # noqa: E402
from execbus.wire.ids import new_exec_id  # noqa: E402

OUT = ROOT / "bench" / "out"
DOCS = ROOT / "docs"
DEFAULT_CELERY = ROOT.parent / "shared" / "bench" / "celery_peer.py"
AGENT = "a1"
CMD = ["echo", "hi"]
E2E_CONCURRENCY = (1, 16, 64)
LIMIT_CONCURRENCY = (1, 16, 32, 64)
RSS_RECORDS = 100_000
FLOOD_BYTES = 100 * 1024 * 1024
T0 = time.monotonic()


@dataclass(frozen=True)
class Plan:
    """How many operations each measurement does."""

    name: str
    spawn_n: int  # per concurrency
    agent_n: int  # per concurrency
    e2e_serial: int  # concurrency 1: latency samples (and throughput)
    e2e_n: int  # per concurrency > 1
    warmup: int
    runc_n: int
    celery_n: int
    celery_serial: int
    profile_n: int


PLANS = {
    "quick": Plan("quick", 300, 300, 150, 800, 50, 10, 400, 50, 600),
    "default": Plan("default", 2000, 2000, 1000, 6000, 200, 40, 2000, 200, 3000),
}


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def kill_group(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (the whole process group)."""
    if proc is None or proc.poll() is not None:
        return
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        proc.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Stack:
    """The agent and the worker under test (subprocesses, killed at the end whatever happens)."""

    def __init__(self, amqp_url: str, ns: str, workdir: Path, runc_root: Path | None) -> None:
        self.amqp_url = amqp_url
        self.ns = ns
        self.workdir = workdir
        self.runc_root = runc_root
        self.sock = workdir / "agent.sock"
        self.http_port = free_port()
        self.agent: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.worker_loop = "auto"

    def _spawn(
        self, argv: list[str], env: dict[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start_agent(self) -> None:
        argv = [sys.executable, "-m", "execbus.agent", "--listen", f"unix://{self.sock}"]
        argv += ["--grace", "1"]
        if self.runc_root is not None:
            argv += ["--runc-root", str(self.runc_root)]
        self.agent = self._spawn(argv, self.env, "agent.log")

    def start_worker(self) -> None:
        env = dict(
            self.env,
            EXECBUS_AMQP_URL=self.amqp_url,
            EXECBUS_NAMESPACE=self.ns,
            EXECBUS_REGISTRY_RETENTION="86400",
            EXECBUS_REGISTRY_MAX_RECORDS=str(RSS_RECORDS + 50_000),
            EXECBUS_SHUTDOWN_GRACE="2",
            EXECBUS_EVENT_LOOP=self.worker_loop,
        )
        argv = [sys.executable, "-m", "execbus", "worker", "--agent", f"{AGENT}=unix://{self.sock}"]
        argv += ["--http-port", str(self.http_port)]
        self.worker = self._spawn(argv, env, "worker.log")

    def check_alive(self) -> None:
        for name, proc in (("agent", self.agent), ("worker", self.worker)):
            if proc is not None and proc.poll() is not None:
                log = tail(self.workdir / f"{name}.log")
                raise RuntimeError(f"the {name} exited with {proc.returncode}:\n{log}")

    def readyz(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))
        except (OSError, ValueError):
            return None

    def registry_size(self) -> int | None:
        status = self.readyz()
        if status is None:
            return None
        return status.get("agents", {}).get(AGENT, {}).get("execs")

    async def wait_agent(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not listen:\n{tail(self.workdir / 'agent.log')}")
            await asyncio.sleep(0.05)

    async def wait_worker(self, timeout: float = 60.0) -> None:
        """Until /readyz says this worker owns agent a1 and is connected to it."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            status = await asyncio.to_thread(self.readyz)
            agent = (status or {}).get("agents", {}).get(AGENT, {})
            if status and status.get("ready") and agent.get("owner") and agent.get("connected"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the worker did not become ready ({status}):\n"
                    f"{tail(self.workdir / 'worker.log')}"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.worker)
        stop_process(self.agent)

    def kill(self) -> None:
        for proc in (self.worker, self.agent):
            kill_group(proc)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


# -- measuring -------------------------------------------------------------


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


async def drive(n: int, concurrency: int, op: Callable[[], Awaitable[None]]) -> Run:
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


ROUNDS: dict[str, list[float]] = {}


async def measure(
    label: str,
    n: int,
    concurrency: int,
    op: Callable[[], Awaitable[None]],
    warmup: int,
    rounds: int = 3,
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


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


async def spawn_once() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CMD, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or out != b"hi\n":
        raise RuntimeError(f"echo failed: {proc.returncode}")


async def measure_spawn(plan: Plan) -> dict[str, Any]:
    """Raw asyncio spawns (the default child watcher), and with a pidfd watcher for reference."""
    by_c: dict[str, float] = {}
    await drive(plan.warmup, 16, spawn_once)
    meter = CpuMeter({"bench": os.getpid()})
    meter.start()
    done = 0
    for c in LIMIT_CONCURRENCY:
        run = await measure("spawn", plan.spawn_n, c, spawn_once, plan.warmup // 4)
        by_c[str(c)] = round(run.per_s, 1)
        done += run.n + plan.warmup // 4
    cpu = meter.stop(done)
    pidfd = None
    if hasattr(asyncio, "PidfdChildWatcher"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old = asyncio.get_child_watcher()
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)
        try:
            run = await measure("spawn (pidfd watcher)", plan.spawn_n, 32, spawn_once, 50)
            pidfd = round(run.per_s, 1)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                asyncio.set_child_watcher(old)
    return {"per_s": max(by_c.values()), "by_concurrency": by_c, "pidfd_per_s": pidfd, "cpu": cpu}


class ExitCollector:
    """An AgentListener that hands exit events to whoever waits for them."""

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[AgentExec]] = {}
        self.connected = asyncio.Event()

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


class DirectAgent:
    """Execs through ``AgentClient`` alone: start, wait for the exit event, ack."""

    def __init__(self, sock: Path) -> None:
        self.collector = ExitCollector()
        self.client = AgentClient("bench", unix_dialer(str(sock)), call_timeout=30.0, heartbeat=5.0)

    async def __aenter__(self) -> DirectAgent:
        await self.client.open(self.collector)
        async with asyncio.timeout(20):
            await self.collector.connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def run(self, config: ExecConfig) -> AgentExec:
        exec_id = new_exec_id()
        fut: asyncio.Future[AgentExec] = asyncio.get_running_loop().create_future()
        self.collector.waiters[exec_id] = fut
        state = await self.client.start(exec_id, config, {})
        if state.finished:
            self.collector.waiters.pop(exec_id, None)
        else:
            state = await fut
        await self.client.ack(exec_id)
        return state


async def measure_agent(sock: Path, plan: Plan, agent_pid: int) -> dict[str, Any]:
    """Execs per second through the agent alone, at several concurrencies."""
    config = ExecConfig(cmd=CMD)
    meter = CpuMeter({"bench": os.getpid(), "agent": agent_pid})
    done = 0
    async with DirectAgent(sock) as agent:

        async def one() -> None:
            state = await agent.run(config)
            if state.exit is None or state.exit.exit_code != 0 or state.exit.stdout != b"hi\n":
                raise RuntimeError(f"agent exec ended badly: {state}")

        await drive(plan.warmup, 16, one)
        meter.start()
        by_c: dict[str, float] = {}
        for c in LIMIT_CONCURRENCY:
            run = await measure("agent", plan.agent_n, c, one, plan.warmup // 4)
            by_c[str(c)] = round(run.per_s, 1)
            done += run.n + plan.warmup // 4
    return {"per_s": max(by_c.values()), "by_concurrency": by_c, "cpu": meter.stop(done)}


async def measure_agent_runc(sock: Path, container_id: str, n: int) -> float:
    """Median ms of ``true`` in the container through the agent alone (no broker)."""
    config = ExecConfig(cmd=["true"], container_id=container_id)
    async with DirectAgent(sock) as agent:

        async def one() -> None:
            state = await agent.run(config)
            if state.exit is None or state.exit.exit_code != 0:
                raise RuntimeError(f"container exec through the agent ended badly: {state}")

        await drive(3, 1, one)
        run = await drive(n, 1, one)
    if not run.latencies:
        raise RuntimeError(f"every container exec failed: {dict(run.errors)}")
    return statistics.median(run.latencies) * 1000


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (not idle or iowait), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by each component (and by the rest of the machine) in a span.

    ``broker`` is the whole RabbitMQ node: it includes whatever else uses it meanwhile.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.before: dict[str, tuple[float, float]] = {}
        self.machine0: float | None = None
        self.t0 = 0.0

    def _read(self) -> dict[str, tuple[float, float]]:
        return {k: c for k, pid in self.pids.items() if (c := cpu_seconds(pid)) is not None}

    def start(self) -> None:
        self.before = self._read()
        self.machine0 = machine_busy_seconds()
        self.t0 = time.perf_counter()

    def stop(self, n: int) -> dict[str, Any]:
        after = self._read()
        machine1 = machine_busy_seconds()
        wall = time.perf_counter() - self.t0
        cores = os.cpu_count() or 1
        per_exec: dict[str, float] = {}
        for k, (own, children) in after.items():
            own0, children0 = self.before.get(k, (own, children))
            per_exec[k] = round((own - own0) * 1000 / n, 3)
            if children > children0:  # reaped children: the spawned commands
                per_exec[f"{k}_children"] = round((children - children0) * 1000 / n, 3)
        ours = sum(per_exec.values()) * n / 1000
        out: dict[str, Any] = {
            "cpu_ms_per_exec": per_exec,
            "cpu_ms_per_exec_total": round(sum(per_exec.values()), 3),
            "cpu_share_ours": round(ours / wall / cores, 3),
        }
        if self.machine0 is not None and machine1 is not None:
            others = max(0.0, machine1 - self.machine0 - ours)
            out["cpu_share_others"] = round(others / wall / cores, 3)
        return out


# -- py-spy ------------------------------------------------------------------


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy (raw, collapsed stacks, full file names) on one process."""

    def __init__(self, exe: str, name: str, pid: int, rate: int = 250) -> None:
        self.name = name
        self.file = OUT / f"profile-{name}.txt"
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
        argv += ["--full-filenames", "--format", "raw", "--output", str(self.file)]
        with open(OUT / f"profile-{name}.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def stop(self) -> None:
        kill_group(self.proc, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)


def frame_name(frame: str) -> str:
    """``func (/path/to/pkg/file.py:123)`` -> ``pkg/file.py:func`` (line numbers merged)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "/src/execbus/" in path:
        path = "execbus/" + path.split("/src/execbus/", 1)[1]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3." in path:
        path = path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return f"{path}:{name}"


# Where a sample's innermost frame is, by file: the categories of "where the time goes".
CATEGORIES = (
    ("idle (waiting in epoll)", ("selectors.py:",)),
    ("socket send (syscall)", ("asyncio/selector_events.py:_SelectorSocketTransport.write",)),
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("json", ("json/",)),
    ("logging", ("logging/",)),
    ("process spawn (subprocess)", ("subprocess.py:",)),
    ("tenacity", ("tenacity/",)),
    ("asyncio (event loop, tasks, streams)", ("asyncio/",)),
    ("execbus code", ("execbus/",)),
)


def category(frame: str) -> str:
    for label, prefixes in CATEGORIES:
        if frame.startswith(prefixes):
            return label
    return "other"


def summarise_stacks(path: Path, top: int = 12) -> dict[str, Any]:
    """Per-function self and inclusive shares of the busy (non-idle) samples of a py-spy
    raw profile, and the busy samples by category (where the innermost frame is)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [frame_name(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        cat = category(frames[-1])
        if cat.startswith("idle"):
            idle += count
            continue
        cats[cat] += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    busy = total - idle
    if busy <= 0:
        return {"busy_samples": 0}

    def pct(items: list[tuple[str, int]]) -> list[list[Any]]:
        return [[k, round(100 * v / busy, 1)] for k, v in items[:top]]

    # Inclusive: execbus functions below the entry points (those are in every sample).
    ours = [(k, v) for k, v in incl.most_common() if k.startswith("execbus/") and v < 0.75 * busy]
    return {
        "busy_samples": busy,
        "busy_by_category_pct": dict(pct(cats.most_common())),
        "busy_self_pct": pct(self_t.most_common()),
        "busy_inclusive_execbus_pct": pct(ours),
    }


# -- runc ------------------------------------------------------------------


class RuncContainer:
    """A busybox container (``sleep 1000``) under a private runc root."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "runc-state"
        self.bundle = workdir / "bundle"
        self.id = f"bench-{uuid.uuid4().hex[:8]}"
        self.started = False

    @staticmethod
    def unavailable() -> str | None:
        if os.geteuid() != 0:
            return "not root"
        if shutil.which("runc") is None:
            return "runc is not on PATH"
        if not Path("/bin/busybox").exists():
            return "no /bin/busybox (busybox-static) to build a rootfs"
        return None

    def create(self) -> None:
        rootfs = self.bundle / "rootfs"
        bindir = rootfs / "bin"
        bindir.mkdir(parents=True)
        for d in ("proc", "dev", "sys", "tmp", "etc"):
            (rootfs / d).mkdir()
        shutil.copy2("/bin/busybox", bindir / "busybox")
        applets = subprocess.run(
            ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        subprocess.run(["runc", "spec"], cwd=self.bundle, check=True, capture_output=True)
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["args"] = ["sleep", "1000"]
        config["process"]["terminal"] = False
        config["root"]["readonly"] = False
        config_path.write_text(json.dumps(config, indent=2))
        # The detached container inherits runc's stdio: never a pipe (EOF would never come).
        self.started = True
        errors = self.bundle.parent / "runc-run.err"
        with open(errors, "wb") as err:
            proc = subprocess.run(
                [
                    "runc",
                    "--root",
                    str(self.root),
                    "run",
                    "-d",
                    "--bundle",
                    str(self.bundle),
                    self.id,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=30,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"runc run failed: {errors.read_text(errors='replace').strip()}")

    def cli_ms(self, command: str, n: int = 30) -> list[float]:
        """Wall ms of ``runc exec <id> true`` or ``runc state <id>`` (after a warm-up)."""
        argv = ["runc", "--root", str(self.root), command, self.id]
        if command == "exec":
            argv.append("true")
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            times.append((time.perf_counter() - t) * 1000)
        return times

    def delete(self) -> None:
        if self.started:
            self.started = False
            subprocess.run(
                ["runc", "--root", str(self.root), "delete", "-f", self.id],
                capture_output=True,
                timeout=30,
                check=False,
            )


# -- the broker --------------------------------------------------------------


def list_queues(prefix: str) -> list[str]:
    """Queue names starting with ``prefix`` (``rabbitmqctl``; empty, with a note, if it fails)."""
    if shutil.which("rabbitmqctl") is None:
        return []
    for _ in range(3):
        try:
            proc = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "name"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"rabbitmqctl list_queues failed: {exc}")
            continue
        if proc.returncode == 0:
            return [q for q in proc.stdout.split() if q.startswith(prefix)]
        say(f"rabbitmqctl list_queues failed: {proc.stderr.strip()[-200:]}")
    return []


async def delete_names(amqp_url: str, queues: list[str], exchanges: list[str]) -> int:
    import aio_pika

    deleted = 0
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        for name in queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
                deleted += 1
            except Exception as exc:
                say(f"cannot delete queue {name}: {exc!r}")
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        for name in exchanges:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except Exception as exc:
                say(f"cannot delete exchange {name}: {exc!r}")
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
    finally:
        await connection.close()
    return deleted


async def cleanup_namespace(amqp_url: str, ns: str) -> None:
    """Delete every queue and exchange of the benchmark's namespace (``execbus purge``'s code)."""
    try:
        async with asyncio.timeout(60):
            report = await purge_namespace(amqp_url, ns, agents=[AGENT])
        say(report.summary().replace("purged namespace", f"purged namespace {ns}"))
    except Exception as exc:
        say(f"namespace cleanup failed ({exc!r}); run `execbus purge --namespace {ns}`")


# -- the Celery baseline -----------------------------------------------------


def run_celery(script: Path, amqp_url: str, plan: Plan) -> dict[str, Any]:
    if not script.exists():
        return {"error": f"{script} not found"}
    before = set(list_queues("celery-peer-"))
    argv = [sys.executable, str(script), "--amqp-url", amqp_url]
    argv += ["--n", str(plan.celery_n), "--serial", str(plan.celery_serial)]
    say(f"celery baseline: {' '.join(argv[1:])}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "the celery baseline timed out after 600 s"}
    finally:
        leftover = sorted(set(list_queues("celery-peer-")) - before)
        if leftover:  # the peer leaves its (durable) task queue behind
            try:
                asyncio.run(delete_names(amqp_url, leftover, []))
                say(f"deleted the baseline's queue(s) {', '.join(leftover)}")
            except Exception as exc:
                say(f"could not delete the baseline's queue(s) {leftover}: {exc!r}")
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            if isinstance(result, dict):
                if proc.returncode != 0 and "error" not in result:
                    result["error"] = f"exit code {proc.returncode}"
                return result
    return {"error": f"no JSON from the celery baseline (exit {proc.returncode})"}


# -- the plot ----------------------------------------------------------------


def nice_step(span: float) -> float:
    raw = span / 5
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def svg_plot(result: dict[str, Any]) -> str:
    """A hand-made SVG line chart of execs/s against concurrency (log2 x axis)."""
    w, h, left, right, top, bottom = 740, 420, 70, 215, 50, 55
    xs = sorted({*LIMIT_CONCURRENCY, *E2E_CONCURRENCY})
    lx = {c: c.bit_length() - 1 for c in xs}  # log2 of powers of two
    series: list[tuple[str, str, str, dict[int, float]]] = []

    def pts(d: dict[str, float] | None) -> dict[int, float]:
        return {int(k): v for k, v in (d or {}).items() if v is not None}

    series.append(
        ("spawn limit (asyncio)", "#888888", "6,4", pts(result.get("spawn_by_concurrency")))
    )
    series.append(("agent alone", "#2a9d4a", "", pts(result.get("agent_by_concurrency"))))
    series.append(("execbus end to end", "#1f5fbf", "", pts(result.get("e2e_per_s"))))
    celery = result.get("celery") or {}
    celery_line = celery.get("per_s") if isinstance(celery.get("per_s"), int | float) else None
    ymax = max([v for *_, s in series for v in s.values()] + [2 * (celery_line or 0), 1.0])
    step = nice_step(ymax * 1.1)
    ytop = step * (int(ymax * 1.1 / step) + 1)
    pw, ph = w - left - right, h - top - bottom
    maxlx = max(lx.values())

    def X(c: int) -> float:
        return left + pw * lx[c] / maxlx

    def Y(v: float) -> float:
        return top + ph * (1 - v / ytop)

    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">execbus: execs/s '
        f"against concurrency (echo hi, {os.cpu_count()} cores)</text>",
    ]
    y = 0.0
    while y <= ytop + 1e-9:
        o.append(
            f'<line x1="{left}" y1="{Y(y):.1f}" x2="{left + pw}" y2="{Y(y):.1f}" stroke="#e5e5e5"/>'
        )
        o.append(f'<text x="{left - 8}" y="{Y(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        y += step
    for c in xs:
        o.append(
            f'<line x1="{X(c):.1f}" y1="{top}" x2="{X(c):.1f}" y2="{top + ph}" stroke="#f0f0f0"/>'
        )
        o.append(f'<text x="{X(c):.1f}" y="{top + ph + 18}" text-anchor="middle">{c}</text>')
    o.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444444"/>'
    )
    o.append(
        f'<text x="{left + pw / 2}" y="{h - 12}" text-anchor="middle">'
        "concurrency (execs in flight, log scale)</text>"
    )
    o.append(
        f'<text transform="translate(18,{top + ph / 2}) rotate(-90)" '
        'text-anchor="middle">execs per second</text>'
    )
    legend: list[tuple[str, str, str]] = []
    for label, color, dash, s in series:
        if not s:
            continue
        path = " ".join(f"{X(c):.1f},{Y(v):.1f}" for c, v in sorted(s.items()) if c in lx)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        o.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5"'
            f"{dash_attr}/>"
        )
        for c, v in sorted(s.items()):
            if c in lx:
                o.append(f'<circle cx="{X(c):.1f}" cy="{Y(v):.1f}" r="3.5" fill="{color}"/>')
                o.append(
                    f'<text x="{X(c) + 5:.1f}" y="{Y(v) - 6:.1f}" fill="{color}" '
                    f'font-size="10">{v:.0f}</text>'
                )
        legend.append((label, color, dash))
    if celery_line:
        for value, color, dash, label in (
            (celery_line, "#e07b00", "2,3", f"Celery, {celery.get('n', '?')} in flight"),
            (2 * celery_line, "#c0392b", "8,3,2,3", "target: 2x Celery"),
        ):
            o.append(
                f'<line x1="{left}" y1="{Y(value):.1f}" x2="{left + pw}" y2="{Y(value):.1f}" '
                f'stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>'
            )
            legend.append((label, color, dash))
    lx0 = left + pw + 15
    for i, (label, color, dash) in enumerate(legend):
        ly = top + 10 + i * 22
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        o.append(
            f'<line x1="{lx0}" y1="{ly}" x2="{lx0 + 24}" y2="{ly}" stroke="{color}" '
            f'stroke-width="2.5"{dash_attr}/>'
        )
        o.append(f'<text x="{lx0 + 30}" y="{ly + 4}" font-size="11">{label}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


# -- targets -----------------------------------------------------------------


def targets(res: dict[str, Any]) -> dict[str, Any]:
    def check(value: float | None, op: str, limit: float | None) -> dict[str, Any]:
        if value is None or limit is None:
            return {"value": r(value, 3), "target": f"{op} {r(limit, 3)}", "pass": None}
        ok = value >= limit if op == ">=" else value <= limit
        return {"value": r(value, 3), "target": f"{op} {r(limit, 3)}", "pass": ok}

    spawn = res.get("spawn_per_s")
    e2e_peak = res.get("e2e_peak_per_s")
    return {
        "e2e_vs_celery_throughput": check(res.get("e2e_vs_celery_throughput"), ">=", 2.0),
        "e2e_vs_spawn_throughput": check(
            e2e_peak / spawn if e2e_peak and spawn else None, ">=", 0.6
        ),
        "e2e_vs_celery_p50": check(res.get("e2e_vs_celery_p50"), "<=", 0.6),
        "agent_vs_spawn": check(
            res["agent_per_s"] / spawn if res.get("agent_per_s") and spawn else None, ">=", 0.85
        ),
        "worker_rss_mb": check(res.get("worker_rss_mb"), "<=", 150.0),
        "agent_rss_mb": check(res.get("agent_rss_mb"), "<=", 64.0),
    }


# -- the run -----------------------------------------------------------------


async def run_bench(args: argparse.Namespace, plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = state["result"]
    ns = state["ns"]
    workdir: Path = state["workdir"]

    say(f"spawn limit: {CMD} through asyncio, stdout/stderr piped")
    spawn = await measure_spawn(plan)
    res["spawn_per_s"] = spawn["per_s"]
    res["spawn_by_concurrency"] = spawn["by_concurrency"]
    res["spawn_pidfd_per_s"] = spawn["pidfd_per_s"]
    cpu: dict[str, Any] = {"spawn": spawn["cpu"]}
    res["cpu"] = cpu

    container: RuncContainer | None = None
    runc_reason = "disabled by --no-runc" if args.no_runc else RuncContainer.unavailable()
    if runc_reason is None:
        container = RuncContainer(workdir)
        state["container"] = container
        try:
            await asyncio.to_thread(container.create)
            say(f"runc container {container.id} running")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            runc_reason = f"cannot run a runc container here: {exc}"
            container = None

    stack = Stack(args.amqp_url, ns, workdir, container.root if container else None)
    stack.worker_loop = args.worker_loop
    state["stack"] = stack
    stack.start_agent()
    await stack.wait_agent()
    assert stack.agent is not None
    agent_pid = stack.agent.pid
    say(f"agent alone (pid {agent_pid}): start + exit + ack through AgentClient")
    agent = await measure_agent(stack.sock, plan, agent_pid)
    res["agent_per_s"] = agent["per_s"]
    res["agent_by_concurrency"] = agent["by_concurrency"]
    cpu["agent"] = agent["cpu"]
    if container is not None:
        try:
            res["agent_runc_ms"] = r(
                await measure_agent_runc(stack.sock, container.id, plan.runc_n), 2
            )
            say(f"runc: container exec through the agent alone {res['agent_runc_ms']} ms")
        except Exception as exc:
            runc_reason = f"container exec through the agent failed: {exc!r}"
            container = None

    stack.start_worker()
    await stack.wait_worker()
    assert stack.worker is not None
    worker_pid = stack.worker.pid
    say(f"worker (pid {worker_pid}) owns agent {AGENT} in namespace {ns}")
    rss_start = proc_status(worker_pid, "VmRSS")

    async with Client(args.amqp_url, namespace=ns) as client:

        async def e2e_one() -> None:
            result = await client.run(AGENT, CMD)
            if result.exit_code != 0 or result.stdout != b"hi\n":
                raise RuntimeError(f"e2e exec ended badly: {result}")

        await drive(plan.warmup, 16, e2e_one)
        await drive(plan.warmup // 4, 1, e2e_one)
        rss_warm = proc_status(worker_pid, "VmRSS")
        records_warm = await asyncio.to_thread(stack.registry_size) or 0

        e2e: dict[str, float] = {}
        broker_pid = find_broker_pid(urllib.parse.urlsplit(args.amqp_url).port or 5672)
        res["machine"]["broker_pid"] = broker_pid
        for c in E2E_CONCURRENCY:
            n = plan.e2e_serial if c == 1 else plan.e2e_n
            meter = CpuMeter(
                {
                    "client": os.getpid(),
                    "worker": worker_pid,
                    "agent": agent_pid,
                    "broker": broker_pid,
                }
            )
            meter.start()
            run = await measure("e2e", n, c, e2e_one, 0 if c == 1 else plan.warmup // 4)
            cpu[f"e2e_c{c}"] = meter.stop(n)
            e2e[str(c)] = round(run.per_s, 1)
            if run.errors:
                res.setdefault("errors", {})[f"e2e_c{c}"] = dict(run.errors)
            if c == 1:
                lat = sorted(x * 1000 for x in run.latencies)
                res["e2e_p50_ms"] = r(percentile(lat, 0.5), 3)
                res["e2e_p99_ms"] = r(percentile(lat, 0.99), 3)
                res["e2e_latency_ms"] = {
                    "n": len(lat),
                    "mean": r(statistics.fmean(lat), 3),
                    "p50": res["e2e_p50_ms"],
                    "p90": r(percentile(lat, 0.9), 3),
                    "p99": res["e2e_p99_ms"],
                    "max": r(lat[-1], 3),
                }
                say(f"e2e latency c=1: p50 {res['e2e_p50_ms']} ms, p99 {res['e2e_p99_ms']} ms")
        res["e2e_per_s"] = e2e
        res["e2e_peak_per_s"] = max(e2e.values())
        say(f"cpu ms per exec at c=64: {cpu['e2e_c64']['cpu_ms_per_exec']}")

        if container is not None:
            say(f"runc: e2e exec into {container.id}, then `runc exec` alone")
            try:

                async def runc_one() -> None:
                    result = await client.run(AGENT, ["true"], container_id=container.id)
                    if result.exit_code != 0:
                        raise RuntimeError(f"container exec ended with {result.exit_code}")

                await drive(3, 1, runc_one)
                run = await drive(plan.runc_n, 1, runc_one)
                if not run.latencies:
                    raise RuntimeError(f"every container exec failed: {dict(run.errors)}")
                e2e_runc = statistics.median(run.latencies) * 1000
                cli = statistics.median(
                    await asyncio.to_thread(container.cli_ms, "exec", plan.runc_n)
                )
                state_ms = statistics.median(
                    await asyncio.to_thread(container.cli_ms, "state", plan.runc_n)
                )
                res["e2e_runc_ms"] = r(e2e_runc, 2)
                res["runc_exec_ms"] = r(cli, 2)
                agent_ms = res.get("agent_runc_ms")
                res["runc"] = {
                    "n": plan.runc_n,
                    "runc_state_ms": r(state_ms, 2),
                    "agent_runc_ms": agent_ms,
                    "agent_overhead_ms": r(agent_ms - cli, 2) if agent_ms else None,
                    "bus_overhead_ms": r(e2e_runc - agent_ms, 2) if agent_ms else None,
                }
                say(f"runc exec {res['runc_exec_ms']} ms alone, {res['e2e_runc_ms']} ms end to end")
            except Exception as exc:
                runc_reason = f"container exec failed: {exc!r}"
        if runc_reason is not None:
            res["runc_exec_ms"] = res["e2e_runc_ms"] = None
            res["runc"] = {"reason": runc_reason}
            say(f"runc skipped: {runc_reason}")

        say("latency breakdown of `true` at concurrency 1 (events + agent timestamps)")
        breakdown = {"host": await latency_breakdown(client, plan.runc_n * 2)}
        if container is not None and res.get("e2e_runc_ms") is not None:
            breakdown["runc"] = await latency_breakdown(client, plan.runc_n, container.id)
        breakdown["stages"] = dict(STAGES)
        res["latency_breakdown_ms"] = breakdown
        for where in ("host", "runc"):
            if where in breakdown:
                stages = ", ".join(f"{k} {breakdown[where].get(k)}" for k, _ in STAGES)
                say(f"{where}: {stages}; total {breakdown[where].get('total')} ms")

        if args.with_celery:
            # Right after our own measurements (before the profiles and the long
            # RSS fill), with the worker and agent idle: the host's speed drifts
            # over a long run, and the ratios should compare the two systems
            # under the same conditions.
            try:
                celery = await asyncio.to_thread(
                    run_celery, args.celery_script, args.amqp_url, plan
                )
            except Exception as exc:
                celery = {"error": repr(exc)}
            celery["when"] = "after the e2e, runc and latency phases; execbus worker and agent idle"
            res["celery"] = celery

        if args.profile:
            res["profile"] = await profile_run(
                plan, {"worker": worker_pid, "agent": agent_pid, "client": os.getpid()}, e2e_one
            )

        await measure_worker_rss(args, plan, stack, e2e_one, res, rss_start, rss_warm, records_warm)
        await measure_flood(client, agent_pid, res)

    return res


STAGES = (
    ("client_to_worker", "request sent -> worker built exec.created"),
    ("worker_to_agent", "exec.created -> agent began the exec (created confirm, agent call)"),
    ("in_agent", "agent began -> process ended and output drained (spawn, run; runc state+exec)"),
    ("agent_to_worker", "process ended -> worker built exec.exited"),
    ("worker_to_client", "exec.exited -> client has the result (confirms, reply, delivery)"),
)


async def latency_breakdown(client: Client, n: int, container_id: str = "") -> dict[str, Any]:
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
        return {"n": 0}
    names = [name for name, _ in STAGES] + ["total"]
    columns = list(zip(*rows, strict=True))
    medians = {
        k: r(statistics.median(col) * 1000, 2) for k, col in zip(names, columns, strict=True)
    }
    return {"n": len(rows), "cmd": cmd, **medians}


async def profile_run(
    plan: Plan, pids: dict[str, int], e2e_one: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """One extra c=64 run per process, each sampled by py-spy alone (less perturbation)."""
    exe = find_py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out: dict[str, Any] = {}
    for name, pid in pids.items():
        say(f"profiling the {name} (pid {pid}) with py-spy during a c=64 run")
        profiler = Profiler(exe, name, pid)
        try:
            await asyncio.sleep(1.0)  # py-spy attaches
            run = await measure(f"e2e (py-spy on the {name})", plan.profile_n, 64, e2e_one, 0, 1)
        finally:
            await asyncio.to_thread(profiler.stop)
        out[name] = {
            "e2e_per_s_under_profiler": round(run.per_s, 1),
            "file": str(profiler.file.relative_to(ROOT)),
            **summarise_stacks(profiler.file),
        }
    return out


async def measure_worker_rss(
    args: argparse.Namespace,
    plan: Plan,
    stack: Stack,
    e2e_one: Callable[[], Awaitable[None]],
    res: dict[str, Any],
    rss_start: float | None,
    rss_warm: float | None,
    records_warm: int,
) -> None:
    assert stack.worker is not None
    pid = stack.worker.pid
    records = await asyncio.to_thread(stack.registry_size) or 0
    if args.full:
        t = time.perf_counter()
        while records < RSS_RECORDS:
            batch = min(10_000, RSS_RECORDS - records)
            await drive(batch, 64, e2e_one)
            records = await asyncio.to_thread(stack.registry_size) or 0
            say(f"worker registry: {records} records")
        res["rss_fill_per_s"] = round((records - records_warm) / (time.perf_counter() - t), 1)
    await asyncio.sleep(1.0)  # let the last replies settle
    records = await asyncio.to_thread(stack.registry_size) or 0
    rss = proc_status(pid, "VmRSS")
    info: dict[str, Any] = {
        "records": records,
        "start_mb": r(rss_start),
        "after_warmup_mb": r(rss_warm),
        "after_warmup_records": records_warm,
        "measured_mb": r(rss),
    }
    if rss is not None and rss_warm is not None and records > records_warm:
        per_k = (rss - rss_warm) / (records - records_warm) * 1000
        info["mb_per_1000_records"] = r(per_k, 3)
    if records >= RSS_RECORDS:
        info["mode"] = "measured"
        res["worker_rss_mb"] = r(rss)
    elif rss is not None and "mb_per_1000_records" in info:
        info["mode"] = f"extrapolated from {records} records (run with --full to measure)"
        res["worker_rss_mb"] = r(rss + info["mb_per_1000_records"] * (RSS_RECORDS - records) / 1000)
    else:
        info["mode"] = "not measured"
        res["worker_rss_mb"] = None
    res["worker_rss"] = info
    say(f"worker RSS {res['worker_rss_mb']} MiB for {RSS_RECORDS} records ({info['mode']})")


async def measure_flood(client: Client, agent_pid: int, res: dict[str, Any]) -> None:
    """Run ``head -c 100MiB /dev/zero`` through the system and sample the agent's RSS."""
    base = proc_status(agent_pid, "VmRSS")
    peak = base or 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc_status(agent_pid, "VmRSS") or 0.0)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    t = time.perf_counter()
    try:
        result = await client.run(AGENT, ["head", "-c", str(FLOOD_BYTES), "/dev/zero"])
    finally:
        done.set()
        await sampler
    seconds = time.perf_counter() - t
    res["agent_rss_mb"] = r(peak)
    res["agent_rss"] = {
        "before_mb": r(base),
        "peak_mb": r(peak),
        "vmhwm_mb": r(proc_status(agent_pid, "VmHWM")),
        "flood_bytes": FLOOD_BYTES,
        "captured": len(result.stdout),
        "dropped": result.stdout_dropped,
        "exit_code": result.exit_code,
        "seconds": r(seconds, 2),
    }
    say(
        f"agent RSS peak {peak:.1f} MiB during a {FLOOD_BYTES >> 20} MiB flood "
        f"({len(result.stdout)} captured, {result.stdout_dropped} dropped, {seconds:.2f} s)"
    )


async def main_async(args: argparse.Namespace, plan: Plan, state: dict[str, Any]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await run_bench(args, plan, state)
    finally:
        stack: Stack | None = state.get("stack")
        if stack is not None:
            say("stopping the worker and the agent")
            await asyncio.to_thread(stack.stop)
            await cleanup_namespace(args.amqp_url, state["ns"])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    size.add_argument(
        "--full", action="store_true", help="also push 100,000 execs to measure worker_rss_mb"
    )
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("EXECBUS_AMQP_URL", "amqp://guest:guest@localhost:5672/"),
    )
    ap.add_argument("--with-celery", action="store_true", help="run the Celery baseline too")
    ap.add_argument("--celery-script", type=Path, default=DEFAULT_CELERY)
    ap.add_argument("--profile", action="store_true", help="py-spy an extra c=64 run")
    ap.add_argument("--no-runc", action="store_true", help="skip the runc container figures")
    ap.add_argument(
        "--worker-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="the worker's EXECBUS_EVENT_LOOP (auto: uvloop when installed); the benchmark "
        "process itself (spawn limit, agent alone, the client) always runs on asyncio's loop",
    )
    ap.add_argument(
        "--update-docs",
        action="store_true",
        help="copy the plot to docs/performance-throughput.svg",
    )
    args = ap.parse_args()
    plan = PLANS["quick" if args.quick else "default"]
    OUT.mkdir(parents=True, exist_ok=True)
    ns = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="execbus-bench-"))
    result: dict[str, Any] = {
        "mode": "full" if args.full else plan.name,
        "namespace": ns,
        "cmd": CMD,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "worker_event_loop": args.worker_loop,
    }
    state: dict[str, Any] = {"ns": ns, "workdir": workdir, "result": result}
    say(f"execbus e2e benchmark ({result['mode']}), namespace {ns}, workdir {workdir}")
    failed: BaseException | None = None
    try:
        asyncio.run(main_async(args, plan, state))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        failed = exc
        say("interrupted")
    except Exception as exc:
        failed = exc
        say(f"benchmark failed: {exc!r}")
    finally:
        stack: Stack | None = state.get("stack")
        if stack is not None:
            stack.kill()
        container: RuncContainer | None = state.get("container")
        if container is not None:
            container.delete()
        if failed is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs kept in {workdir}")

    if args.with_celery and failed is None:
        celery = result.get("celery") or {"error": "the run ended before the baseline"}
        if "per_s" in celery and "p50_ms" in celery:
            result["e2e_vs_celery_throughput"] = r(result["e2e_peak_per_s"] / celery["per_s"], 2)
            result["e2e_vs_celery_p50"] = r(result["e2e_p50_ms"] / celery["p50_ms"], 3)
            say(
                f"celery {celery['per_s']}/s p50 {celery['p50_ms']} ms; e2e/celery throughput "
                f"{result['e2e_vs_celery_throughput']}x, p50 {result['e2e_vs_celery_p50']}x"
            )
        else:
            say(f"celery baseline failed: {celery.get('error')}")
    interrupted = isinstance(failed, KeyboardInterrupt | asyncio.CancelledError)
    if failed is not None:
        result["error"] = "interrupted" if interrupted else repr(failed)
    else:
        result["targets"] = targets(result)
        svg = svg_plot(result)
        (OUT / "throughput.svg").write_text(svg)
        if args.update_docs:
            (DOCS / "performance-throughput.svg").write_text(svg)
    result["rounds_per_s"] = ROUNDS
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - T0, 1)
    text = json.dumps(result, indent=2)
    (OUT / "e2e.json").write_text(text + "\n")
    print(text)
    if interrupted:
        return 130
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())
