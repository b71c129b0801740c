#!/usr/bin/env python3
"""Chaos soak: a mixed load for N seconds while faults are injected at random.

Starts one agent and two workers (the workers reach RabbitMQ through a fault
proxy), drives `exec.run`s through the execbus SDK, and injects, at random
intervals: SIGKILL of a worker (restarted), SIGTERM of a worker (restarted),
a cut of every worker-broker connection, a broker restart
(`rabbitmqctl stop_app` / `start_app` of the soak's own node), and a kill +
restart of the agent.

Each command appends its exec id to a file (its side effect). At the end it
prints one line of figures, then a JSON object:

    requests=.. replies=.. exits=.. lost=.. duplicated=.. faults: kill_worker=.. ...

`lost` counts requests that got neither a reply nor an exit event;
`duplicated` counts side effects that happened more than once. Both must be 0.

By default everything runs against a private RabbitMQ node started for the
soak (so restarting it disturbs nobody); `--shared-broker` uses --amqp-url
and leaves broker restarts out. At the end it kills its processes, deletes
its namespace (shared broker) or its node (private), and its temporary
directory unless something was lost or duplicated (then the logs stay there,
and the JSON says where).

Usage: bench/chaos.py [--seconds 300] [--concurrency 8] [--shared-broker [--amqp-url URL]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from execbus import Client  # noqa: E402
from execbus.errors import BrokerError, ExecbusError, UnknownAgent  # noqa: E402
from execbus.testing.broker import PrivateBroker  # noqa: E402
from execbus.testing.faultproxy import FaultProxy  # noqa: E402
from execbus.testing.processes import Processes, purge  # noqa: E402


class Stack:
    """The processes under test: one agent, two workers behind the fault proxy, the broker."""

    def __init__(self, amqp_url: str, ns: str, workdir: Path, proxy: FaultProxy) -> None:
        self.procs = Processes(workdir, amqp_url, ns)
        self.proxy = proxy
        port = amqp_url.rsplit(":", 1)[1].split("/")[0]
        self.proxied = amqp_url.replace(f":{port}", f":{proxy.port}")
        self.broker: PrivateBroker | None = None

    def start(self) -> None:
        self.procs.add_agent("a1", "--state-dir", str(self.procs.workdir / "agent-state"))
        for _ in range(2):
            self.procs.add_worker(amqp_url=self.proxied, EXECBUS_SHUTDOWN_GRACE="5")


async def inject(kind: str, stack: Stack) -> None:
    """Inject one fault and bring the victim back."""
    if kind in ("kill_worker", "term_worker"):
        worker = random.choice(stack.procs.workers)
        worker.signal(signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM, group=False)
        await asyncio.to_thread(worker.wait, 30)
        worker.start()
    elif kind == "cut":
        stack.proxy.cut()
    elif kind == "broker_restart":
        assert stack.broker is not None
        await asyncio.to_thread(stack.broker.restart)
    elif kind == "agent_restart":
        agent = stack.procs.agents["a1"]
        agent.signal(signal.SIGKILL, group=False)
        await asyncio.to_thread(agent.wait, 10)
        await asyncio.sleep(0.5)
        agent.start()


async def _ctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=subprocess.DEVNULL
    )
    await proc.wait()


class Tally:
    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.replied: set[str] = set()
        self.exits: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.timed_out: list[str] = []
        self.diagnosis: dict[str, str] = {}


async def one_exec(client: Client, marker: Path, tally: Tally) -> None:
    tag = uuid.uuid4().hex
    sleep = random.choice([0, 0, 0.05, 0.3, 1.5])
    cmd = ["sh", "-c", f"echo {tag} >> {marker}; sleep {sleep}"]
    tally.sent.add(tag)
    try:
        async with asyncio.timeout(120):
            while True:
                try:
                    await client.run("a1", cmd, exec_id=tag)
                    break
                except (BrokerError, UnknownAgent) as exc:
                    # Not sent, or no worker consuming right now: send again with the same
                    # exec id (the worker and the agent dedupe it).
                    tally.errors[f"retried_{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.5)
                except ExecbusError as exc:  # answered: failed (e.g. agent_lost)
                    tally.errors[str(exc.code)] += 1
                    break
        tally.replied.add(tag)
    except TimeoutError:
        tally.errors["timeout"] += 1
        tally.timed_out.append(tag)


async def load(client: Client, marker: Path, tally: Tally, until: float, concurrency: int) -> None:
    async def lane() -> None:
        while time.monotonic() < until:
            await one_exec(client, marker, tally)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def watch_exits(client: Client, tally: Tally) -> None:
    async for event in client.events(agent="a1"):
        if event.type in ("exec.exited", "exec.failed"):
            tally.exits.add(event.exec_id)


async def diagnose(client: Client, tally: Tally) -> None:
    """What the worker says about execs whose result never came (for the report)."""
    for tag in tally.timed_out[:20]:
        try:
            info = await client.inspect("a1", tag)
            tally.diagnosis[tag] = f"{info.state.value} exit={info.exit and info.exit.exit_code}"
        except ExecbusError as exc:
            tally.diagnosis[tag] = f"{exc.code}: {exc.message}"


async def chaos(stack: Stack, tally: Tally, until: float, kinds: list[str]) -> None:
    await asyncio.sleep(5)
    while time.monotonic() < until - 10:
        kind = random.choice(kinds)
        tally.faults[kind] += 1
        print(f"[{time.strftime('%H:%M:%S')}] fault: {kind}", file=sys.stderr, flush=True)
        await inject(kind, stack)
        await asyncio.sleep(random.uniform(3, 9))


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    ns = f"chaos{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="execbus-chaos-"))
    marker = workdir / "effects"
    tally = Tally()
    kinds = ["kill_worker", "term_worker", "cut", "agent_restart"]
    with contextlib.ExitStack() as stack_cm:
        broker = None
        if not args.shared_broker:
            broker = stack_cm.enter_context(PrivateBroker())
            kinds.append("broker_restart")
        url = broker.url if broker is not None else args.amqp_url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proxy = stack_cm.enter_context(FaultProxy("127.0.0.1", port))
        stack = Stack(url, ns, workdir, proxy)
        stack.broker = broker
        stack.start()
        try:
            await asyncio.sleep(3)
            async with Client(url, namespace=ns) as client:
                watcher = asyncio.create_task(watch_exits(client, tally))
                until = time.monotonic() + args.seconds
                await asyncio.gather(
                    load(client, marker, tally, until, args.concurrency),
                    chaos(stack, tally, until, kinds),
                )
                await asyncio.sleep(5)  # let late exit events arrive
                await diagnose(client, tally)
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        finally:
            stack.procs.kill()
            if broker is None:  # the shared broker keeps the namespace: delete it
                print(await purge(url, ns, ["a1"]), file=sys.stderr, flush=True)
    effects = Counter(marker.read_text().split()) if marker.exists() else Counter()
    lost = len(tally.sent - tally.replied - tally.exits)
    duplicated = sum(1 for n in effects.values() if n > 1)
    if lost == 0 and duplicated == 0:
        shutil.rmtree(workdir, ignore_errors=True)  # logs are kept only when something went wrong
    return {
        "requests": len(tally.sent),
        "replies": len(tally.replied),
        "exits": len(tally.exits),
        "lost": lost,
        "duplicated": duplicated,
        "faults": dict(tally.faults),
        "faults_total": sum(tally.faults.values()),
        "errors": dict(tally.errors),
        "not_answered": tally.diagnosis,
        "seconds": args.seconds,
        "workdir": str(workdir) if lost or duplicated else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("EXECBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    ap.add_argument(
        "--shared-broker",
        action="store_true",
        help="use --amqp-url and skip broker restarts (default: a private RabbitMQ node)",
    )
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    faults = " ".join(f"{k}={v}" for k, v in sorted(result["faults"].items()))  # type: ignore[attr-defined]
    print(
        f"requests={result['requests']} replies={result['replies']} exits={result['exits']} "
        f"lost={result['lost']} duplicated={result['duplicated']} faults: {faults}"
    )
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
