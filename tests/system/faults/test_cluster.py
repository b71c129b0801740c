"""Fault tests on a 3-node RabbitMQ cluster (``execbus.testing.cluster_nodes``), under load.

Two workers serve two agents with the cluster's node URLs
(``EXECBUS_AMQP_URL=<three URLs>``, ``EXECBUS_QUORUM_REPLICAS=3``); three SDK
clients (each with the three URLs) run short commands continuously, each
command appending its exec id to its client's side-effect file. Then one of:

(a) SIGKILL of the node the owner of ``a1`` is connected to;
(b) SIGKILL of the node leading the agent queues (``<ns>.agent.a1``/``a2``), a
    node no worker is connected to (only the queues' leadership moves);
(c) a clean stop of the owner's node, and its restart a few seconds later.

A request that fails with a broker error while the cluster recovers (not sent,
not confirmed) is sent again with the *same exec id*: the exec id is the
idempotency key, a retry replays and never reruns. Each test checks: no
request lost (every caller got its result, or a clear error where it gave
up), nothing run twice (exactly one line per exec id answered; at most one
for one given up), and reports how long after the fault the agents were
served again (a request sent after the fault answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from execbus import Client
from execbus.errors import BrokerError, ExecbusError, UnknownAgent
from execbus.settings import load_settings
from execbus.testing.cluster_nodes import NodeCluster, available
from execbus.worker.topology import topology_of

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

AGENTS = ("a1", "a2")
CLIENTS = 3
LANES = 1  # concurrent callers per client
GIVE_UP = 30.0  # a caller gives up on a request after this long (a clear error)
ATTEMPT_TIMEOUT = 30.0  # one attempt that takes longer than this is a hang
SERVE_BOUND = 15.0  # asserted; the target (reported) is 5 s after a node kill


@pytest.fixture(scope="module")
def node_cluster() -> Iterator[NodeCluster]:
    """Three RabbitMQ nodes of our own, joined into a cluster, for the whole module."""
    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs rabbitmq-server and root for the cluster fault tests")
        pytest.skip("needs rabbitmq-server, rabbitmqctl and root")
    with NodeCluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster(node_cluster: NodeCluster) -> NodeCluster:
    """The cluster with every node up (again, after the previous test's fault: nodes
    are started before a test, none after the last)."""
    node_cluster.restart_down()
    return node_cluster


@pytest.fixture
def amqp_url(cluster: NodeCluster) -> str:
    """Workers started by ``start_worker`` get every node's URL."""
    return cluster.urls


@pytest.fixture
def namespace(cluster: NodeCluster) -> str:
    """A namespace of its own on the module's cluster. Nothing is deleted after the test:
    the cluster goes, with all it holds, at the end of the module (deleting quorum queues
    while a node is down takes seconds per queue)."""
    return f"k{os.urandom(5).hex()}"


# -- the load ------------------------------------------------------------------


@dataclass
class Call:
    """One request as its caller saw it."""

    exec_id: str
    agent: str
    client: int
    first_sent: float
    last_sent: float = 0.0
    done: float | None = None
    ok: bool = False
    replayed: bool = False
    attempts: int = 0
    error: str | None = None  # the clear error the caller gave up with
    history: list[tuple[float, float, str]] = field(default_factory=list)  # sent, took, outcome


