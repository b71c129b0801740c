#!/usr/bin/env python3
"""Chaos soak: a mixed load for N seconds while faults are injected at random.

Starts one agent and two workers (the workers reach RabbitMQ through a fault
proxy), drives `exec.run`s through the execbus SDK, and injects, at random
intervals: SIGKILL of a worker (restarted), SIGTERM of a worker (restarted),
a cut of every worker-broker connection, a broker restart
(`rabbitmqctl stop_app` / `start_app` of the soak's own node), and a kill +
restart of the agent.

With `--cluster` the broker is a local 3-node RabbitMQ cluster
(`execbus.testing.cluster_nodes`): workers and the SDK get the three node URLs
(the workers through one fault proxy per node), quorum queues have three
replicas, and the broker faults are node faults instead: SIGKILL of a random
node, SIGKILL of the node leading the agent's queue, and a clean stop of a
random node; the node is started again 2-5 s later (one node down at a time,
so every quorum queue keeps its majority).

Each command appends its exec id to a file (its side effect). At the end it
prints one line of figures, then a JSON object:

    requests=.. replies=.. exits=.. lost=.. duplicated=.. faults: kill_worker=.. ...
    recovery (s, median/max): kill_worker=../.. ...

`lost` counts requests that got neither a reply nor an exit event;
`duplicated` counts side effects that happened more than once. Both must be 0.
A fault's recovery time is from the fault until a request *sent* after it (its
last attempt) was answered: how long the agent went unserved.

By default everything runs against a private RabbitMQ node started for the
soak (so restarting it disturbs nobody); `--shared-broker` uses --amqp-url
and leaves broker restarts out. At the end it kills its processes, deletes
its namespace (shared broker) or its node (private), and its temporary
directory unless something was lost or duplicated (then the logs stay there,
and the JSON says where).

Usage: bench/chaos.py [--seconds 300] [--concurrency 8]
                      [--cluster | --shared-broker [--amqp-url URL]]
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
import statistics
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
from execbus.broker import urls_of  # noqa: E402
from execbus.errors import BrokerError, ExecbusError, UnknownAgent  # noqa: E402
from execbus.testing.broker import PrivateBroker  # noqa: E402
from execbus.testing.cluster_nodes import NodeCluster  # noqa: E402
from execbus.testing.faultproxy import FaultProxy  # noqa: E402
from execbus.testing.processes import Processes, purge  # noqa: E402


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


class Stack:
    """The processes under test: one agent, two workers behind the fault proxies (one per
    broker node), the broker (a private node or a cluster)."""

    def __init__(
        self, amqp_url: str, ns: str, workdir: Path, proxies: list[FaultProxy], **worker_env: str
    ) -> None:
        self.procs = Processes(workdir, amqp_url, ns)
        self.proxies = proxies
        nodes = urls_of(amqp_url)
        self.proxied = ",".join(
            url.replace(f":{_port(url)}", f":{proxy.port}")
            for url, proxy in zip(nodes, proxies, strict=True)
        )
        self.worker_env = worker_env
        self.broker: PrivateBroker | None = None
        self.cluster: NodeCluster | None = None

    def start(self) -> None:
        self.procs.add_agent("a1", "--state-dir", str(self.procs.workdir / "agent-state"))
        for _ in range(2):
            self.procs.add_worker(
                amqp_url=self.proxied, EXECBUS_SHUTDOWN_GRACE="5", **self.worker_env
            )


NODE_FAULTS = ("node_kill", "leader_kill", "node_stop")


async def inject(kind: str, stack: Stack, tally: Tally) -> None:
    """Inject one fault (its time goes to the tally) and bring the victim back."""
    if kind in NODE_FAULTS:
        await node_fault(kind, stack, tally)
        return
    tally.fault_times.append((kind, time.monotonic()))
    if kind in ("kill_worker", "term_worker"):
        worker = random.choice(stack.procs.workers)
        worker.signal(signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM, group=False)
        await asyncio.to_thread(worker.wait, 30)
        worker.start()
    elif kind == "cut":
        for proxy in stack.proxies:
            proxy.cut()
    elif kind == "broker_restart":
        assert stack.broker is not None
        await asyncio.to_thread(stack.broker.restart)
    elif kind == "agent_restart":
        agent = stack.procs.agents["a1"]
        agent.signal(signal.SIGKILL, group=False)
        await asyncio.to_thread(agent.wait, 10)
        await asyncio.sleep(0.5)
        agent.start()


async def node_fault(kind: str, stack: Stack, tally: Tally) -> None:
    """SIGKILL (of a random node, or of the agent queue's leader) or a clean stop of one
    cluster node, started again 2-5 s later."""
    cluster = stack.cluster
    assert cluster is not None
    if kind == "leader_kill":
        queue = f"{stack.procs.namespace}.agent.a1"
        name = await asyncio.to_thread(cluster.leader, queue)
    else:
        name = random.choice(cluster.nodes).node
    tally.fault_times.append((kind, time.monotonic()))
    print(f"[{time.strftime('%H:%M:%S')}]   node {name}", file=sys.stderr, flush=True)
    if kind == "node_stop":
        await asyncio.to_thread(cluster.stop, name)
    else:
        await asyncio.to_thread(cluster.kill, name)
    await asyncio.sleep(random.uniform(2, 5))
    await asyncio.to_thread(cluster.start, name)


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
        self.fault_times: list[tuple[str, float]] = []
        # (when the answered request's last attempt was sent, when its answer came)
        self.answers: list[tuple[float, float]] = []

    def recovery(self) -> dict[str, dict[str, float]]:
        """Per fault kind: seconds from each fault until a request sent after it was
        answered (median, max, and how many faults were measured)."""
        answers = sorted(self.answers)
        times: dict[str, list[float]] = {}
        for kind, at in self.fault_times:
            after = [done for sent, done in answers if sent >= at]
            if after:
                times.setdefault(kind, []).append(min(after) - at)
        return {
            kind: {
                "median": round(statistics.median(values), 2),
                "max": round(max(values), 2),
                "n": len(values),
            }
            for kind, values in sorted(times.items())
        }


async def one_exec(client: Client, marker: Path, tally: Tally) -> None:
    tag = uuid.uuid4().hex
    sleep = random.choice([0, 0, 0.05, 0.3, 1.5])
    cmd = ["sh", "-c", f"echo {tag} >> {marker}; sleep {sleep}"]
    tally.sent.add(tag)
    try:
        async with asyncio.timeout(120):
            while True:
                sent = time.monotonic()
                try:
                    await client.run("a1", cmd, exec_id=tag)
                    tally.answers.append((sent, time.monotonic()))
                    break
                except (BrokerError, UnknownAgent) as exc:
                    # Not sent, or no worker consuming right now: send again with the same
                    # exec id (the worker and the agent dedupe it).
                    tally.errors[f"retried_{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.5)
                except ExecbusError as exc:  # answered: failed (e.g. agent_lost)
                    tally.errors[str(exc.code)] += 1
                    tally.answers.append((sent, time.monotonic()))
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
        await inject(kind, stack, tally)
        await asyncio.sleep(random.uniform(3, 9))


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    ns = f"chaos{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="execbus-chaos-"))
    marker = workdir / "effects"
    tally = Tally()
    kinds = ["kill_worker", "term_worker", "cut", "agent_restart"]
    with contextlib.ExitStack() as stack_cm:
        broker = cluster = None
        worker_env: dict[str, str] = {}
        if args.cluster:
            cluster = stack_cm.enter_context(NodeCluster(3))
            kinds.extend(NODE_FAULTS)
            url = cluster.urls
            worker_env["EXECBUS_QUORUM_REPLICAS"] = "3"
        elif not args.shared_broker:
            broker = stack_cm.enter_context(PrivateBroker())
            kinds.append("broker_restart")
            url = broker.url
        else:
            url = args.amqp_url
        proxies = [
            stack_cm.enter_context(FaultProxy("127.0.0.1", _port(node))) for node in urls_of(url)
        ]
        stack = Stack(url, ns, workdir, proxies, **worker_env)
        stack.broker, stack.cluster = broker, cluster
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
            if broker is None and cluster is None:  # the shared broker keeps the namespace
                print(await purge(url, ns, ["a1"]), file=sys.stderr, flush=True)
    broker_kind = "cluster" if args.cluster else "shared" if args.shared_broker else "private"
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
        "recovery_s": tally.recovery(),
        "broker": broker_kind,
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
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--shared-broker",
        action="store_true",
        help="use --amqp-url and skip broker restarts (default: a private RabbitMQ node)",
    )
    mode.add_argument(
        "--cluster",
        action="store_true",
        help="a local 3-node RabbitMQ cluster, with node kills and stops among the faults",
    )
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    faults = " ".join(f"{k}={v}" for k, v in sorted(result["faults"].items()))  # type: ignore[attr-defined]
    print(
        f"requests={result['requests']} replies={result['replies']} exits={result['exits']} "
        f"lost={result['lost']} duplicated={result['duplicated']} faults: {faults}"
    )
    recovery = " ".join(
        f"{k}={v['median']:g}/{v['max']:g}"
        for k, v in result["recovery_s"].items()  # type: ignore[attr-defined]
    )
    print(f"recovery (s, median/max): {recovery}")
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