@dataclass
class Load:
    """Clients that run short commands continuously until :meth:`stop`."""

    urls: str
    namespace: str
    workdir: Path
    calls: list[Call] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def marker(self, client: int) -> Path:
        return self.workdir / f"effects-{client}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        # Every client connected and served once before the fault.
        async with asyncio.timeout(60):
            while len({c.client for c in self.calls if c.ok}) < CLIENTS:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        async with asyncio.timeout(GIVE_UP + 30):
            await self._task

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(CLIENTS)))

    async def _client(self, index: int) -> None:
        async with Client(self.urls, namespace=self.namespace) as client:
            await asyncio.gather(*(self._lane(client, index, lane) for lane in range(LANES)))

    async def _lane(self, client: Client, index: int, lane: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            agent = AGENTS[(n + lane) % len(AGENTS)]
            await self._one(client, index, agent, f"c{index}-{lane}-{n}")

    async def _one(self, client: Client, index: int, agent: str, exec_id: str) -> None:
        call = Call(exec_id, agent, index, time.monotonic())
        self.calls.append(call)
        cmd = ["sh", "-c", f"echo {exec_id} >> {self.marker(index)}; sleep 0.05"]
        while True:
            call.attempts += 1
            call.last_sent = time.monotonic()
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT):
                    result = await client.run(agent, cmd, exec_id=exec_id)
            except (BrokerError, UnknownAgent, TimeoutError) as exc:
                # Not sent, not confirmed, no worker seen serving the agent right now, or
                # (TimeoutError) no answer at all: send it again, with the same exec id.
                kind = "attempt_timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                self.retries[kind] += 1
                took = time.monotonic() - call.last_sent
                call.history.append((call.last_sent, took, f"{kind}: {exc}"[:300]))
                # A caller gives up after GIVE_UP s, or (not to hold the test up) when the
                # load is over: with a clear error, and its command must not have run twice.
                if time.monotonic() - call.first_sent > GIVE_UP or self._stop.is_set():
                    call.error = f"gave up after {call.attempts} attempts: {kind}: {exc!r}"
                    call.done = time.monotonic()
                    return
                await asyncio.sleep(0.2)
                continue
            except ExecbusError as exc:  # answered, with an error (not expected here)
                call.error = f"{exc.code}: {exc.message}"
                call.done = time.monotonic()
                return
            call.done = time.monotonic()
            call.history.append((call.last_sent, call.done - call.last_sent, "answered"))
            call.ok = result.exit_code == 0
            call.replayed = result.replayed
            if not call.ok:
                call.error = f"exit {result.exit_code}: {result.stderr!r}"
            return

    def effects(self) -> Counter[str]:
        lines: Counter[str] = Counter()
        for index in range(CLIENTS):
            with contextlib.suppress(FileNotFoundError):
                lines.update(self.marker(index).read_text().split())
        return lines

    def served_again(self, fault_at: float, agents: tuple[str, ...] = AGENTS) -> float | None:
        """Seconds from the fault until a request to each of ``agents`` *sent* after it
        (its last attempt) was answered; None if one never was."""
        times = []
        for agent in agents:
            answered = [
                c.done
                for c in self.calls
                if c.agent == agent and c.ok and c.done is not None and c.last_sent >= fault_at
            ]
            if not answered:
                return None
            times.append(min(answered) - fault_at)
        return max(times)

    def longest_gap(self, since: float) -> tuple[float, float]:
        """The longest time without any answer from ``since`` on, and when it began
        (seconds after ``since``)."""
        done = sorted(c.done for c in self.calls if c.ok and c.done is not None and c.done > since)
        points = [since, *done]
        gaps = [(b - a, a - since) for a, b in itertools.pairwise(points)]
        return max(gaps, default=(0.0, 0.0))

    def check(self, label: str, fault_at: float, extra: dict[str, Any]) -> dict[str, Any]:
        """Nothing lost, nothing run twice; the figures (printed and returned)."""
        effects = self.effects()
        answered = [c for c in self.calls if c.ok]
        gave_up = [c for c in self.calls if c.error is not None]
        unanswered = [c for c in self.calls if c.done is None]
        twice = {e: n for e, n in effects.items() if n > 1}
        ids = {c.exec_id for c in self.calls}
        strays = set(effects) - ids
        missing = [c.exec_id for c in answered if effects[c.exec_id] != 1]
        served = self.served_again(fault_at)
        gap, gap_began = self.longest_gap(fault_at - 1.0)
        figures = {
            "requests": len(self.calls),
            "answered": len(answered),
            "replayed": sum(c.replayed for c in answered),
            "gave_up": len(gave_up),
            "retried": dict(self.retries),
            "lost": len(unanswered) + len(missing),
            "executed_twice": len(twice),
            "served_again_s": None if served is None else round(served, 2),
            "longest_gap_s": round(gap, 2),
            "gap_began_after_fault_s": round(gap_began - 1.0, 2),
            **extra,
        }
        print(f"\ncluster fault {label}: {figures}")
        for call in self.calls:  # what went wrong for whom, relative to the fault
            if call.error or any(o.startswith("attempt_timeout") for _, _, o in call.history):
                steps = [(round(t - fault_at, 2), round(d, 2), o) for t, d, o in call.history]
                print(f"  {call.exec_id} -> {call.agent}: {call.error or 'answered'}; {steps[-4:]}")
        assert not unanswered, f"callers still waiting: {[c.exec_id for c in unanswered]}"
        assert not twice, f"executed twice: {twice}"
        assert not strays, f"side effects of requests nobody sent: {strays}"
        assert not missing, f"answered without (exactly one) side effect: {missing}"
        for call in gave_up:
            assert "gave up" in (call.error or ""), f"{call.exec_id}: {call.error}"
            assert effects[call.exec_id] <= 1, call
        assert len(answered) > len(self.calls) // 2, "most requests answered"
        assert served is not None, f"the agents were not served again after {label}"
        assert served <= SERVE_BOUND, f"served again only {served:.1f} s after {label}"
        return figures


# -- the stack -------------------------------------------------------------------


def worker_env(urls: str) -> dict[str, str]:
    return {"EXECBUS_AMQP_URL": urls, "EXECBUS_QUORUM_REPLICAS": "3"}


def owners(workers: list[Any], timeout: float = 30.0) -> dict[str, Any]:
    """Wait until every agent has an owner among ``workers``: agent -> worker."""
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = {}
        for worker in workers:
            doc = worker.readyz() or {}
            for name, info in (doc.get("agents") or {}).items():
                if isinstance(info, dict) and info.get("owner") and info.get("connected"):
                    found[name] = worker
        if set(found) >= set(AGENTS):
            return found
        time.sleep(0.1)
    raise AssertionError(f"agents not all owned: {sorted(found)}")


def worker_node(cluster: NodeCluster, worker: Any, timeout: float = 15.0) -> str:
    """The node the worker's broker connection is on."""
    doc = worker.readyz() or {}
    name = f"execbus-worker-{doc['worker_id']}"
    deadline = time.monotonic() + timeout
    while True:
        nodes = cluster.connection_nodes(name)
        if len(nodes) == 1:
            return nodes[0]
        assert time.monotonic() < deadline, f"{name} connections: {nodes}"
        time.sleep(0.3)


def start_stack(
    start_agent: Any, start_worker: Any, urls: str, workers: int = 2
) -> tuple[list[Any], list[Any]]:
    agents = [start_agent(name) for name in AGENTS]
    args = [
        a
        for name, agent in zip(AGENTS, agents, strict=True)
        for a in ("--agent", f"{name}={agent.address}")
    ]
    started = [start_worker(*args, env=worker_env(urls)) for _ in range(workers)]
    return agents, started


class ReconnectWatch:
    """Polls a worker's readiness from the fault on: when it lost the broker, and when it
    was connected again (``seconds``: from the fault until connected again)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.lost_at: float | None = None
        self.back_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def _poll(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            doc = self.worker.readyz() or {}
            connected = bool((doc.get("broker") or {}).get("connected"))
            now = time.monotonic()
            if not connected and self.lost_at is None:
                self.lost_at = now
            elif connected and self.lost_at is not None:
                self.back_at = now
                return
            time.sleep(0.05)

    def seconds(self, fault_at: float) -> float | None:
        self._stop.set()
        self._thread.join(5)
        return None if self.back_at is None else round(self.back_at - fault_at, 2)


async def run_fault(
    load: Load,
    fault: Any,
    *,
    after: float = 4.0,
    watch: ReconnectWatch | None = None,
) -> float:
    """Load for a while, then the fault (in a thread); the load goes on ``after`` s past
    the agents' first answer since the fault. The fault's time."""
    await load.start()
    await asyncio.sleep(2.0)
    fault_at = time.monotonic()
    if watch is not None:
        watch.start()
    await asyncio.to_thread(fault)
    deadline = time.monotonic() + 60
    while load.served_again(fault_at) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(after)
    await load.stop()
    return fault_at


# -- the tests -------------------------------------------------------------------


async def test_sigkill_node_of_the_owner(
    cluster: NodeCluster, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    _, workers = start_stack(start_agent, start_worker, cluster.urls)
    owner = owners(workers)["a1"]
    victim = worker_node(cluster, owner)
    leader = cluster.leader(f"{namespace}.agent.a1")
    load = Load(cluster.urls, namespace, tmp_path)
    watch = ReconnectWatch(owner)
    fault_at = await run_fault(load, lambda: cluster.kill(victim), watch=watch)
    figures = load.check(
        "(a) SIGKILL of the owner's node",
        fault_at,
        {
            "killed": victim,
            "killed_led_a1_queue": leader == victim,
            "owner_reconnected_s": watch.seconds(fault_at),
        },
    )
    assert figures["lost"] == 0 and figures["executed_twice"] == 0


async def test_sigkill_node_leading_the_agent_queues(
    cluster: NodeCluster, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    # The agent queues are declared through the third node (so it leads them: queues
    # are led by the node their declaring connection is on), exactly as the workers
    # declare them; the workers know the other two nodes only.
    leader_node, others = cluster.nodes[2], cluster.nodes[:2]
    topology = topology_of(load_settings(namespace=namespace, quorum_replicas=3))
    connection = await aio_pika.connect(leader_node.url)
    async with connection:
        channel = await connection.channel()
        await topology.declare_base(channel)
        for agent in AGENTS:
            await topology.declare_agent_queue(channel, agent)
    queues = [f"{namespace}.agent.{agent}" for agent in AGENTS]
    assert {cluster.leader(q) for q in queues} == {leader_node.node}
    assert cluster.members(queues[0]) == sorted(n.node for n in cluster.nodes)

    worker_urls = ",".join(n.url for n in others)
    _, workers = start_stack(start_agent, start_worker, worker_urls)
    owners(workers)
    load = Load(cluster.urls, namespace, tmp_path)
    fault_at = await run_fault(load, lambda: cluster.kill(leader_node.node))
    new_leaders = {q: cluster.leader(q) for q in queues}
    figures = load.check(
        "(b) SIGKILL of the agent queues' leader",
        fault_at,
        {"killed": leader_node.node, "new_leaders": sorted(set(new_leaders.values()))},
    )
    assert leader_node.node not in new_leaders.values()
    assert figures["lost"] == 0 and figures["executed_twice"] == 0


async def test_stop_and_restart_the_owners_node(
    cluster: NodeCluster, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    _, workers = start_stack(start_agent, start_worker, cluster.urls)
    owner = owners(workers)["a1"]
    victim = worker_node(cluster, owner)
    load = Load(cluster.urls, namespace, tmp_path)
    watch = ReconnectWatch(owner)
    timings: dict[str, float] = {}

    def stop_then_restart() -> None:
        began = time.monotonic()
        cluster.stop(victim)
        timings["stop_s"] = time.monotonic() - began
        time.sleep(2.0)
        began = time.monotonic()
        cluster.start(victim)
        timings["restart_s"] = time.monotonic() - began

    fault_at = await run_fault(load, stop_then_restart, after=5.0, watch=watch)
    figures = load.check(
        "(c) stop and restart of the owner's node",
        fault_at,
        {
            "stopped": victim,
            "owner_reconnected_s": watch.seconds(fault_at),
            **{k: round(v, 2) for k, v in timings.items()},
        },
    )
    assert figures["lost"] == 0 and figures["executed_twice"] == 0
    assert len(cluster.running_nodes()) == 3


class StalePublishChannel(AssertionError):
    """The client's publishing channel is still refused by a queue that has a leader again."""


async def test_client_publishes_again_once_the_agent_queue_has_a_leader(
    cluster: NodeCluster, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    """Deterministic: the agent queue's leader and a second node down (no quorum, so the
    queue keeps naming its dead leader); a client's first request to it is refused (a
    clear error); the second node comes back, the queue elects a leader and the worker
    serves (a new client is answered): the first client must be answered too.

    RabbitMQ 3.10 keeps nacking, for that queue, the channel whose first publish to it
    found the recorded leader down (``rabbit_fifo_client:enqueue/3`` keeps asking the
    dead node); the SDK replaces its publishing channel after a nack, so its next
    request goes out on a channel that asks the queue's new leader."""
    first, second, third = cluster.nodes
    topology = topology_of(load_settings(namespace=namespace, quorum_replicas=3))
    connection = await aio_pika.connect(third.url)
    async with connection:
        await topology.declare_base(await connection.channel())
        await topology.declare_agent_queue(await connection.channel(), "a1")
    queue = f"{namespace}.agent.a1"
    assert cluster.leader(queue) == third.node
    agent = start_agent("a1")
    worker = start_worker("--agent", f"a1={agent.address}", env=worker_env(first.url))
    worker.wait_owner("a1")
    marker = tmp_path / "effects"

    def cmd(tag: str) -> list[str]:
        return ["sh", "-c", f"echo {tag} >> {marker}"]

    async with Client(first.url, namespace=namespace) as client:
        await client.check_agent("a1")  # seen served; nothing published to its queue yet
        await asyncio.to_thread(cluster.kill, third.node)
        await asyncio.to_thread(cluster.kill, second.node)
        with pytest.raises(BrokerError):  # no quorum: refused, a clear error
            await asyncio.wait_for(client.run("a1", cmd("s1"), exec_id="s1"), 30)
        await asyncio.to_thread(second.start)
        assert cluster.leader(queue) in (first.node, second.node)
        async with Client(first.url, namespace=namespace) as fresh:
            async with asyncio.timeout(30):
                while True:
                    try:
                        await fresh.run("a1", cmd("f1"), exec_id="f1")
                        break
                    except (BrokerError, UnknownAgent):
                        await asyncio.sleep(0.5)
        errors = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                result = await asyncio.wait_for(client.run("a1", cmd("s1"), exec_id="s1"), 30)
                break
            except BrokerError as exc:
                errors.append(str(exc))
                await asyncio.sleep(0.5)
        else:
            raise StalePublishChannel(
                f"a new client is served, the first one still refused: {errors[-1]}"
            )
    assert result.exit_code == 0
    assert Counter(marker.read_text().split()) == {"f1": 1, "s1": 1}
